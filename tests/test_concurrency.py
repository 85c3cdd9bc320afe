"""Many concurrent RecordEvents leave a consistent store (SQLite, and PostgreSQL when configured).

One terminal state per deployment, revisions strictly increasing with no gaps,
every acknowledged event stored, and readers never see a revision before
everything below it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb

PENDING = pb.DEPLOYMENT_STATUS_PENDING
STARTED = pb.DEPLOYMENT_STATUS_STARTED
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
FAILED = pb.DEPLOYMENT_STATUS_FAILED
ABORTED = pb.DEPLOYMENT_STATUS_ABORTED
TERMINALS = (COMPLETED, FAILED, ABORTED)
IN_FLIGHT = 16


@pytest.fixture
def config(config):
    """The shared config without the metrics HTTP server (not needed here)."""
    return replace(config, metrics_listen="off")


def ts(seconds_from_now: float) -> timestamp_pb2.Timestamp:
    us = int((time.time() + seconds_from_now) * 1_000_000)
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def call_all(stub, requests: list[pb.RecordEventRequest]) -> list:
    """Send every request, IN_FLIGHT at a time; each result is a response or an RpcError."""

    def one(request):
        try:
            return stub.RecordEvent(request, timeout=60)
        except grpc.RpcError as err:
            return err

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        return list(pool.map(one, requests))


def reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    for packed in status.details if status else []:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            return info.reason
    return ""


def all_history(stub, **filters) -> list[pb.Deployment]:
    out, token = [], ""
    while True:
        page = stub.ListHistory(
            pb.ListHistoryRequest(page_size=1000, page_token=token, **filters), timeout=30
        )
        out += page.deployments
        token = page.next_page_token
        if not token:
            return out


def assert_contiguous(revisions: list[int], after: int) -> None:
    assert sorted(revisions) == list(range(after + 1, after + 1 + len(revisions))), (
        "revisions must be strictly increasing with no gaps and no repeats"
    )


def test_concurrent_events_leave_a_consistent_store(stub):
    base = stub.RecordEvent(
        pb.RecordEventRequest(
            product_name="warmup", version="0", environment_name="dev", status=COMPLETED
        )
    ).event.revision

    requests: list[pb.RecordEventRequest] = []
    final: dict[str, int] = {}
    # 20 deployments named by id, each PENDING, STARTED and one terminal, in any order.
    for i in range(20):
        did = f"dep-{i}"
        final[did] = TERMINALS[i % 3]
        common = dict(
            product_name="svc", version=f"1.{i}", environment_name="production", deployment_id=did
        )
        for status, offset in ((PENDING, -30), (STARTED, -20), (final[did], -10)):
            requests.append(
                pb.RecordEventRequest(
                    **common, status=status, event_time=ts(offset), event_id=f"{did}-{status}"
                )
            )
    # 60 CI "success" events without an id: 60 deployments of their own.
    for i in range(60):
        requests.append(
            pb.RecordEventRequest(
                product_name="ci",
                version="2.0",
                environment_name="staging",
                status=COMPLETED,
                event_id=f"ci-{i}",
            )
        )
    # 40 events on one shared deployment: 20 STARTED and 20 COMPLETED.
    for i in range(40):
        requests.append(
            pb.RecordEventRequest(
                product_name="shared",
                version="3.0",
                environment_name="production",
                deployment_id="shared-1",
                status=STARTED if i % 2 else COMPLETED,
                event_time=ts(-20 if i % 2 else -10),
                event_id=f"shared-{i}",
            )
        )
    # 40 events matched without an id: STARTED then COMPLETED pairs of 20 versions.
    for i in range(20):
        for status in (STARTED, COMPLETED):
            requests.append(
                pb.RecordEventRequest(
                    product_name="match",
                    version=f"4.{i}",
                    environment_name="qa",
                    status=status,
                    event_id=f"match-{i}-{status}",
                )
            )
    assert len(requests) == 200
    random.Random(7).shuffle(requests)

    results = call_all(stub, requests)
    errors = [
        (r.event_id, x.code(), x.details())
        for r, x in zip(requests, results, strict=True)
        if isinstance(x, grpc.RpcError)
    ]
    assert not errors, errors

    # Revisions: every stored event got the next one, no gaps, no repeats.
    stored = [x for x in results if not x.duplicate]
    assert_contiguous([x.event.revision for x in stored], base)
    head = base + len(stored)
    assert stub.GetCurrent(pb.GetCurrentRequest()).revision == head
    assert stub.ListHistory(pb.ListHistoryRequest()).revision == head

    # One terminal state per deployment, the one that was sent.
    svc = {d.id: d for d in all_history(stub, product_name="svc")}
    assert set(svc) == set(final)
    for did, status in final.items():
        assert svc[did].status == status, did
        assert svc[did].HasField("start_time") and svc[did].HasField("end_time"), did

    ci = all_history(stub, product_name="ci")
    assert len(ci) == 60 and len({d.id for d in ci}) == 60
    assert all(d.status == COMPLETED for d in ci)

    shared = all_history(stub, product_name="shared")
    assert [(d.id, d.status) for d in shared] == [("shared-1", COMPLETED)]
    shared_terminals = [
        x
        for r, x in zip(requests, results, strict=True)
        if r.deployment_id == "shared-1" and r.status == COMPLETED and not x.duplicate
    ]
    assert len(shared_terminals) == 1, "the same terminal status again is a duplicate"

    match = all_history(stub, product_name="match")
    by_version = defaultdict(list)
    for d in match:
        by_version[d.version].append(d.status)
    assert set(by_version) == {f"4.{i}" for i in range(20)}
    for version, statuses in by_version.items():
        # STARTED first: one deployment; COMPLETED first: a completed one and an open one.
        assert statuses.count(COMPLETED) == 1, (version, statuses)
        assert sorted(statuses) in ([COMPLETED], [STARTED, COMPLETED]), (version, statuses)

    # Every acknowledged event is stored: replaying its event_id returns it.
    replays = call_all(stub, requests)
    for request, first, again in zip(requests, results, replays, strict=True):
        assert not isinstance(again, grpc.RpcError), (request.event_id, again)
        assert again.duplicate, request.event_id
        assert again.event.revision == first.event.revision, request.event_id
        assert again.event.deployment.id == first.event.deployment.id, request.event_id
    assert stub.GetCurrent(pb.GetCurrentRequest()).revision == head, "replays write nothing"


def test_concurrent_terminal_events_on_one_deployment_exactly_one_wins(stub):
    requests = []
    for i in range(25):
        common = dict(
            product_name="race",
            version=f"1.{i}",
            environment_name="production",
            deployment_id=f"race-{i}",
        )
        requests.append(pb.RecordEventRequest(**common, status=STARTED, event_time=ts(-60)))
        for status in (COMPLETED, FAILED, ABORTED, COMPLETED, FAILED):
            requests.append(pb.RecordEventRequest(**common, status=status, event_time=ts(-1)))
    random.Random(11).shuffle(requests)
    results = call_all(stub, requests)

    winners: dict[str, list] = defaultdict(list)
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, grpc.RpcError):
            assert result.code() == grpc.StatusCode.FAILED_PRECONDITION, result.details()
            assert reason(result) == "INVALID_TRANSITION", result.details()
            assert request.status in TERMINALS
            continue
        if request.status in TERMINALS and not result.duplicate:
            winners[request.deployment_id].append(request.status)

    stored = {d.id: d for d in all_history(stub, product_name="race")}
    assert len(stored) == 25
    for i in range(25):
        did = f"race-{i}"
        assert len(winners[did]) == 1, (did, winners[did])
        assert stored[did].status == winners[did][0], did
    # The losers: same status again is a duplicate, another one INVALID_TRANSITION.
    for request, result in zip(requests, results, strict=True):
        if request.status not in TERMINALS:
            continue
        won = winners[request.deployment_id][0]
        if request.status == won:
            assert not isinstance(result, grpc.RpcError), result
        else:
            assert isinstance(result, grpc.RpcError), (request.deployment_id, request.status)
    terminal_outcomes = Counter(
        "error" if isinstance(x, grpc.RpcError) else ("dup" if x.duplicate else "won")
        for r, x in zip(requests, results, strict=True)
        if r.status in TERMINALS
    )
    assert terminal_outcomes["won"] == 25


def test_readers_never_see_a_revision_before_everything_below_it(stub):
    """Each read is a snapshot: at revision R, exactly the events up to R are visible."""
    n = 150
    requests = [
        pb.RecordEventRequest(
            product_name="ci", version=f"1.{i}", environment_name="prod", status=COMPLETED
        )
        for i in range(n)
    ]
    reads: list[tuple[int, frozenset[str]]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            page = stub.ListHistory(
                pb.ListHistoryRequest(product_name="ci", page_size=1000), timeout=30
            )
            reads.append((page.revision, frozenset(d.id for d in page.deployments)))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        results = call_all(stub, requests)
    finally:
        done.set()
        thread.join(30)
    assert all(not isinstance(x, grpc.RpcError) for x in results)
    revision_of = {x.event.deployment.id: x.event.revision for x in results}
    assert_contiguous(list(revision_of.values()), min(revision_of.values()) - 1)
    assert len(reads) >= 2
    for revision, seen in reads:
        expected = {d for d, r in revision_of.items() if r <= revision}
        missing = sorted(revision_of[d] for d in expected - seen)
        ahead = sorted(revision_of[d] for d in seen - expected)
        assert seen == expected, f"read at {revision}: missing {missing}, ahead {ahead}"
