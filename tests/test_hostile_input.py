"""Hostile input that once reached the database or the transport: forged page tokens,
errors too large for a client's metadata limit, metadata nested past the limit.

Each case must be INVALID_ARGUMENT naming the offending field, never INTERNAL,
and every error must arrive at the client with its real code.
"""

from __future__ import annotations

import base64
import hashlib
import json

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb

from versioner_grpc.domain.filters import Filters
from versioner_grpc.domain.validation import MAX_METADATA_DEPTH

COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
TOKEN_KEY = b"versioner.v1.ListHistory"  # the seal is public: anyone can forge one


def seal(payload: bytes) -> str:
    digest = hashlib.blake2b(payload, key=TOKEN_KEY, digest_size=8).digest()
    return base64.urlsafe_b64encode(payload + digest).decode().rstrip("=")


def forged(create_time: object, last_id: object, *, version: object = 1) -> str:
    """A correctly sealed token for ListHistory with no filters, carrying any values."""
    scope = hashlib.blake2b(Filters().key().encode(), key=TOKEN_KEY, digest_size=8).hexdigest()
    return seal(json.dumps([version, scope, create_time, last_id]).encode())


def bad_request(err: grpc.RpcError) -> error_details_pb2.BadRequest:
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status: {err.code()} {err.details()}"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            out = error_details_pb2.BadRequest()
            detail.Unpack(out)
            return out
    raise AssertionError("no BadRequest in the details")


def assert_invalid(call, request, field: str) -> error_details_pb2.BadRequest:
    with pytest.raises(grpc.RpcError) as info:
        result = call(request, timeout=10)
        for _ in result if hasattr(result, "__iter__") else ():
            pass
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code()}: {err.details()}"
    details = bad_request(err)
    assert field in [v.field for v in details.field_violations], details
    return details


FORGED_TOKENS = {
    "create_time beyond 64 bits": forged(10**19, "a"),
    "create_time below 64 bits": forged(-(10**19), "a"),
    "create_time true": forged(True, "a"),
    "create_time float": forged(1.5, "a"),
    "id with NUL": forged(1, "a\u0000b"),
    "id empty": forged(1, ""),
    "id too long": forged(1, "a" * 129),
    "id a number": forged(1, 7),
    "version true": forged(1, "a", version=True),
    "nested id": forged(1, ["a"]),
    "object": seal(b'{"a": 1}'),
    "deep nesting": seal(b"[" * 50_000 + b"]" * 50_000),
    "deep nesting in the id": seal(b'[1,"s",1,' + b"[" * 5000 + b"]" * 5000 + b"]"),
    "too long": "A" * 100_000,
    "not ascii": "ä" * 10,
}


@pytest.mark.parametrize("name", list(FORGED_TOKENS))
def test_forged_page_token_is_invalid_argument_naming_page_token(stub, name):
    stub.RecordEvent(
        pb.RecordEventRequest(
            product_name="p", version="1", environment_name="e", status=COMPLETED
        ),
        timeout=10,
    )
    request = pb.ListHistoryRequest(page_token=FORGED_TOKENS[name])
    assert_invalid(stub.ListHistory, request, "page_token")


def test_genuine_page_token_still_pages(stub):
    for version in ("1", "2", "3"):
        stub.RecordEvent(
            pb.RecordEventRequest(
                product_name="p", version=version, environment_name="e", status=COMPLETED
            ),
            timeout=10,
        )
    first = stub.ListHistory(pb.ListHistoryRequest(page_size=2), timeout=10)
    rest = stub.ListHistory(
        pb.ListHistoryRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    assert [d.version for d in [*first.deployments, *rest.deployments]] == ["3", "2", "1"]


# The Python client's default: received metadata over 16 KiB is refused by the
# client itself, which then reports RESOURCE_EXHAUSTED instead of the real error.
ERROR_BUDGET = 8 * 1024


def trailer_bytes(err: grpc.RpcError) -> int:
    return sum(len(k) + len(v) for k, v in err.trailing_metadata() or ()) + len(err.details() or "")


@pytest.mark.parametrize("rpc", ["ListHistory", "WatchDeployments"])
def test_many_bad_statuses_give_one_small_invalid_argument(stub, rpc):
    request_type = pb.ListHistoryRequest if rpc == "ListHistory" else pb.WatchDeploymentsRequest
    call = getattr(stub, rpc)
    with pytest.raises(grpc.RpcError) as info:
        result = call(request_type(statuses=[99] * 100 + [-5] * 1000), timeout=10)
        for _ in result if rpc == "WatchDeployments" else ():
            pass
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.code()}: {err.details()}"
    assert trailer_bytes(err) < ERROR_BUDGET
    details = bad_request(err)
    assert [v.field for v in details.field_violations] == ["statuses"]
    assert "1100" not in details.field_violations[0].description  # indexes listed, capped
    assert "and 1095 more" in details.field_violations[0].description


