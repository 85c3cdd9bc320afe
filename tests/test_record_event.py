"""RecordEvent against a real server (SQLite, and PostgreSQL when configured).

One test per rule of DESIGN.md sections 1 and 2: the seed example, every cell of
the lifecycle table, deployment_id correlation, event_id idempotency, late and
out-of-order events, version/SHA immutability, rollbacks, error details, and
"a rejected call writes nothing".
"""

from __future__ import annotations

import time
from dataclasses import replace

import grpc
import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb

STARTED = pb.DEPLOYMENT_STATUS_STARTED
PENDING = pb.DEPLOYMENT_STATUS_PENDING
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
FAILED = pb.DEPLOYMENT_STATUS_FAILED
ABORTED = pb.DEPLOYMENT_STATUS_ABORTED
TERMINALS = [COMPLETED, FAILED, ABORTED]
NAMES = {PENDING: "PENDING", STARTED: "STARTED", COMPLETED: "COMPLETED", FAILED: "FAILED"}
NAMES[ABORTED] = "ABORTED"
SEED = dict(product_name="my-service", version="1.2.3", environment_name="production")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def config(config):
    """The shared config without the metrics HTTP server (not needed here; its
    shutdown polls every 0.5 s, which would dominate these tests' run time)."""
    return replace(config, metrics_listen="off")


def ts(seconds_from_now: float) -> timestamp_pb2.Timestamp:
    """A Timestamp relative to now, at whole microseconds."""
    us = int((time.time() + seconds_from_now) * 1_000_000)
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def record(stub, status=COMPLETED, **fields) -> pb.RecordEventResponse:
    values = dict(SEED)
    values.update(fields)
    return stub.RecordEvent(pb.RecordEventRequest(status=status, **values), timeout=10)


