"""Several replicas on one PostgreSQL: a watcher on any replica sees every event."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import empty_postgres
from tests.processes import ServerProcess
from tests.test_watch import Collector, record

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(postgres_url):
    empty_postgres(postgres_url)
    common = ["--listen", "127.0.0.1:0", "--metrics-listen", "off", "--progress-interval", "1"]
    a = ServerProcess(*common, "--database-url", postgres_url, "--poll-interval", "5")
    b = ServerProcess(*common, "--database-url", postgres_url, "--poll-interval", "5")
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_a_watcher_on_one_replica_sees_events_written_through_the_other(replicas):
    a, b = replicas
    watch_b = Collector(b.stub, after_revision=0)
    watch_a = Collector(a.stub, after_revision=0)
    written: list[int] = []
    lock = threading.Lock()

    def writer(stub, name: str) -> None:
        for i in range(60):
            revision = record(stub, product=name, version=str(i)).event.revision
            with lock:
                written.append(revision)

    threads = [
        threading.Thread(target=writer, args=(a.stub, "via-a")),
        threading.Thread(target=writer, args=(b.stub, "via-b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(written) == list(range(1, 121))
    # LISTEN/NOTIFY wakes the other replica; the 5 s poll alone would be slower
    # than the stream needs, but nothing here depends on timing for correctness.
    for watcher in (watch_a, watch_b):
        revisions = [m.revision for m in watcher.events(120, timeout=30)]
        assert revisions == list(range(1, 121))
        watcher.cancel()


def test_live_watchers_on_both_replicas_get_the_same_ordered_stream(replicas):
    a, b = replicas
    watchers = [Collector(a.stub), Collector(b.stub)]
    # Give both streams time to register: the first event is recorded only after
    # a progress message proves each stream is live.
    for w in watchers:
        w.next_progress(timeout=15)
    for i in range(30):
        record((a.stub, b.stub)[i % 2], product="alternating", version=str(i))
    streams = [[m.revision for m in w.events(30)] for w in watchers]
    assert streams[0] == streams[1] == sorted(streams[0])
    assert len(set(streams[0])) == 30
    for w in watchers:
        w.cancel()


def test_batched_watchers_on_both_replicas_resume_with_no_gap_or_duplicate(replicas):
    """Batches across replicas: readers that stop mid-batch and resume on the other replica."""
    from tests.test_watch_batches import revisions

    a, b = replicas
    stubs = (a.stub, b.stub)
    written: list[int] = []
    lock = threading.Lock()

    def writer(stub, name: str) -> None:
        for i in range(80):
            revision = record(stub, product=name, version=str(i)).event.revision
            with lock:
                written.append(revision)

    threads = [
        threading.Thread(target=writer, args=(a.stub, "via-a")),
        threading.Thread(target=writer, args=(b.stub, "via-b")),
    ]
    for t in threads:
        t.start()
    received: list[int] = []
    turn = 0
    while any(t.is_alive() for t in threads) or len(received) < 160:
        watcher = Collector(
            stubs[turn % 2], after_revision=received[-1] if received else 0,
            max_events_per_message=25,
        )  # fmt: skip
        turn += 1
        taken: list[int] = []
        while len(taken) < 37:
            message = watcher.messages.get(timeout=30)
            assert message is not None, f"stream ended early: {watcher.error}"
            if message.WhichOneof("kind") == "progress":
                break
            taken += revisions([message])
        watcher.cancel()
        received += taken[:37]  # stop inside a batch
    for t in threads:
        t.join()
    assert received == sorted(set(received)), "out of order or duplicated"
    assert received == sorted(written) == list(range(1, 161))
