"""Batched watch messages: every event once, in order, resumable mid-batch (DESIGN.md §9)."""

from __future__ import annotations

import random
import threading

import grpc
import pytest
from versioner.v1 import deployment_service_pb2 as pb
from versioner_client import VersionerClient

from tests.conftest import start_server
from tests.test_watch import COMPLETED, FAILED, Collector, _wait_for_watchers, record


def batch_messages(watcher: Collector, events: int, timeout: float = 30.0) -> list:
    """Event-carrying messages until `events` events have arrived (progress skipped)."""
    got, seen = [], 0
    while seen < events:
        message = watcher.messages.get(timeout=timeout)
        assert message is not None, f"stream ended early: {watcher.error}"
        if message.WhichOneof("kind") == "progress":
            continue
        got.append(message)
        seen += len(message.events) or 1
    return got


def revisions(messages: list) -> list[int]:
    out = []
    for message in messages:
        if message.HasField("event"):
            out.append(message.event.revision)
        out.extend(e.revision for e in message.events)
    return out


def test_a_batch_holds_at_most_the_asked_number_of_events_in_revision_order(stub):
    for i in range(120):
        record(stub, version=str(i))
    watcher = Collector(stub, after_revision=0, max_events_per_message=50)
    messages = batch_messages(watcher, 120)
    watcher.cancel()
    assert [len(m.events) for m in messages] == [50, 50, 20]
    for message in messages:
        assert message.WhichOneof("kind") is None
        assert message.revision == message.events[-1].revision
    assert revisions(messages) == list(range(1, 121))


def test_clients_that_do_not_ask_for_batches_get_one_event_per_message(stub):
    for i in range(5):
        record(stub, version=str(i))
    for asked in (0, 1):
        watcher = Collector(stub, after_revision=0, max_events_per_message=asked)
        messages = watcher.events(5)
        watcher.cancel()
        assert all(m.WhichOneof("kind") == "event" and not m.events for m in messages)
        assert [m.revision for m in messages] == [1, 2, 3, 4, 5]


def test_live_batches_carry_every_event_once_in_order_while_writers_run(stub, server):
    watcher = Collector(stub, max_events_per_message=1000)
    _wait_for_watchers(server, 1)
    acknowledged: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(100):
            revision = record(stub, product=f"p{n}", version=str(i)).event.revision
            with lock:
                acknowledged.append(revision)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    messages = batch_messages(watcher, 400)
    watcher.cancel()
    assert revisions(messages) == sorted(acknowledged)
    assert all(m.revision == m.events[-1].revision for m in messages)


def test_filtered_batches_hold_only_matching_events(stub, server):
    watcher = Collector(stub, product_name="a", statuses=[FAILED], max_events_per_message=100)
    _wait_for_watchers(server, 1)
    wanted = []
    for i in range(30):
        record(stub, product="b", version=str(i), status=FAILED)
        record(stub, product="a", version=str(i), status=COMPLETED)
        wanted.append(record(stub, product="a", version=f"f{i}", status=FAILED).event.revision)
    messages = batch_messages(watcher, 30)
    watcher.cancel()
    assert revisions(messages) == wanted
    for message in messages:
        for event in message.events:
            assert event.deployment.product_name == "a" and event.status == FAILED


def test_resuming_mid_batch_loses_nothing_and_repeats_nothing_while_writers_run(stub):
    """A reader that stops inside a batch resumes after the last event it took."""
    acknowledged: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        for i in range(150):
            if stop.is_set():
                return
            revision = record(stub, product=f"p{n}", version=str(i)).event.revision
            with lock:
                acknowledged.append(revision)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    received: list[int] = []
    rng = random.Random(13)
    while any(t.is_alive() for t in threads) or len(received) < len(acknowledged):
        watcher = Collector(
            stub, after_revision=received[-1] if received else 0, max_events_per_message=64
        )
        wanted = rng.randint(1, 90)
        taken: list[int] = []
        while len(taken) < wanted:
            message = watcher.messages.get(timeout=10)
            assert message is not None, f"stream ended early: {watcher.error}"
            if message.WhichOneof("kind") == "progress":
                break  # caught up: nothing more for now
            for revision in revisions([message]):
                taken.append(revision)
                if len(taken) == wanted:
                    break  # stop inside the batch
        watcher.cancel()
        received.extend(taken)
        if not taken and not any(t.is_alive() for t in threads):
            break
    stop.set()
    for t in threads:
        t.join()
    assert received == sorted(set(received)), "out of order or duplicated"
    assert received == sorted(acknowledged)


def test_a_negative_max_events_per_message_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.WatchDeployments(pb.WatchDeploymentsRequest(max_events_per_message=-1))))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_events_per_message" in caught.value.details()


def test_large_events_are_split_into_batches_under_the_message_limit(stub):
    pad = {"pad": "x" * 60_000}
    for i in range(40):  # 2.4 MB in all: more than one message may carry
        request = pb.RecordEventRequest(
            product_name="svc", version=str(i), environment_name="prod", status=COMPLETED
        )
        request.extra_metadata.update(pad)
        stub.RecordEvent(request)
    watcher = Collector(stub, after_revision=0, max_events_per_message=1000)
    messages = batch_messages(watcher, 40)
    watcher.cancel()
    assert len(messages) > 1
    assert all(m.ByteSize() < 2 * 1024 * 1024 for m in messages)
    assert revisions(messages) == list(range(1, 41))


def test_the_python_client_asks_for_batches_and_hands_out_each_event_once(config):
    running = start_server(config, watch_buffer=50)
    try:
        with VersionerClient(running.address) as client:
            stream = client.watch(product="svc", after_revision=0)
            done = threading.Event()
            written: list[int] = []

            def writer() -> None:
                for i in range(300):
                    written.append(client.record("svc", str(i), "prod", "success").event.revision)
                done.set()

            thread = threading.Thread(target=writer)
            first = client.record("svc", "first", "prod", "success").event.revision
            got = [next(stream).revision]
            assert got == [first]
            hub = running.server.watch
            assert [w.limit for w in hub._watchers] == [500]  # it asked for batches
            thread.start()
            while len(got) < 301:
                got.append(next(stream).revision)
            thread.join()
            stream.close()
            assert got == [first, *written]
        _wait_for_watchers(running, 0)
    finally:
        running.stop()
