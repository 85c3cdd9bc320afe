"""Property-based fuzzing of every request message of every versioner.v1 service.

Random and adversarial field values (and raw bytes through a generic channel) may
only be answered OK, INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND, or
RESOURCE_EXHAUSTED for a size limit; a rejected call writes nothing (the head
revision is unchanged). Methods are discovered from the generated modules, so a
new RPC is fuzzed without touching this file.

Profiles: `ci` by default; `--hypothesis-profile long` for a longer local run.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import versioner.v1
from google.protobuf import descriptor, message_factory, struct_pb2
from google.protobuf.descriptor import FieldDescriptor as F
from hypothesis import assume, given
from hypothesis import strategies as st
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from tests.conftest import BACKENDS, RunningServer, empty_postgres
from versioner_grpc.config import Config

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _methods() -> list[descriptor.MethodDescriptor]:
    found = []
    for info in pkgutil.iter_modules(versioner.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"versioner.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found += [m for m in service.methods if not m.client_streaming]
    return found


METHODS = _methods()
IDS = [f"{m.containing_service.name}.{m.name}" for m in METHODS]

# Values ------------------------------------------------------------------------

_WORDS = ["", "api", "web", "prod", "production", "staging", "1.0", "2.0", " api ", "dev-1"]
_TEXT = st.characters(exclude_categories=["Cs"])  # protobuf strings are valid UTF-8
TEXT = st.one_of(
    st.sampled_from(_WORDS),
    st.text(_TEXT, max_size=20),
    st.text(_TEXT, max_size=400),
    st.sampled_from(["\x00", "a\x00b", "\u202e", "../../etc", "%s%n", "'; DROP TABLE x;--"]),
    st.integers(0, 5000).map(lambda n: "x" * n),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(_TEXT, max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(_TEXT, max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


def _sealed(payload: bytes) -> str:
    """A page token with a valid seal (the key is public) around any payload."""
    digest = hashlib.blake2b(payload, key=b"versioner.v1.ListHistory", digest_size=8).digest()
    return base64.urlsafe_b64encode(payload + digest).decode().rstrip("=")


PAGE_TOKEN = st.one_of(
    TEXT,
    st.lists(JSON, max_size=5).map(lambda items: _sealed(json.dumps(items).encode())),
    st.tuples(st.just(1), st.text(max_size=20), JSON, JSON).map(
        lambda t: _sealed(json.dumps(list(t)).encode())
    ),
    st.integers(10, 50_000).map(lambda n: _sealed(b"[" * n + b"]" * n)),
)


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


STRUCT = st.one_of(
    st.dictionaries(st.text(_TEXT, max_size=10), JSON, max_size=6),
    st.integers(28, 33).map(_deep),
    st.integers(900, 1100).map(lambda n: {f"k{i}": i for i in range(n)}),
)
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, 0, 1, -1, 2**31 - 1, 2**53) if low <= v <= high]
    return st.one_of(
        st.integers(-3, 100).filter(lambda v: low <= v <= high),
        st.sampled_from(edges),
        st.integers(low, high),
    )


def _scalar(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == F.TYPE_STRING:
        return PAGE_TOKEN if field.name == "page_token" else TEXT
    if kind in INT_RANGES:
        return _integers(*INT_RANGES[kind])
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(width=32 if kind == F.TYPE_FLOAT else 64)
    if kind == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == F.TYPE_ENUM:
        assert field.enum_type is not None
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), _integers(-(2**31), 2**31 - 1))
    assert field.message_type is not None
    return message_values(field.message_type, depth + 1)


def message_values(message: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for one message: a dict of field name → value (or a Struct's dict)."""
    if message.full_name == "google.protobuf.Struct":
        return STRUCT
    if depth > 3:
        return st.just({})
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in message.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            fields[field.name] = st.dictionaries(
                _scalar(key, depth), _scalar(value, depth), max_size=4
            )
        elif field.is_repeated:
            element = _scalar(field, depth)
            fields[field.name] = st.lists(element, max_size=4) | st.lists(
                element, min_size=90, max_size=300
            )
        else:
            fields[field.name] = _scalar(field, depth)
    return st.fixed_dictionaries({}, optional=fields)


def build(message: descriptor.Descriptor, values: Any) -> Any:
    """The protobuf message for `values` drawn from message_values()."""
    cls = message_factory.GetMessageClass(message)
    out = cls()
    _fill(out, values)
    return out


