"""Protobuf messages ↔ the HTTP API's JSON for the governance and notification routes.

Field names are the proto field names; enums are lower-case words without their
type's prefix (`APPROVAL_STATE_PENDING` → `pending`), as the deployment views do;
times are RFC 3339 (null when unset), durations seconds. Driven by the message
descriptors, so a field added to the protos shows up here without a second list.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, create_model

from versioner_grpc.domain.errors import invalid

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_STRUCT = "google.protobuf.Struct"


def _prefix(enum: EnumDescriptor) -> str:
    """ApprovalState → APPROVAL_STATE_ (the values' common prefix by the style guide)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"


def enum_word(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(_prefix(enum)).lower()


def enum_number(enum: EnumDescriptor, field: str, word: str) -> int:
    """`pending` (or `APPROVAL_STATE_PENDING`) → its number; 422 naming `field` otherwise."""
    name = word.strip().upper()
    value = enum.values_by_name.get(name) or enum.values_by_name.get(_prefix(enum) + name)
    if value is None or value.number == 0:
        words = [enum_word(enum, v.number) for v in enum.values if v.number != 0]
        raise invalid(field, f"unknown value {word!r}; expected one of {', '.join(words)}")
    return int(value.number)


def whole(value: Any) -> Any:
    """Struct numbers are doubles: give 5.0 back as 5, as the client sent it."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole(v) for v in value]
    return value


def _value(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_word(field.enum_type, value)
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    name = field.message_type.full_name
    if name == _TIMESTAMP:
        text: str = value.ToJsonString()
        return text
    if name == _DURATION:
        seconds: float = value.ToTimedelta().total_seconds()
        return seconds
    if name == _STRUCT:
        return whole(json_format.MessageToDict(value))
    return view(value)


def view(message: Message) -> dict[str, Any]:
    """Every field of `message` (unset messages as null, empty lists as [])."""
    out: dict[str, Any] = {}
    descriptor: Any = message.DESCRIPTOR  # the C and Python descriptors type differently
    for field in descriptor.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = dict(value)
        elif field.is_repeated:
            out[field.name] = [_value(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


_SCALARS: dict[int, type] = {
    FieldDescriptor.TYPE_STRING: str,
    FieldDescriptor.TYPE_BOOL: bool,
    FieldDescriptor.TYPE_INT32: int,
    FieldDescriptor.TYPE_INT64: int,
    FieldDescriptor.TYPE_UINT32: int,
    FieldDescriptor.TYPE_UINT64: int,
    FieldDescriptor.TYPE_DOUBLE: float,
    FieldDescriptor.TYPE_FLOAT: float,
}
_MODELS: dict[str, type[BaseModel]] = {}


def _annotation(field: Any) -> tuple[Any, Any]:
    """The type of one field as `view` writes it, and its Field(...) default."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return dict[str, str], Field()
    if field.type == FieldDescriptor.TYPE_ENUM:
        words = [enum_word(field.enum_type, v.number) for v in field.enum_type.values]
        kind: Any = str
        info = Field(description="one of " + ", ".join(words))
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if name == _TIMESTAMP:
            kind, info = str, Field(description="RFC 3339")
        elif name == _DURATION:
            kind, info = float, Field(description="seconds")
        elif name == _STRUCT:
            kind, info = dict[str, Any], Field()
        else:
            kind, info = model(field.message_type), Field()
        if not field.is_repeated:
            kind = kind | None
    else:
        kind, info = _SCALARS[field.type], Field()
    if field.is_repeated:
        kind = list[kind]
    return kind, info


def model(descriptor: Any) -> type[BaseModel]:
    """A pydantic model of what `view` writes for messages of `descriptor`, for /openapi.json.

    Built from the descriptor (not kept by hand), so the document cannot drift from
    the answers; the tests validate real answers against it.
    """
    found = _MODELS.get(descriptor.full_name)
    if found is None:
        fields = {f.name: _annotation(f) for f in descriptor.fields}
        found = create_model(  # type: ignore[call-overload]
            descriptor.name,
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        _MODELS[descriptor.full_name] = found
    return found


def page(name: str, items: str, descriptor: Any) -> type[BaseModel]:
    """A page of `descriptor` messages under `items`, with next_cursor (null at the end)."""
    fields: dict[str, Any] = {
        items: (list[model(descriptor)], Field()),  # type: ignore[misc]
        "next_cursor": (str | None, Field(description="pass as cursor; null: the end")),
    }
    created: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
    return created
