"""Small helpers shared by the fault tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from versioner.v1 import deployment_service_pb2 as pb

from tests.faults.proxy import FaultProxy

COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_until(predicate: Callable[[], object], timeout: float = 30, what: str = "") -> object:
    """Poll until `predicate` is truthy; a generous bound, so only a hang fails it."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)
    return value


def health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    except grpc.RpcError:
        return -1


def event(version: str, **fields: object) -> pb.RecordEventRequest:
    values: dict[str, object] = {
        "product_name": "svc",
        "version": version,
        "environment_name": "prod",
        "status": COMPLETED,
    }
    values.update(fields)
    return pb.RecordEventRequest(**values)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def versions(stub) -> list[str]:
    history = stub.ListHistory(pb.ListHistoryRequest(page_size=1000), timeout=30)
    return sorted(d.version for d in history.deployments)


def proxied(url: str) -> tuple[FaultProxy, str]:
    """A proxy in front of the PostgreSQL at `url`, and the URL that goes through it."""
    parts = urlsplit(url)
    proxy = FaultProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return proxy, urlunsplit(parts._replace(netloc=netloc))