def _fill(out: Any, values: Any) -> None:
    if out.DESCRIPTOR.full_name == "google.protobuf.Struct":
        out.update(values)
        return
    for name, value in values.items():
        field = out.DESCRIPTOR.fields_by_name[name]
        target = getattr(out, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if field.message_type.fields_by_name["value"].message_type is not None:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated:
            for item in value:
                if field.message_type is not None:
                    _fill(target.add(), item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            target.SetInParent()
            _fill(target, value)
        else:
            setattr(out, name, value)


# The server under fuzz ---------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[RunningServer]:
    """One server per backend for the whole module (examples run back to back)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/versioner.db"
    else:
        url = request.getfixturevalue("postgres_url")
        empty_postgres(url)
    running = RunningServer(
        Config(
            listen="127.0.0.1:0",
            metrics_listen="off",
            http_listen="off",
            database_url=url,
            progress_interval=0.1,
            poll_interval=0.5,
        )
    )
    stub = running.stub
    for status in (pb.DEPLOYMENT_STATUS_STARTED, pb.DEPLOYMENT_STATUS_COMPLETED):
        stub.RecordEvent(
            pb.RecordEventRequest(
                product_name="api", version="1.0", environment_name="production", status=status
            ),
            timeout=30,
        )
    yield running
    running.stop()


def head(stub: pb_grpc.DeploymentServiceStub) -> int:
    return stub.GetCurrent(pb.GetCurrentRequest(), timeout=30).revision


def invoke(
    running: RunningServer,
    method: descriptor.MethodDescriptor,
    serializer: Callable[[Any], bytes] | None,
    request: Any,
) -> None:
    """Call `method` once; for a stream, read its first message (or its error)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    if method.server_streaming:
        stream = running.channel.unary_stream(
            path, request_serializer=serializer, response_deserializer=None
        )
        call = stream(request, timeout=30)
        try:
            next(call)
        except StopIteration:
            pass
        finally:
            call.cancel()
    else:
        running.channel.unary_unary(
            path, request_serializer=serializer, response_deserializer=None
        )(request, timeout=30)


def check(running: RunningServer, call: Callable[[], None], what: str) -> None:
    before = head(running.stub)
    try:
        call()
        return
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    assert code in ALLOWED, f"{what}: {code.name} {details}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # only a message over the size limit
        assert "message larger than max" in details.lower(), f"{what}: {details}"
    assert head(running.stub) == before, f"{what}: rejected with {code.name} but wrote"


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@given(data=st.data())
def test_fuzzed_fields_get_only_client_error_codes_and_rejections_write_nothing(
    fuzzed, method, data
):
    values = data.draw(message_values(method.input_type), label="fields")
    try:
        request = build(method.input_type, values)
    except (ValueError, TypeError) as exc:  # protobuf itself refuses it client-side
        assume(False)
        raise AssertionError from exc
    check(
        fuzzed,
        lambda: invoke(fuzzed, method, lambda m: m.SerializeToString(), request),
        repr(request)[:300],
    )


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@given(data=st.data())
def test_fuzzed_wire_bytes_get_only_client_error_codes_and_rejections_write_nothing(
    fuzzed, method, data
):
    valid = build(method.input_type, data.draw(message_values(method.input_type), label="fields"))
    raw = data.draw(
        st.one_of(
            st.binary(max_size=256),
            st.binary(max_size=64).map(lambda tail: valid.SerializeToString() + tail),
            st.integers(0, 200).map(lambda cut: valid.SerializeToString()[:cut]),
            st.integers(34, 80).map(_nested_struct_bytes),
        ),
        label="raw",
    )
    check(fuzzed, lambda: invoke(fuzzed, method, None, raw), repr(raw)[:300])


def _nested_struct_bytes(levels: int) -> bytes:
    """A message whose field 9 holds Structs nested `levels` deep (past protobuf's limit)."""
    inner = b""
    for _ in range(levels):
        value = b"\x2a" + _varint(len(inner)) + inner
        entry = b"\x0a\x01n\x12" + _varint(len(value)) + value
        inner = b"\x0a" + _varint(len(entry)) + entry
    return b"\x4a" + _varint(len(inner)) + inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_every_rpc_is_fuzzed():
    """New services are found by discovery, not by a list kept by hand."""
    names = set(IDS)
    assert {"DeploymentService.RecordEvent", "DeploymentService.WatchDeployments"} <= names
    assert all(isinstance(m.input_type, descriptor.Descriptor) for m in METHODS)
    assert struct_pb2.Struct.DESCRIPTOR.full_name == "google.protobuf.Struct"