def test_every_violation_of_a_request_still_fits(stub):
    """Every field wrong at once: all named (distinct rules are never merged away)."""
    request = pb.RecordEventRequest(
        product_name="\x00" * 300,
        version="v" * 10_000,
        environment_name="",
        status=99,
        deployed_by="d" * 10_000,
        scm_branch="\x01",
        scm_sha="xyz",
        build_url="ftp://x",
        event_id="bad id",
        deployment_id="bad id",
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.RecordEvent(request, timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailer_bytes(err) < ERROR_BUDGET
    fields = {v.field for v in bad_request(err).field_violations}
    assert fields == {
        "product_name",
        "version",
        "environment_name",
        "status",
        "deployed_by",
        "scm_branch",
        "scm_sha",
        "build_url",
        "event_id",
        "deployment_id",
    }


def deep_struct(levels: int) -> struct_pb2.Struct:
    """A Struct with `levels` nested objects (the top one counts)."""
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    s = struct_pb2.Struct()
    s.update(value)
    return s


def event_request(**fields) -> pb.RecordEventRequest:
    base = {"product_name": "p", "version": "1", "environment_name": "e", "status": COMPLETED}
    return pb.RecordEventRequest(**{**base, **fields})


def test_metadata_at_the_depth_limit_is_accepted(stub):
    stub.RecordEvent(event_request(extra_metadata=deep_struct(MAX_METADATA_DEPTH)), timeout=10)


def test_metadata_past_the_depth_limit_names_the_limit(stub):
    too_deep = event_request(extra_metadata=deep_struct(MAX_METADATA_DEPTH + 1))
    details = assert_invalid(stub.RecordEvent, too_deep, "extra_metadata")
    assert f"{MAX_METADATA_DEPTH} levels" in details.field_violations[0].description


def test_metadata_past_protobufs_own_depth_limit_names_the_limit(server):
    """Raw bytes nested deeper than protobuf parses: still the named limit, not 'invalid'."""
    leaf = b""
    for _ in range(60):  # Struct{fields: {"n": Value{struct_value: ...}}}
        value = b"\x2a" + _varint(len(leaf)) + leaf
        entry = b"\x0a\x01n" + b"\x12" + _varint(len(value)) + value
        leaf = b"\x0a" + _varint(len(entry)) + entry
    raw = event_request().SerializeToString() + b"\x4a" + _varint(len(leaf)) + leaf
    call = server.channel.unary_unary(
        "/versioner.v1.DeploymentService/RecordEvent",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as info:
        call(raw, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = bad_request(info.value).field_violations
    assert [v.field for v in violations] == ["extra_metadata"]
    assert f"{MAX_METADATA_DEPTH} levels" in violations[0].description


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_metadata_with_too_many_keys_names_the_limit(stub):
    wide = struct_pb2.Struct()
    wide.update({f"k{i}": {"a": i} for i in range(600)})  # 1200 keys over two levels
    details = assert_invalid(stub.RecordEvent, event_request(extra_metadata=wide), "extra_metadata")
    assert "1000 keys" in details.field_violations[0].description
    stub.RecordEvent(
        event_request(extra_metadata=struct_pb2.Struct(fields={})), timeout=10
    )  # nothing stuck
    history = stub.ListHistory(pb.ListHistoryRequest(), timeout=10).deployments
    assert len(history) == 1 and not history[0].extra_metadata.fields
