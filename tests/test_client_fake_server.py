"""The client's retry and resume rules, against a scripted in-process fake server.

A real server cannot be made to drop a stream at an exact revision or to fail a
call a set number of times; a fake servicer can, so these tests pin down what
the client sends when things go wrong.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc
from versioner_client import PreconditionFailed, Unavailable, VersionerClient

Script = Callable[[pb.WatchDeploymentsRequest, grpc.ServicerContext], Iterator]


def event(revision: int) -> pb.WatchDeploymentsResponse:
    return pb.WatchDeploymentsResponse(
        revision=revision,
        event=pb.Event(revision=revision, deployment=pb.Deployment(version=f"v{revision}")),
    )


def progress(revision: int) -> pb.WatchDeploymentsResponse:
    return pb.WatchDeploymentsResponse(revision=revision, progress=pb.Progress())


class FakeService(pb_grpc.DeploymentServiceServicer):
    """Answers RecordEvent and WatchDeployments from scripts, remembering the requests."""

    def __init__(self) -> None:
        self.record_requests: list[pb.RecordEventRequest] = []
        self.record_metadata: list[dict[str, str]] = []
        self.record_failures = 0
        self.watch_requests: list[pb.WatchDeploymentsRequest] = []
        self.watch_scripts: list[Script] = []
        self.list_revision = 10

    def RecordEvent(self, request, context):
        self.record_requests.append(request)
        self.record_metadata.append(dict(context.invocation_metadata()))
        if len(self.record_requests) <= self.record_failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "database unreachable")
        return pb.RecordEventResponse(event=pb.Event(revision=1, event_id=request.event_id))

    def ListHistory(self, request, context):
        return pb.ListHistoryResponse(revision=self.list_revision)

    def WatchDeployments(self, request, context):
        self.watch_requests.append(request)
        if not self.watch_scripts:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no more scripts")
        yield from self.watch_scripts.pop(0)(request, context)


@pytest.fixture
def fake() -> Iterator[tuple[FakeService, str]]:
    service = FakeService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_DeploymentServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_record_retries_unavailable_with_the_same_event_id(fake) -> None:
    service, address = fake
    service.record_failures = 2
    with VersionerClient(address, retries=3) as client:
        response = client.record("shop", "1.0", "prod", "success")
    ids = {r.event_id for r in service.record_requests}
    assert len(service.record_requests) == 3
    assert len(ids) == 1
    assert response.event.event_id in ids


def test_record_gives_up_after_the_retries(fake) -> None:
    service, address = fake
    service.record_failures = 10
    with VersionerClient(address, retries=2) as client, pytest.raises(Unavailable):
        client.record("shop", "1.0", "prod", "success", event_id="mine")
    assert [r.event_id for r in service.record_requests] == ["mine"] * 3


def test_token_is_sent_as_a_bearer_header(fake) -> None:
    service, address = fake
    with VersionerClient(address, token="s3cret") as client:
        client.record("shop", "1.0", "prod", "success")
    assert service.record_metadata[0]["authorization"] == "Bearer s3cret"


def test_watch_resumes_from_the_last_revision_seen_without_duplicates(fake) -> None:
    service, address = fake

    def slow_consumer_cut(request, context):
        yield event(11)
        yield progress(15)  # filters skipped 12..15: resume after 15, not 11
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher too slow")

    def repeats_then_drops(request, context):
        yield event(15)  # a server replaying what we saw must not reach the caller
        yield event(16)
        context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def goes_silent(request, context):
        yield event(17)
        while context.is_active():
            time.sleep(0.05)

    def final(request, context):
        yield event(18)
        while context.is_active():
            time.sleep(0.05)

    service.watch_scripts = [slow_consumer_cut, repeats_then_drops, goes_silent, final]
    reconnects: list[tuple[grpc.StatusCode, int]] = []
    with VersionerClient(address) as client:
        stream = client.watch(
            product="shop",
            idle_timeout=0.5,
            on_reconnect=lambda error, _delay, revision: reconnects.append((error.code, revision)),
        )
        revisions = [e.revision for _, e in zip(range(4), stream, strict=False)]
    assert revisions == [11, 16, 17, 18]
    assert [r.after_revision for r in service.watch_requests] == [10, 15, 16, 17]
    assert all(r.product_name == "shop" for r in service.watch_requests)
    assert [code for code, _ in reconnects] == [
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,  # silence: the idle watchdog reconnected
    ]


def test_watch_with_after_revision_starts_there(fake) -> None:
    service, address = fake

    def one(request, context):
        yield event(request.after_revision + 1)

    service.watch_scripts = [one]
    with VersionerClient(address) as client:
        first = next(iter(client.watch(after_revision=0, statuses=["failed"])))
    assert first.revision == 1
    assert service.watch_requests[0].HasField("after_revision")
    assert list(service.watch_requests[0].statuses) == [pb.DEPLOYMENT_STATUS_FAILED]


def test_watch_raises_a_compacted_revision(fake) -> None:
    service, address = fake

    def compacted(request, context):
        info = error_details_pb2.ErrorInfo(reason="REVISION_COMPACTED", domain="versioner")
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION, message="revision 3 is compacted", details=[detail]
        )
        context.abort_with_status(rpc_status.to_status(status))
        yield  # pragma: no cover

    service.watch_scripts = [compacted]
    with VersionerClient(address) as client, pytest.raises(PreconditionFailed) as caught:
        next(iter(client.watch(after_revision=3)))
    assert caught.value.reason == "REVISION_COMPACTED"


def test_watch_that_never_reaches_a_server_gives_up() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with VersionerClient(f"127.0.0.1:{port}", retries=1) as client, pytest.raises(Unavailable):
        next(iter(client.watch(after_revision=5)))


def test_closing_the_generator_cancels_the_stream(fake) -> None:
    service, address = fake
    cancelled = threading.Event()

    def endless(request, context):
        context.add_callback(cancelled.set)
        revision = 10
        while context.is_active():
            revision += 1
            yield event(revision)
            time.sleep(0.01)

    service.watch_scripts = [endless]
    with VersionerClient(address) as client:
        stream = client.watch()
        next(stream)
        stream.close()
        assert cancelled.wait(5)
