"""WatchDeployments: resumable, filtered, ordered, lossless; limits and shutdown."""

from __future__ import annotations

import queue
import random
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb

from tests.conftest import start_server

COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
STARTED = pb.DEPLOYMENT_STATUS_STARTED
FAILED = pb.DEPLOYMENT_STATUS_FAILED


def record(stub, product="svc", version="1", env="production", status=COMPLETED, **kw):
    return stub.RecordEvent(
        pb.RecordEventRequest(
            product_name=product, version=version, environment_name=env, status=status, **kw
        )
    )


class Collector:
    """Reads a watch stream on a thread; messages land in a queue."""

    def __init__(self, stub, **request) -> None:
        self.call = stub.WatchDeployments(pb.WatchDeploymentsRequest(**request))
        self.messages: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for message in self.call:
                self.messages.put(message)
        except grpc.RpcError as exc:
            self.error = exc
        self.messages.put(None)

    def events(
        self, count: int, timeout: float = 20.0, partial: bool = False
    ) -> list[pb.WatchDeploymentsResponse]:
        """The next `count` event messages (progress messages are skipped).

        With `partial`, what arrived before the timeout; else a timeout fails.
        """
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count:
            try:
                message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                if partial:
                    return got
                raise
            assert message is not None, f"stream ended early: {self.error}"
            if message.WhichOneof("kind") == "event":
                got.append(message)
        return got

    def next_progress(self, timeout: float = 10.0) -> pb.WatchDeploymentsResponse:
        deadline = time.monotonic() + timeout
        while True:
            message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            assert message is not None, f"stream ended early: {self.error}"
            if message.WhichOneof("kind") == "progress":
                return message

    def ended(self, timeout: float = 20.0) -> grpc.RpcError | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream did not end"
        return self.error

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_watch_from_a_revision_replays_stored_events_then_goes_live(stub):
    first = [record(stub, version=str(i)).event.revision for i in range(3)]
    watcher = Collector(stub, after_revision=first[0])
    replayed = watcher.events(2)
    assert [m.revision for m in replayed] == first[1:]
    live = record(stub, version="live").event.revision
    (message,) = watcher.events(1)
    assert message.revision == live
    assert message.event.deployment.version == "live"
    assert message.event.revision == message.revision
    watcher.cancel()


def test_watch_without_after_revision_sends_only_live_events(stub, server):
    record(stub, version="old")
    watcher = Collector(stub)
    _wait_for_watchers(server, 1)
    live = record(stub, version="new")
    (message,) = watcher.events(1)
    assert message.event.deployment.version == "new"
    assert message.revision == live.event.revision
    watcher.cancel()


def test_watch_filters_by_product_environment_and_status(stub, server):
    watcher = Collector(stub, product_name="a", environment_name="prod", statuses=[FAILED])
    _wait_for_watchers(server, 1)
    record(stub, product="b", env="prod", status=FAILED)
    record(stub, product="a", env="staging", status=FAILED)
    record(stub, product="a", env="prod", status=STARTED, version="2")
    wanted = record(stub, product="a", env="prod", status=FAILED, version="3")
    (message,) = watcher.events(1)
    assert message.revision == wanted.event.revision
    watcher.cancel()


def test_progress_messages_keep_a_filtered_watchers_resume_point_fresh(stub, server):
    watcher = Collector(stub, product_name="quiet", after_revision=0)
    skipped = [record(stub, product="busy", version=str(i)).event.revision for i in range(3)]
    deadline = time.monotonic() + 10
    while True:
        progress = watcher.next_progress()
        if progress.revision >= skipped[-1] or time.monotonic() > deadline:
            break
    assert progress.revision == skipped[-1]
    assert not progress.HasField("event")
    watcher.cancel()


def test_resume_from_last_revision_loses_nothing_while_writers_run(stub):
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 150:
            response = record(stub, product=f"p{n}", version=str(i), status=COMPLETED)
            with lock:
                acknowledged.append(response.event.revision)
            i += 1

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in writers:
        t.start()
    received: list[int] = []
    last = 0
    rng = random.Random(7)
    while any(t.is_alive() for t in writers) or len(received) < len(acknowledged):
        watcher = Collector(stub, after_revision=last)
        batch = watcher.events(rng.randint(1, 40), timeout=2, partial=True)
        watcher.cancel()
        for message in batch:
            received.append(message.revision)
        if received:
            last = received[-1]
        if not batch and not any(t.is_alive() for t in writers):
            break
    stop.set()
    for t in writers:
        t.join()
    assert received == sorted(set(received)), "out of order or duplicated"
    assert received == sorted(acknowledged)


