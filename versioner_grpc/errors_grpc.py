"""Domain errors → gRPC status codes with google.rpc details. The one place they are mapped.

Every status built here fits in a few KiB of trailers: a client's default
metadata limit is 16 KiB, and an error too large for it reaches the client as
RESOURCE_EXHAUSTED instead of the real code. Repeated violations of one rule
(`statuses[0]`, `statuses[1]`, ...) are merged into one, and counts and texts
are capped.
"""

from __future__ import annotations

import re

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from versioner_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VersionerError,
)

DOMAIN = "versioner.dev"
MAX_MESSAGE_CHARS = 1024
MAX_VIOLATIONS = 16
MAX_FIELD_CHARS = 128
MAX_DESCRIPTION_CHARS = 256
MAX_METADATA_ENTRIES = 16
MAX_METADATA_CHARS = 256
LISTED_INDEXES = 5
_INDEXED = re.compile(r"^(.*)\[(\d+)\]$")


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def merged_violations(violations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One violation per (field, rule): indexed repeats merge, the list is capped."""
    groups: dict[tuple[str, str], list[str]] = {}
    for field, why in violations:
        indexed = _INDEXED.match(field)
        base, index = (indexed.group(1), indexed.group(2)) if indexed else (field, "")
        groups.setdefault((base, why), []).append(index)
    out: list[tuple[str, str]] = []
    for (base, why), indexes in groups.items():
        if len(indexes) == 1:
            field = f"{base}[{indexes[0]}]" if indexes[0] else base
            out.append((_cut(field, MAX_FIELD_CHARS), _cut(why, MAX_DESCRIPTION_CHARS)))
            continue
        listed = ", ".join(i for i in indexes[:LISTED_INDEXES] if i)
        more = len(indexes) - LISTED_INDEXES
        where = f" (at indexes {listed}{f' and {more} more' if more > 0 else ''})" if listed else ""
        text = f"{why}{where}"
        out.append((_cut(base, MAX_FIELD_CHARS), _cut(text, MAX_DESCRIPTION_CHARS)))
    if len(out) > MAX_VIOLATIONS:
        rest = len(out) - (MAX_VIOLATIONS - 1)
        out = [*out[: MAX_VIOLATIONS - 1], ("request", f"and {rest} more violations")]
    return out


def to_status(exc: VersionerError) -> grpc.Status:
    """The gRPC status (code, message, details) a client sees for `exc`."""
    message = _cut(str(exc), MAX_MESSAGE_CHARS)
    if isinstance(exc, InvalidArgument):
        violations = merged_violations(exc.violations)
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        message = _cut("; ".join(f"{f}: {d}" for f, d in violations), MAX_MESSAGE_CHARS)
        proto = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=message, details=[_packed(details)]
        )
    elif isinstance(exc, FailedPrecondition):
        metadata = {
            _cut(k, MAX_FIELD_CHARS): _cut(v, MAX_METADATA_CHARS)
            for k, v in list(exc.metadata.items())[:MAX_METADATA_ENTRIES]
        }
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=metadata)
        proto = status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION, message=message, details=[_packed(info)]
        )
    elif isinstance(exc, NotFound):
        proto = status_pb2.Status(code=code_pb2.NOT_FOUND, message=str(exc))
    elif isinstance(exc, ResourceExhausted):
        proto = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    elif isinstance(exc, Unauthenticated):
        proto = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=message)
    elif isinstance(exc, PermissionDenied):
        proto = status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=message)
    elif isinstance(exc, Unavailable):
        proto = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message)
    else:
        proto = status_pb2.Status(code=code_pb2.INTERNAL, message=message)
    return rpc_status.to_status(proto)