def rejected(stub, status=COMPLETED, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        record(stub, status, **fields)
    return info.value


def details(err: grpc.RpcError, kind):
    """The first google.rpc detail of type `kind` in the error, or None."""
    status = rpc_status.from_call(err)
    if status is None:
        return None
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            out = kind()
            packed.Unpack(out)
            return out
    return None


def assert_precondition(err: grpc.RpcError, reason: str) -> None:
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    info = details(err, error_details_pb2.ErrorInfo)
    assert info is not None, "FAILED_PRECONDITION must carry google.rpc.ErrorInfo"
    assert info.reason == reason


def assert_invalid(err: grpc.RpcError, field: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    bad = details(err, error_details_pb2.BadRequest)
    assert bad is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest"
    fields = [v.field for v in bad.field_violations]
    assert field in fields, fields
    assert all(v.description for v in bad.field_violations)


def history(stub, **filters) -> pb.ListHistoryResponse:
    return stub.ListHistory(pb.ListHistoryRequest(page_size=1000, **filters), timeout=10)


def revision(stub) -> int:
    """The store revision, as both read RPCs report it (they must agree)."""
    a = stub.GetCurrent(pb.GetCurrentRequest(), timeout=10).revision
    b = history(stub).revision
    assert a == b
    return a


def snapshot(stub) -> tuple:
    """Everything a client can read: revision, history and current state."""
    return (
        revision(stub),
        history(stub).deployments,
        stub.GetCurrent(pb.GetCurrentRequest(), timeout=10).states,
    )


def us(t: timestamp_pb2.Timestamp) -> int:
    return t.seconds * 1_000_000 + t.nanos // 1000


def struct(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


# --------------------------------------------------------------------------- the seed


def test_seed_example_is_one_completed_deployment_with_exact_metadata(stub):
    metadata = struct(
        {
            "deployment_duration_seconds": 120,
            "rollback_version": "1.2.2",
            "deployment_notes": "Deployed new feature X with database migration",
        }
    )
    details_ = dict(
        deployed_by="john.doe@example.com",
        scm_branch="main",
        scm_sha="abc123def456",
        build_url="https://ci.example.com/builds/12345",
        extra_metadata=metadata,
    )
    start, end = ts(-120), ts(0)
    first = record(stub, STARTED, event_time=start, **details_)
    second = record(stub, COMPLETED, event_time=end, **details_)

    assert not first.duplicate and not second.duplicate
    assert first.event.status == STARTED and second.event.status == COMPLETED
    assert second.event.revision > first.event.revision > 0
    d = second.event.deployment
    assert d.id and d.id == first.event.deployment.id
    assert (d.product_name, d.version, d.environment_name) == ("my-service", "1.2.3", "production")
    assert d.status == COMPLETED
    assert d.environment_type == pb.ENVIRONMENT_TYPE_PRODUCTION
    assert d.deployed_by == "john.doe@example.com"
    assert d.scm_branch == "main"
    assert d.scm_sha == "abc123def456"
    assert d.build_url == "https://ci.example.com/builds/12345"
    assert d.extra_metadata == metadata
    assert d.start_time == start and d.end_time == end
    assert d.duration.ToMicroseconds() == us(end) - us(start)
    assert d.duration.seconds in (119, 120)
    assert d.create_time == start

    listed = history(stub).deployments
    assert len(listed) == 1
    assert listed[0] == d
    states = stub.GetCurrent(pb.GetCurrentRequest(product_name="my-service")).states
    assert len(states) == 1
    assert states[0].current == d and states[0].latest == d


def test_nested_metadata_round_trips_exactly(stub):
    metadata = struct(
        {
            "int": 120,
            "float": 0.25,
            "neg": -3,
            "big": 1e300,
            "text": "héllo ✓ 服务",
            "empty": "",
            "null": None,
            "flag": False,
            "list": [1, "two", None, True, {"deep": [[]]}],
            "nested": {"a": {"b": {"c": "d"}}, "empty_obj": {}},
        }
    )
    r = record(stub, extra_metadata=metadata)
    assert r.event.deployment.extra_metadata == metadata
    assert history(stub).deployments[0].extra_metadata == metadata


def test_metadata_merges_key_by_key_across_events(stub):
    record(stub, STARTED, deployment_id="d-merge", extra_metadata=struct({"a": 1, "b": "x"}))
    r = record(stub, COMPLETED, deployment_id="d-merge", extra_metadata=struct({"b": "y", "c": 2}))
    assert r.event.deployment.extra_metadata == struct({"a": 1, "b": "y", "c": 2})


# --------------------------------------------------------------------------- lifecycle table


def test_lifecycle_first_event_creates_a_deployment(stub):
    """Column "none open": any first event is a new deployment, by match or by id."""
    for status in [PENDING, STARTED, *TERMINALS]:
        for with_id in (False, True):
            case = f"{NAMES[status]}-{'id' if with_id else 'match'}"
            product = f"first-{case}"
            extra = {"deployment_id": f"d-{case}"} if with_id else {}
            before = revision(stub)
            r = record(stub, status, product_name=product, event_time=ts(-1), **extra)
            d = r.event.deployment
            assert not r.duplicate, case
            assert r.event.revision == before + 1, case
            assert d.status == status, case
            if with_id:
                assert d.id == f"d-{case}"
            assert d.create_time == r.event.event_time, case
            if status == STARTED:
                assert d.start_time == r.event.event_time, case
            else:
                assert not d.HasField("start_time"), case
            if status in TERMINALS:
                assert d.end_time == r.event.event_time, case
                assert not d.HasField("duration"), f"{case}: start unknown, no duration"
            else:
                assert not d.HasField("end_time"), case
            assert [x.id for x in history(stub, product_name=product).deployments] == [d.id]


# (stored status, event status, expected status, duplicate)
OPEN_CELLS = [
    (PENDING, PENDING, PENDING, True),
    (PENDING, STARTED, STARTED, False),
    (PENDING, COMPLETED, COMPLETED, False),
    (PENDING, FAILED, FAILED, False),
    (PENDING, ABORTED, ABORTED, False),
    (STARTED, PENDING, STARTED, True),  # no regress
    (STARTED, STARTED, STARTED, True),
    (STARTED, COMPLETED, COMPLETED, False),
    (STARTED, FAILED, FAILED, False),
    (STARTED, ABORTED, ABORTED, False),
]


@pytest.mark.parametrize("with_id", [False, True], ids=["by-match", "by-deployment-id"])
def test_lifecycle_table_open_deployment(stub, with_id):
    """Columns "open, PENDING" and "open, STARTED", every row."""
    for stored, event, expected, duplicate in OPEN_CELLS:
        case = f"{NAMES[stored]}-then-{NAMES[event]}"
        product = f"open-{case}"
        extra = {"deployment_id": f"d-{case}"} if with_id else {}
        first = record(stub, stored, product_name=product, event_time=ts(-60), **extra)
        before = snapshot(stub)
        second = record(stub, event, product_name=product, event_time=ts(-30), **extra)
        d = second.event.deployment
        assert second.duplicate is duplicate, case
        assert d.id == first.event.deployment.id, f"{case}: applies to the open deployment"
        assert d.status == expected, case
        listed = history(stub, product_name=product).deployments
        assert [(x.id, x.status) for x in listed] == [(d.id, expected)], case
        if duplicate:
            assert snapshot(stub) == before, f"{case}: a duplicate changes nothing"
            assert d == first.event.deployment, f"{case}: returns the stored deployment"
        else:
            assert second.event.revision == before[0] + 1, case
        if stored == STARTED:
            assert d.start_time == first.event.event_time, case
        if event == STARTED and stored == PENDING:
            assert d.start_time == second.event.event_time, case
        if expected in TERMINALS:
            assert d.end_time == second.event.event_time, case
            assert d.HasField("duration") is (stored == STARTED), case


def test_each_ci_success_without_deployment_id_is_its_own_deployment(stub):
    ids = [record(stub, COMPLETED).event.deployment.id for _ in range(3)]
    assert len(set(ids)) == 3
    listed = history(stub).deployments
    assert sorted(d.id for d in listed) == sorted(ids)
    assert all(d.status == COMPLETED for d in listed)


def test_ended_deployment_never_matches_without_deployment_id(stub):
    first = record(stub, STARTED)
    done = record(stub, FAILED)
    assert done.event.deployment.id == first.event.deployment.id
    again = record(stub, STARTED)
    assert again.event.deployment.id != first.event.deployment.id
    assert again.event.deployment.status == STARTED
    assert not again.duplicate


def test_event_matches_most_recent_open_deployment_of_same_product_version_environment(stub):
    other_version = record(stub, STARTED, version="9.9.9")
    other_env = record(stub, STARTED, environment_name="staging")
    other_product = record(stub, STARTED, product_name="other")
    mine = record(stub, PENDING)
    done = record(stub, COMPLETED)
    assert done.event.deployment.id == mine.event.deployment.id
    for r in (other_version, other_env, other_product):
        assert r.event.deployment.id != mine.event.deployment.id
    statuses = {d.id: d.status for d in history(stub).deployments}
    assert statuses[other_version.event.deployment.id] == STARTED
    assert statuses[other_env.event.deployment.id] == STARTED
    assert statuses[other_product.event.deployment.id] == STARTED


# --------------------------------------------------------------------------- deployment_id


def test_unknown_deployment_id_creates_that_deployment(stub):
    r = record(stub, STARTED, deployment_id="pipeline-77/run-3")
    assert r.event.deployment.id == "pipeline-77/run-3"
    assert [d.id for d in history(stub).deployments] == ["pipeline-77/run-3"]


@pytest.mark.parametrize(
    "change",
    [{"product_name": "other"}, {"version": "2.0.0"}, {"environment_name": "staging"}],
    ids=["product", "version", "environment"],
)
def test_deployment_id_with_other_product_version_or_environment_is_deployment_mismatch(
    stub, change
):
    record(stub, STARTED, deployment_id="d-1")
    before = snapshot(stub)
    err = rejected(stub, COMPLETED, deployment_id="d-1", **change)
    assert_precondition(err, "DEPLOYMENT_MISMATCH")
    assert snapshot(stub) == before


@pytest.mark.parametrize(
    ("ended", "other"),
    [(COMPLETED, FAILED), (FAILED, COMPLETED), (ABORTED, COMPLETED), (COMPLETED, ABORTED)],
    ids=lambda s: NAMES[s],
)
def test_other_terminal_status_on_ended_deployment_is_invalid_transition(stub, ended, other):
    record(stub, STARTED, deployment_id="d-1")
    record(stub, ended, deployment_id="d-1")
    before = snapshot(stub)
    err = rejected(stub, other, deployment_id="d-1")
    assert_precondition(err, "INVALID_TRANSITION")
    assert snapshot(stub) == before
    assert history(stub).deployments[0].status == ended


@pytest.mark.parametrize("ended", TERMINALS, ids=NAMES.get)
def test_same_terminal_status_again_is_a_duplicate(stub, ended):
    record(stub, STARTED, deployment_id="d-1", event_time=ts(-60))
    done = record(stub, ended, deployment_id="d-1", event_time=ts(-30))
    before = snapshot(stub)
    again = record(stub, ended, deployment_id="d-1", event_time=ts(-10))
    assert again.duplicate
    assert again.event.deployment == done.event.deployment
    assert snapshot(stub) == before


@pytest.mark.parametrize("late", [PENDING, STARTED], ids=NAMES.get)
def test_late_start_on_ended_deployment_fills_start_time_only(stub, late):
    done = record(stub, COMPLETED, deployment_id="d-1", event_time=ts(-30))
    assert not done.event.deployment.HasField("start_time")
    start = ts(-90)
    r = record(stub, late, deployment_id="d-1", event_time=start)
    d = r.event.deployment
    assert not r.duplicate
    assert d.status == COMPLETED, "the status never regresses"
    assert d.start_time == start
    assert d.end_time == done.event.deployment.end_time
    assert d.duration.ToMicroseconds() == us(d.end_time) - us(start)
    listed = history(stub).deployments
    assert len(listed) == 1 and listed[0].status == COMPLETED and listed[0].start_time == start
    current = stub.GetCurrent(pb.GetCurrentRequest()).states[0].current
    assert current.id == "d-1" and current.status == COMPLETED


def test_late_start_on_ended_deployment_with_known_start_is_a_duplicate(stub):
    start = ts(-90)
    record(stub, STARTED, deployment_id="d-1", event_time=start)
    record(stub, COMPLETED, deployment_id="d-1", event_time=ts(-30))
    before = snapshot(stub)
    r = record(stub, STARTED, deployment_id="d-1", event_time=ts(-120))
    assert r.duplicate
    assert r.event.deployment.start_time == start
    assert r.event.deployment.status == COMPLETED
    assert snapshot(stub) == before


# --------------------------------------------------------------------------- idempotency


def test_event_id_replay_returns_original_and_writes_nothing(stub):
    original = record(stub, STARTED, event_id="evt-1", deployed_by="alice")
    record(stub, COMPLETED, event_id="evt-2")
    before = snapshot(stub)
    replay = record(stub, STARTED, event_id="evt-1", deployed_by="alice")
    assert replay.duplicate
    assert not original.duplicate
    assert replay.event.revision == original.event.revision
    assert replay.event.event_id == "evt-1"
    assert replay.event.status == STARTED
    assert replay.event.event_time == original.event.event_time
    assert replay.event.deployment.id == original.event.deployment.id
    assert replay.event.deployment.status == STARTED, "the original result, not today's"
    assert snapshot(stub) == before


def test_event_id_replay_of_a_terminal_event_is_not_an_invalid_transition(stub):
    first = record(stub, COMPLETED, event_id="evt-ci-1")
    before = snapshot(stub)
    for _ in range(3):
        again = record(stub, COMPLETED, event_id="evt-ci-1")
        assert again.duplicate
        assert again.event.revision == first.event.revision
        assert again.event.deployment.id == first.event.deployment.id
    assert snapshot(stub) == before
    assert len(history(stub).deployments) == 1


@pytest.mark.parametrize(
    "change",
    [{"product_name": "other"}, {"version": "2.0"}, {"environment_name": "qa"}, {"status": FAILED}],
    ids=["product", "version", "environment", "status"],
)
def test_event_id_reused_for_a_different_event_is_event_id_reused(stub, change):
    record(stub, COMPLETED, event_id="evt-1")
    before = snapshot(stub)
    values = {"status": COMPLETED, "event_id": "evt-1", **change}
    err = rejected(stub, **values)
    assert_precondition(err, "EVENT_ID_REUSED")
    assert snapshot(stub) == before


# --------------------------------------------------------------------------- time


def test_status_never_regresses_on_late_events(stub):
    record(stub, STARTED, deployment_id="d-1", event_time=ts(-60))
    record(stub, COMPLETED, deployment_id="d-1", event_time=ts(-30))
    for late in (PENDING, STARTED):
        r = record(stub, late, deployment_id="d-1", event_time=ts(-90))
        assert r.event.deployment.status == COMPLETED
    assert history(stub).deployments[0].status == COMPLETED
    state = stub.GetCurrent(pb.GetCurrentRequest()).states[0]
    assert state.current.id == "d-1" and state.latest.status == COMPLETED


def test_late_pending_after_started_does_not_regress(stub):
    record(stub, STARTED, deployment_id="d-1", event_time=ts(-30))
    r = record(stub, PENDING, deployment_id="d-1", event_time=ts(-60))
    assert r.duplicate
    assert r.event.deployment.status == STARTED
    assert history(stub).deployments[0].status == STARTED


def test_late_completion_of_older_deployment_does_not_replace_newer_current(stub):
    newer = record(stub, COMPLETED, version="2.0", event_time=ts(-60))
    late = record(stub, COMPLETED, version="1.0", event_time=ts(-600))
    assert not late.duplicate
    state = stub.GetCurrent(pb.GetCurrentRequest(**_pair())).states[0]
    assert state.current.id == newer.event.deployment.id
    assert state.current.version == "2.0"
    assert state.latest.version == "2.0"
    assert {d.version for d in history(stub).deployments} == {"1.0", "2.0"}


def test_current_is_ordered_by_completion_time_not_arrival(stub):
    # B started after A but finished first; A's completion arrives later and ends later.
    a_start = record(stub, STARTED, version="1.0", deployment_id="a", event_time=ts(-300))
    record(stub, STARTED, version="2.0", deployment_id="b", event_time=ts(-200))
    record(stub, COMPLETED, version="2.0", deployment_id="b", event_time=ts(-100))
    record(stub, COMPLETED, version="1.0", deployment_id="a", event_time=ts(-50))
    state = stub.GetCurrent(pb.GetCurrentRequest(**_pair())).states[0]
    assert state.current.id == "a", "A has the latest end time"
    assert a_start.event.deployment.id == "a"


def _pair() -> dict:
    return {"product_name": SEED["product_name"], "environment_name": SEED["environment_name"]}


@pytest.mark.parametrize("ahead", [5 * 60 + 5, 3600, 10 * 365 * 86400])
def test_event_time_more_than_5_minutes_in_the_future_is_invalid_argument(stub, ahead):
    before = snapshot(stub)
    err = rejected(stub, COMPLETED, event_time=ts(ahead))
    assert_invalid(err, "event_time")
    assert snapshot(stub) == before


def test_event_time_slightly_in_the_future_is_accepted(stub):
    r = record(stub, COMPLETED, event_time=ts(4 * 60))
    assert not r.duplicate
    assert r.event.event_time.seconds > time.time()


def test_old_event_time_is_accepted_as_backfill(stub):
    long_ago = timestamp_pb2.Timestamp(seconds=1_000_000_000)
    r = record(stub, COMPLETED, event_time=long_ago)
    assert r.event.event_time == long_ago
    assert r.event.deployment.end_time == long_ago
    assert r.event.record_time.seconds >= int(time.time()) - 60


def test_event_time_defaults_to_receipt(stub):
    before = time.time()
    r = record(stub, COMPLETED)
    after = time.time()
    t = us(r.event.event_time) / 1_000_000
    assert before - 1 <= t <= after + 1


# --------------------------------------------------------------------------- version / sha


def test_different_scm_sha_for_a_bound_version_is_version_sha_mismatch(stub):
    record(stub, COMPLETED, environment_name="staging", scm_sha="aaaa1111")
    before = snapshot(stub)
    err = rejected(stub, COMPLETED, scm_sha="bbbb2222")
    assert_precondition(err, "VERSION_SHA_MISMATCH")
    assert snapshot(stub) == before


def test_same_or_empty_scm_sha_for_a_bound_version_is_accepted(stub):
    record(stub, COMPLETED, environment_name="staging", scm_sha="aaaa1111")
    assert record(stub, COMPLETED, scm_sha="aaaa1111").event.deployment.scm_sha == "aaaa1111"
    assert not record(stub, COMPLETED, environment_name="qa").duplicate
    # Another product may use the same version string with another sha.
    other = record(stub, COMPLETED, product_name="other", scm_sha="bbbb2222")
    assert other.event.deployment.scm_sha == "bbbb2222"


def test_first_non_empty_scm_sha_binds_the_version(stub):
    record(stub, COMPLETED, environment_name="dev")  # no sha yet
    record(stub, COMPLETED, environment_name="staging", scm_sha="aaaa1111")
    err = rejected(stub, COMPLETED, scm_sha="cccc3333")
    assert_precondition(err, "VERSION_SHA_MISMATCH")


# --------------------------------------------------------------------------- rollbacks


def test_redeploying_an_earlier_version_is_a_rollback(stub):
    first = record(stub, COMPLETED, version="1.0", event_time=ts(-30)).event.deployment
    second = record(stub, COMPLETED, version="1.1", event_time=ts(-20)).event.deployment
    third = record(stub, COMPLETED, version="1.0", event_time=ts(-10)).event.deployment
    assert (first.is_rollback, first.previous_version) == (False, "")
    assert (second.is_rollback, second.previous_version) == (False, "1.0")
    assert (third.is_rollback, third.previous_version) == (True, "1.1")
    stored = {d.id: d for d in history(stub).deployments}
    assert stored[third.id].is_rollback and stored[third.id].previous_version == "1.1"
    current = stub.GetCurrent(pb.GetCurrentRequest(**_pair())).states[0].current
    assert current.id == third.id and current.is_rollback


def test_fresh_version_is_not_a_rollback(stub):
    record(stub, COMPLETED, version="1.0", event_time=ts(-30))
    record(stub, COMPLETED, version="1.1", event_time=ts(-20))
    fresh = record(stub, COMPLETED, version="1.2", event_time=ts(-10)).event.deployment
    assert not fresh.is_rollback
    assert fresh.previous_version == "1.1"


def test_rollback_is_per_environment(stub):
    record(stub, COMPLETED, version="1.0", environment_name="staging", event_time=ts(-30))
    record(stub, COMPLETED, version="1.1", event_time=ts(-20))
    other_env = record(stub, COMPLETED, version="1.0", event_time=ts(-10)).event.deployment
    # 1.0 never completed in production before: not a rollback there.
    assert not other_env.is_rollback
    assert other_env.previous_version == "1.1"


def test_failed_deployment_of_an_earlier_version_is_not_a_rollback(stub):
    record(stub, COMPLETED, version="1.0", event_time=ts(-30))
    record(stub, COMPLETED, version="1.1", event_time=ts(-20))
    failed = record(stub, FAILED, version="1.0", event_time=ts(-10)).event.deployment
    assert not failed.is_rollback
    current = stub.GetCurrent(pb.GetCurrentRequest(**_pair())).states[0].current
    assert current.version == "1.1"


# --------------------------------------------------------------------------- environment type


ENVIRONMENT_TYPES = [
    ("production", pb.ENVIRONMENT_TYPE_PRODUCTION),
    ("eu-prod-1", pb.ENVIRONMENT_TYPE_PRODUCTION),
    ("pre-prod", pb.ENVIRONMENT_TYPE_STAGING),
    ("UAT", pb.ENVIRONMENT_TYPE_STAGING),
    ("qa", pb.ENVIRONMENT_TYPE_TEST),
    ("local", pb.ENVIRONMENT_TYPE_DEVELOPMENT),
    ("productionish", pb.ENVIRONMENT_TYPE_UNSPECIFIED),
]


def test_environment_type_is_inferred_on_the_deployment(stub):
    for environment, expected in ENVIRONMENT_TYPES:
        r = record(stub, COMPLETED, environment_name=environment)
        assert r.event.deployment.environment_type == expected, environment
        listed = history(stub, environment_name=environment).deployments
        assert listed[0].environment_type == expected, environment
        state = stub.GetCurrent(pb.GetCurrentRequest(environment_name=environment)).states[0]
        assert state.environment_type == expected, environment


def test_names_are_trimmed_and_case_sensitive(stub):
    a = record(stub, COMPLETED, product_name="  svc  ", environment_name=" prod ")
    b = record(stub, COMPLETED, product_name="SVC", environment_name="prod")
    assert a.event.deployment.product_name == "svc"
    assert a.event.deployment.environment_name == "prod"
    assert b.event.deployment.product_name == "SVC"
    products = {s.product_name for s in stub.GetCurrent(pb.GetCurrentRequest()).states}
    assert products == {"svc", "SVC"}


# --------------------------------------------------------------------------- bad input


BAD_REQUESTS = {
    "empty product": ({"product_name": ""}, "product_name"),
    "blank product": ({"product_name": "   "}, "product_name"),
    "long product": ({"product_name": "p" * 256}, "product_name"),
    "empty version": ({"version": ""}, "version"),
    "long version": ({"version": "1" * 101}, "version"),
    "empty environment": ({"environment_name": ""}, "environment_name"),
    "long environment": ({"environment_name": "e" * 101}, "environment_name"),
    "control char": ({"environment_name": "prod\x00uction"}, "environment_name"),
    "newline": ({"product_name": "a\nb"}, "product_name"),
    "no status": ({"status": pb.DEPLOYMENT_STATUS_UNSPECIFIED}, "status"),
    "unknown status": ({"status": 99}, "status"),
    "ftp build_url": ({"build_url": "ftp://ci.example/1"}, "build_url"),
    "js build_url": ({"build_url": "javascript:alert(1)"}, "build_url"),
    "future event_time": ({"event_time": "future"}, "event_time"),
    "big metadata": ({"extra_metadata": "big"}, "extra_metadata"),
}


def _materialize(fields: dict) -> dict:
    out = dict(fields)
    if out.get("event_time") == "future":
        out["event_time"] = ts(3600)
    if out.get("extra_metadata") == "big":
        out["extra_metadata"] = struct({"notes": "x" * (64 * 1024 + 1)})
    return out


def test_invalid_argument_names_the_field_and_writes_nothing(stub):
    record(stub, STARTED, deployment_id="existing")
    for case, (fields, field) in BAD_REQUESTS.items():
        before = snapshot(stub)
        values = {"status": COMPLETED, **_materialize(fields)}
        err = rejected(stub, **values)
        try:
            assert_invalid(err, field)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
        assert snapshot(stub) == before, f"{case}: a rejected call writes nothing"


def test_metadata_at_64_kib_is_accepted(stub):
    metadata = struct({"notes": ""})
    size = 64 * 1024 - 8  # leave room for the longer length prefixes
    metadata["notes"] = "x" * size
    metadata["notes"] = "x" * (size + 64 * 1024 - metadata.ByteSize())
    assert metadata.ByteSize() == 64 * 1024
    r = record(stub, COMPLETED, extra_metadata=metadata)
    assert r.event.deployment.extra_metadata == metadata


def test_names_at_the_exact_limits_are_accepted(stub):
    r = record(
        stub, COMPLETED, product_name="p" * 255, version="v" * 100, environment_name="e" * 100
    )
    d = r.event.deployment
    assert (len(d.product_name), len(d.version), len(d.environment_name)) == (255, 100, 100)


def test_several_violations_are_reported_together(stub):
    before = snapshot(stub)
    err = rejected(
        stub,
        pb.DEPLOYMENT_STATUS_UNSPECIFIED,
        product_name="",
        version="",
        environment_name="x" * 101,
        build_url="ftp://x",
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = details(err, error_details_pb2.BadRequest)
    fields = {v.field for v in bad.field_violations}
    assert fields >= {"status", "product_name", "version", "environment_name", "build_url"}
    assert snapshot(stub) == before


def _nasty_requests() -> list[tuple[str, pb.RecordEventRequest]]:
    base = dict(SEED, status=COMPLETED)
    cases: list[tuple[str, dict]] = [
        ("huge product", {"product_name": "p" * 1_000_000}),
        ("huge version", {"version": "v" * 100_000}),
        ("huge deployed_by", {"deployed_by": "d" * 100_000}),
        ("huge scm_branch", {"scm_branch": "b" * 100_000}),
        ("huge build_url", {"build_url": "https://x/" + "u" * 100_000}),
        ("huge event_id", {"event_id": "e" * 100_000}),
        ("huge deployment_id", {"deployment_id": "d" * 100_000}),
        ("nul product", {"product_name": "\x00"}),
        ("nul version", {"version": "1.0\x00"}),
        ("nul deployed_by", {"deployed_by": "alice\x00"}),
        ("nul scm_branch", {"scm_branch": "main\x00"}),
        ("nul event_id", {"event_id": "e\x00"}),
        ("nul deployment_id", {"deployment_id": "d\x00"}),
        ("nul scm_sha", {"scm_sha": "abc\x00"}),
        ("nul build_url", {"build_url": "https://x/\x00"}),
        ("unicode names", {"product_name": "服务-🚀", "environment_name": "prod-ü"}),
        ("rtl and combining", {"version": "\u202e1.0\u0301", "deployed_by": "\u200b"}),
        ("lone surrogate-ish", {"deployed_by": "\ufffd\ufeff"}),
        ("emoji event_id", {"event_id": "🚀"}),
        ("spaces deployment_id", {"deployment_id": "a b c"}),
        ("slashes deployment_id", {"deployment_id": "../../etc/passwd"}),
        ("sql", {"product_name": "x'; DROP TABLE deployment; --"}),
        ("sha not hex", {"scm_sha": "zzzz"}),
        ("sha too long", {"scm_sha": "a" * 10_000}),
        ("url no host", {"build_url": "https://"}),
        ("url spaces", {"build_url": "http://exa mple.com/ x"}),
        ("status 99", {"status": 99}),
        ("status -1", {"status": -1}),
        ("status huge", {"status": 2**31 - 1}),
        ("negative time", {"event_time": timestamp_pb2.Timestamp(seconds=-1)}),
        ("epoch", {"event_time": timestamp_pb2.Timestamp(seconds=0)}),
        ("year 1", {"event_time": timestamp_pb2.Timestamp(seconds=-62135596800)}),
        ("before year 1", {"event_time": timestamp_pb2.Timestamp(seconds=-(2**62))}),
        ("year 9999", {"event_time": timestamp_pb2.Timestamp(seconds=253402300799)}),
        ("huge time", {"event_time": timestamp_pb2.Timestamp(seconds=2**63 - 1)}),
        ("min time", {"event_time": timestamp_pb2.Timestamp(seconds=-(2**63))}),
        ("bad nanos", {"event_time": timestamp_pb2.Timestamp(seconds=1, nanos=-5)}),
        ("huge nanos", {"event_time": timestamp_pb2.Timestamp(seconds=1, nanos=2**31 - 1)}),
        ("huge commit time", {"scm_commit_time": timestamp_pb2.Timestamp(seconds=2**63 - 1)}),
        ("negative commit", {"scm_commit_time": timestamp_pb2.Timestamp(seconds=-(2**62))}),
        ("nan metadata", {"extra_metadata": struct({"x": float("nan")})}),
        ("inf metadata", {"extra_metadata": struct({"x": float("inf"), "y": float("-inf")})}),
        ("nul metadata key", {"extra_metadata": struct({"a\x00b": "\x00"})}),
        ("empty metadata key", {"extra_metadata": struct({"": ""})}),
        ("deep metadata", {"extra_metadata": _deep_struct(30)}),
        ("wide metadata", {"extra_metadata": struct({f"k{i}": i for i in range(2000)})}),
        ("all empty", {"product_name": "", "version": "", "environment_name": "", "status": 0}),
    ]
    return [(name, pb.RecordEventRequest(**{**base, **fields})) for name, fields in cases]


def _deep_struct(depth: int) -> struct_pb2.Struct:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return struct(value)


def test_no_client_input_yields_internal(stub):
    bad: list[str] = []
    for name, request in _nasty_requests():
        try:
            stub.RecordEvent(request, timeout=10)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                bad.append(f"{name}: {err.code().name} {err.details()}")
            elif err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert details(err, error_details_pb2.BadRequest) is not None, name
    for name, request in [
        ("list unknown status", pb.ListHistoryRequest(statuses=[99])),
        ("list nul product", pb.ListHistoryRequest(product_name="\x00")),
        ("list huge product", pb.ListHistoryRequest(product_name="p" * 1_000_000)),
        ("list huge page", pb.ListHistoryRequest(page_size=2**31 - 1)),
        ("list min page", pb.ListHistoryRequest(page_size=-(2**31))),
        ("list token garbage", pb.ListHistoryRequest(page_token="\x00\xff" * 1000)),
        ("list token b64", pb.ListHistoryRequest(page_token="AAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
        (
            "list huge since",
            pb.ListHistoryRequest(since=timestamp_pb2.Timestamp(seconds=2**63 - 1)),
        ),
        ("list min until", pb.ListHistoryRequest(until=timestamp_pb2.Timestamp(seconds=-(2**63)))),
    ]:
        try:
            stub.ListHistory(request, timeout=10)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                bad.append(f"{name}: {err.code().name} {err.details()}")
    for name, request in [
        ("current nul", pb.GetCurrentRequest(product_name="\x00", environment_name="\x01")),
        ("current huge", pb.GetCurrentRequest(environment_name="e" * 1_000_000)),
    ]:
        try:
            stub.GetCurrent(request, timeout=10)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                bad.append(f"{name}: {err.code().name} {err.details()}")
    assert not bad, "\n".join(bad)
    # And the server still works.
    assert not record(stub, COMPLETED, product_name="after-the-storm").duplicate


def test_malformed_wire_bytes_are_not_internal(server):
    """Bytes that do not parse as the request message are the client's fault too."""
    call = server.channel.unary_unary(
        "/versioner.v1.DeploymentService/RecordEvent",
        request_serializer=None,
        response_deserializer=None,
    )
    cases = {
        # field 1 (product_name), length 2, invalid UTF-8
        "invalid utf-8": b"\x0a\x02\xff\xfe",
        # field 1 claims 100 bytes, has 1
        "truncated": b"\x0a\x64a",
        "garbage": b"\xff\xff\xff\xff\xff\xff",
    }
    bad = []
    for name, raw in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            call(raw, timeout=10)
        if info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            bad.append(f"{name}: {info.value.code().name} {info.value.details()}")
    assert not bad, "\n".join(bad)