def test_events_committed_during_catch_up_are_neither_lost_nor_repeated(stub):
    for i in range(600):  # more than one catch-up page
        record(stub, version=f"seed-{i}")
    done = threading.Event()
    acknowledged: list[int] = []

    def writer() -> None:
        for i in range(200):
            acknowledged.append(record(stub, version=f"during-{i}").event.revision)
        done.set()

    thread = threading.Thread(target=writer)
    watcher = Collector(stub, after_revision=0)
    thread.start()
    thread.join()
    total = 600 + 200
    revisions = [m.revision for m in watcher.events(total, timeout=60)]
    assert revisions == list(range(1, total + 1))
    watcher.cancel()


def test_a_compacted_revision_is_failed_precondition_naming_the_oldest(stub, server):
    for i in range(5):
        record(stub, version=str(i))
    deleted = server.run(server.server.store.compact(older_than=2**62))
    assert deleted == 4  # the newest event is always kept
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=1))))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = _error_info(caught.value)
    assert info.reason == "REVISION_COMPACTED"
    assert info.metadata["oldest_revision"] == "5"
    # Resuming from the oldest kept revision's predecessor still works.
    watcher = Collector(stub, after_revision=4)
    assert watcher.events(1)[0].revision == 5
    watcher.cancel()


def test_a_slow_watcher_is_cut_off_while_a_fast_one_keeps_receiving(config):
    # 400 events of 30 KB are far more than flow control lets a stream hold back,
    # so the slow one falls past any buffer; 50 leaves the fast one room for a
    # busy machine's scheduling hiccups (at 5 it was cut off now and then too).
    running = start_server(config, watch_buffer=50)
    try:
        stub = running.stub
        big = {"blob": "x" * 30_000}
        record(stub, version="first")
        slow = stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=0))
        first = next(slow)  # then stop reading: flow control backs up to the server's queue
        assert first.revision == 1
        fast = Collector(stub)
        _wait_for_watchers(running, 2)
        count = 400
        for i in range(count):
            request = pb.RecordEventRequest(
                product_name="svc", version=str(i), environment_name="prod", status=COMPLETED
            )
            request.extra_metadata.update(big)
            stub.RecordEvent(request)
        assert len(fast.events(count, timeout=60)) == count
        received = [first.revision]
        with pytest.raises(grpc.RpcError) as caught:
            for message in slow:
                if message.HasField("event"):
                    received.append(message.revision)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"after_revision={received[-1]}" in caught.value.details()
        assert received == list(range(1, len(received) + 1))
        assert len(received) < count + 1
        fast.cancel()
    finally:
        running.stop()


def test_watch_streams_beyond_the_cap_are_resource_exhausted(config):
    running = start_server(config, max_watchers=2)
    try:
        watchers = [Collector(running.stub) for _ in range(2)]
        _wait_for_watchers(running, 2)
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(running.stub.WatchDeployments(pb.WatchDeploymentsRequest())))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watchers[0].cancel()
        _wait_for_watchers(running, 1)
        again = Collector(running.stub)
        _wait_for_watchers(running, 2)
        again.cancel()
        watchers[1].cancel()
    finally:
        running.stop()


def test_server_shutdown_ends_watch_streams_with_unavailable(config):
    running = start_server(config)
    watcher = Collector(running.stub)
    _wait_for_watchers(running, 1)
    running.stop(grace=5)
    error = watcher.ended()
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE


def test_many_connects_and_disconnects_leak_no_watchers_or_tasks(server, stub):
    import asyncio

    def task_count() -> int:
        async def count() -> int:
            return len(asyncio.all_tasks())

        return server.run(count())

    for _ in range(50):  # warm up
        stub.WatchDeployments(pb.WatchDeploymentsRequest()).cancel()
    _wait_for_watchers(server, 0)
    before = task_count()
    for i in range(1000):
        call = stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=0))
        if i % 2:
            call.cancel()
        else:
            record(stub, version=str(i))
            next(call)
            call.cancel()
    _wait_for_watchers(server, 0)
    deadline = time.monotonic() + 10
    # The server's own periodic work (health probes, notification leases, the
    # HTTP server) may hold a task or two at any moment; a leak of streams would
    # leave hundreds.
    slack = 2
    while task_count() > before + slack and time.monotonic() < deadline:
        time.sleep(0.1)
    assert task_count() <= before + slack


def test_invalid_watch_requests_are_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=-1))))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.WatchDeployments(pb.WatchDeploymentsRequest(statuses=[42]))))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "statuses[0]" in caught.value.details()


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status details")


def _wait_for_watchers(server, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while server.server.watch.watchers != count:
        assert time.monotonic() < deadline, f"{server.server.watch.watchers} watchers, not {count}"
        time.sleep(0.02)
