"""GetCurrent and ListHistory against a real server (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb

STARTED = pb.DEPLOYMENT_STATUS_STARTED
PENDING = pb.DEPLOYMENT_STATUS_PENDING
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
FAILED = pb.DEPLOYMENT_STATUS_FAILED
ABORTED = pb.DEPLOYMENT_STATUS_ABORTED
MINUTE = 60


@pytest.fixture
def config(config):
    """The shared config without the metrics HTTP server (not needed here; its
    shutdown polls every 0.5 s, which would dominate these tests' run time)."""
    return replace(config, metrics_listen="off")


# --------------------------------------------------------------------------- helpers

BASE = time.time() - 24 * 3600  # a fixed point yesterday: the tests place events after it


def at(minutes: float) -> timestamp_pb2.Timestamp:
    """BASE + `minutes`, at whole microseconds."""
    us = int((BASE + minutes * MINUTE) * 1_000_000)
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


def record(stub, product, environment, version="1.0", status=COMPLETED, **fields):
    request = pb.RecordEventRequest(
        product_name=product,
        environment_name=environment,
        version=version,
        status=status,
        **fields,
    )
    return stub.RecordEvent(request, timeout=10)


def record_many(
    stub, requests: list[pb.RecordEventRequest], window: int = 32
) -> list[pb.RecordEventResponse]:
    """Record with up to `window` calls in flight (gRPC futures); answers in request order."""
    out: list[pb.RecordEventResponse] = []
    for i in range(0, len(requests), window):
        futures = [stub.RecordEvent.future(r, timeout=30) for r in requests[i : i + window]]
        out += [f.result() for f in futures]
    return out


def rejected(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def assert_invalid(err: grpc.RpcError, field: str) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    status = rpc_status.from_call(err)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest"
    fields = []
    for packed in status.details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    assert field in fields, fields


def current(stub, product="", environment="") -> pb.GetCurrentResponse:
    return stub.GetCurrent(
        pb.GetCurrentRequest(product_name=product, environment_name=environment), timeout=10
    )


def pairs(response: pb.GetCurrentResponse) -> set[tuple[str, str]]:
    return {(s.product_name, s.environment_name) for s in response.states}


def list_all(stub, page_size: int, **filters) -> tuple[list[pb.Deployment], int]:
    """Every page of a query: the deployments in order and the number of pages."""
    out: list[pb.Deployment] = []
    token, pages = "", 0
    while True:
        page = stub.ListHistory(
            pb.ListHistoryRequest(page_size=page_size, page_token=token, **filters), timeout=10
        )
        pages += 1
        assert len(page.deployments) <= page_size
        out += page.deployments
        token = page.next_page_token
        if not token:
            return out, pages
        assert pages < 1000, "pagination does not end"


def ids(deployments) -> list[str]:
    return [d.id for d in deployments]


# --------------------------------------------------------------------------- GetCurrent


@pytest.fixture
def fleet(stub):
    """Two products in overlapping environments: {(product, env): deployment id}."""
    placed = {}
    for i, (product, environment) in enumerate(
        [("api", "production"), ("api", "staging"), ("web", "production"), ("web", "dev")]
    ):
        r = record(stub, product, environment, version=f"1.{i}", event_time=at(i))
        placed[(product, environment)] = r.event.deployment.id
    return placed


def test_get_current_for_one_product_answers_every_environment(stub, fleet):
    answer = current(stub, product="api")
    assert pairs(answer) == {("api", "production"), ("api", "staging")}
    for state in answer.states:
        assert state.current.id == fleet[(state.product_name, state.environment_name)]
        assert state.current.product_name == "api"


def test_get_current_for_one_environment_answers_every_product(stub, fleet):
    answer = current(stub, environment="production")
    assert pairs(answer) == {("api", "production"), ("web", "production")}
    for state in answer.states:
        assert state.current.id == fleet[(state.product_name, state.environment_name)]
        assert state.environment_type == pb.ENVIRONMENT_TYPE_PRODUCTION


def test_get_current_for_one_pair_answers_that_pair(stub, fleet):
    answer = current(stub, product="web", environment="dev")
    assert len(answer.states) == 1
    state = answer.states[0]
    assert (state.product_name, state.environment_name) == ("web", "dev")
    assert state.environment_type == pb.ENVIRONMENT_TYPE_DEVELOPMENT
    assert state.current.id == fleet[("web", "dev")]
    assert state.current.version == "1.3"
    assert state.latest.id == fleet[("web", "dev")]


def test_get_current_for_everything_answers_every_pair(stub, fleet):
    answer = current(stub)
    assert pairs(answer) == set(fleet)
    assert len(answer.states) == len(fleet)
    assert {s.current.id for s in answer.states} == set(fleet.values())


def test_get_current_of_an_unknown_pair_is_empty(stub, fleet):
    assert list(current(stub, product="nope").states) == []
    assert list(current(stub, product="api", environment="dev").states) == []


def test_current_is_last_completed_and_latest_is_any_status(stub):
    done = record(stub, "api", "production", version="1.0", event_time=at(1))
    failed = record(stub, "api", "production", version="1.1", status=FAILED, event_time=at(2))
    state = current(stub, "api", "production").states[0]
    assert state.current.id == done.event.deployment.id
    assert state.current.status == COMPLETED and state.current.version == "1.0"
    assert state.latest.id == failed.event.deployment.id
    assert state.latest.status == FAILED and state.latest.version == "1.1"

    running = record(stub, "api", "production", version="1.2", status=STARTED, event_time=at(3))
    state = current(stub, "api", "production").states[0]
    assert state.current.id == done.event.deployment.id
    assert state.latest.id == running.event.deployment.id
    assert state.latest.status == STARTED

    finished = record(stub, "api", "production", version="1.2", event_time=at(4))
    assert finished.event.deployment.id == running.event.deployment.id
    state = current(stub, "api", "production").states[0]
    assert state.current.id == running.event.deployment.id
    assert state.current.status == COMPLETED
    assert state.latest.id == running.event.deployment.id


def test_environment_with_nothing_completed_has_latest_but_no_current(stub):
    failed = record(stub, "api", "qa", status=FAILED)
    state = current(stub, "api", "qa").states[0]
    assert not state.HasField("current")
    assert state.latest.id == failed.event.deployment.id
    assert state.environment_type == pb.ENVIRONMENT_TYPE_TEST


def test_get_current_returns_the_revision_it_read_at(stub):
    before = current(stub).revision
    last = None
    for i in range(3):
        last = record(stub, "api", "production", version=f"2.{i}")
    assert last.event.revision > before
    assert current(stub).revision == last.event.revision
    assert current(stub, product="other").revision == last.event.revision


# --------------------------------------------------------------------------- ListHistory filters


@pytest.fixture
def mixed(stub):
    """A varied history; returns the responses in recording order."""
    specs = [
        ("api", "production", "1.0", COMPLETED, "alice"),
        ("api", "production", "1.1", FAILED, "bob"),
        ("api", "staging", "1.1", COMPLETED, "bob"),
        ("web", "production", "3.0", COMPLETED, "alice"),
        ("web", "staging", "3.1", FAILED, "carol"),
        ("web", "production", "3.1", ABORTED, "carol"),
        ("api", "production", "1.2", STARTED, "alice"),
        ("api", "production", "1.0", FAILED, "carol"),
    ]
    out = []
    for i, (product, environment, version, status, who) in enumerate(specs):
        r = record(
            stub, product, environment, version, status, deployed_by=who, event_time=at(10 * i)
        )
        out.append(r.event.deployment)
    return out


def _expect(stub, mixed, keep, **filters) -> None:
    expected = [d.id for d in reversed(mixed) if keep(d)]
    assert expected, "the filter must select something to be a real test"
    assert len(expected) < len(mixed), "the filter must leave something out"
    got = stub.ListHistory(pb.ListHistoryRequest(**filters), timeout=10)
    assert ids(got.deployments) == expected
    assert got.next_page_token == ""


def test_history_filters_by_product(stub, mixed):
    _expect(stub, mixed, lambda d: d.product_name == "web", product_name="web")


def test_history_filters_by_environment(stub, mixed):
    _expect(stub, mixed, lambda d: d.environment_name == "staging", environment_name="staging")


def test_history_filters_by_status(stub, mixed):
    _expect(stub, mixed, lambda d: d.status == FAILED, statuses=[FAILED])
    _expect(stub, mixed, lambda d: d.status in (FAILED, ABORTED), statuses=[FAILED, ABORTED])


def test_history_filters_by_version(stub, mixed):
    _expect(stub, mixed, lambda d: d.version == "1.1", version="1.1")


def test_history_filters_by_deployed_by(stub, mixed):
    _expect(stub, mixed, lambda d: d.deployed_by == "carol", deployed_by="carol")


def test_history_filters_combine(stub, mixed):
    _expect(
        stub,
        mixed,
        lambda d: (
            d.product_name == "api" and d.environment_name == "production" and d.status == FAILED
        ),
        product_name="api",
        environment_name="production",
        statuses=[FAILED],
    )


def test_history_filters_by_time_window(stub, mixed):
    # Deployments were created at minutes 0, 10, ..., 70: keep [20, 50).
    _expect(
        stub,
        mixed,
        lambda d: (
            at(20).ToMicroseconds() <= d.create_time.ToMicroseconds() < at(50).ToMicroseconds()
        ),
        since=at(20),
        until=at(50),
    )
    _expect(
        stub,
        mixed,
        lambda d: d.create_time.ToMicroseconds() >= at(45).ToMicroseconds(),
        since=at(45),
    )
    _expect(
        stub,
        mixed,
        lambda d: d.create_time.ToMicroseconds() < at(15).ToMicroseconds(),
        until=at(15),
    )


def test_history_is_newest_first(stub, mixed):
    got = stub.ListHistory(pb.ListHistoryRequest(), timeout=10).deployments
    assert ids(got) == [d.id for d in reversed(mixed)]
    times = [d.create_time.ToMicroseconds() for d in got]
    assert times == sorted(times, reverse=True)


def test_history_is_newest_first_by_event_time_not_arrival(stub):
    late = record(stub, "api", "production", "0.9", event_time=at(-100))
    new = record(stub, "api", "production", "1.0", event_time=at(0))
    older = record(stub, "api", "production", "0.8", event_time=at(-200))
    got = stub.ListHistory(pb.ListHistoryRequest(), timeout=10).deployments
    assert ids(got) == [r.event.deployment.id for r in (new, late, older)]


def test_history_returns_the_revision_it_read_at(stub, mixed):
    head = current(stub).revision
    assert head > 0
    assert stub.ListHistory(pb.ListHistoryRequest(), timeout=10).revision == head
    assert stub.ListHistory(pb.ListHistoryRequest(product_name="none")).revision == head


# --------------------------------------------------------------------------- pagination


def test_pagination_returns_every_deployment_exactly_once_in_order(stub):
    responses = record_many(
        stub,
        [
            pb.RecordEventRequest(
                product_name="api",
                environment_name="production",
                version=f"1.{i}",
                status=COMPLETED,
                event_time=at(i),
            )
            for i in range(25)
        ],
    )
    expected = [r.event.deployment.id for r in reversed(responses)]
    got, pages = list_all(stub, 7)
    assert ids(got) == expected
    assert pages == 4
    # Every page but the last is full.
    first = stub.ListHistory(pb.ListHistoryRequest(page_size=7), timeout=10)
    assert len(first.deployments) == 7 and first.next_page_token


def test_pagination_with_equal_create_times_returns_each_exactly_once(stub):
    same = at(5)
    responses = record_many(
        stub,
        [
            pb.RecordEventRequest(
                product_name="api",
                environment_name="production",
                version=f"1.{i}",
                status=COMPLETED,
                event_time=same,
            )
            for i in range(25)
        ],
    )
    got, pages = list_all(stub, 7)
    assert sorted(ids(got)) == sorted(r.event.deployment.id for r in responses)
    assert len(ids(got)) == len(set(ids(got))) == 25
    assert pages == 4


def test_pagination_with_filters_keeps_filtering(stub):
    requests = []
    for i in range(30):
        status = FAILED if i % 3 == 0 else COMPLETED
        requests.append(
            pb.RecordEventRequest(
                product_name="api",
                environment_name="production",
                version=f"1.{i}",
                status=status,
                event_time=at(i),
            )
        )
    responses = record_many(stub, requests)
    expected = [
        r.event.deployment.id for r in reversed(responses) if r.event.deployment.status == FAILED
    ]
    got, pages = list_all(stub, 3, statuses=[FAILED])
    assert ids(got) == expected
    assert len(expected) == 10 and pages == 4


def test_page_size_zero_means_50(stub):
    record_many(
        stub,
        [
            pb.RecordEventRequest(
                product_name="api",
                environment_name="production",
                version=f"1.{i}",
                status=COMPLETED,
                event_time=at(i),
            )
            for i in range(60)
        ],
    )
    page = stub.ListHistory(pb.ListHistoryRequest(page_size=0), timeout=10)
    assert len(page.deployments) == 50
    assert page.next_page_token
    rest = stub.ListHistory(
        pb.ListHistoryRequest(page_size=0, page_token=page.next_page_token), timeout=10
    )
    assert len(rest.deployments) == 10
    assert rest.next_page_token == ""


def test_page_size_is_capped_at_1000(stub):
    # PENDING deployments of distinct versions are the cheapest to record in bulk.
    n = 1005
    record_many(
        stub,
        [
            pb.RecordEventRequest(
                product_name="api",
                environment_name="production",
                version=f"1.{i}",
                status=PENDING,
                event_time=at(i / 100),
            )
            for i in range(n)
        ],
    )
    page = stub.ListHistory(pb.ListHistoryRequest(page_size=5000), timeout=30)
    assert len(page.deployments) == 1000
    assert page.next_page_token
    rest = stub.ListHistory(
        pb.ListHistoryRequest(page_size=5000, page_token=page.next_page_token), timeout=30
    )
    assert len(rest.deployments) == n - 1000
    assert rest.next_page_token == ""
    assert not set(ids(rest.deployments)) & set(ids(page.deployments))


def test_negative_page_size_is_invalid_argument(stub):
    err = rejected(stub.ListHistory, pb.ListHistoryRequest(page_size=-1))
    assert_invalid(err, "page_size")


def _two_pages(stub) -> str:
    record_many(
        stub,
        [
            pb.RecordEventRequest(
                product_name=product,
                environment_name="production",
                version=f"1.{i}",
                status=COMPLETED,
                event_time=at(i),
            )
            for i in range(4)
            for product in ("api", "web")
        ],
    )
    page = stub.ListHistory(pb.ListHistoryRequest(product_name="api", page_size=2), timeout=10)
    assert page.next_page_token
    return page.next_page_token


def _tampered(token: str) -> list[str]:
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    out = []
    for i in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        out.append(base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("="))
    out.append(token[:-2])  # truncated
    out.append(token + "AA")  # extended
    out.append(token[::-1])
    out.append("not-a-token")
    out.append("%%%")
    return out


def test_tampered_page_token_is_invalid_argument(stub):
    token = _two_pages(stub)
    for bad in _tampered(token):
        err = rejected(
            stub.ListHistory, pb.ListHistoryRequest(product_name="api", page_size=2, page_token=bad)
        )
        assert_invalid(err, "page_token")
    # The genuine token still works.
    ok = stub.ListHistory(
        pb.ListHistoryRequest(product_name="api", page_size=2, page_token=token), timeout=10
    )
    assert len(ok.deployments) == 2


OTHER_FILTERS = [
    {"product_name": "web"},
    {"product_name": ""},
    {"product_name": "api", "environment_name": "production"},
    {"product_name": "api", "statuses": [COMPLETED]},
    {"product_name": "api", "version": "1.0"},
    {"product_name": "api", "deployed_by": "alice"},
    {"product_name": "api", "since": timestamp_pb2.Timestamp(seconds=1)},
    {"product_name": "api", "until": timestamp_pb2.Timestamp(seconds=4_000_000_000)},
]


def test_page_token_reused_with_other_filters_is_invalid_argument(stub):
    token = _two_pages(stub)
    for other in OTHER_FILTERS:
        request = pb.ListHistoryRequest(page_size=2, page_token=token, **other)
        err = rejected(stub.ListHistory, request)
        try:
            assert_invalid(err, "page_token")
        except AssertionError as exc:
            raise AssertionError(f"{other}: {exc}") from None


def test_page_size_may_change_between_pages(stub):
    token = _two_pages(stub)
    page = stub.ListHistory(
        pb.ListHistoryRequest(product_name="api", page_size=10, page_token=token), timeout=10
    )
    assert len(page.deployments) == 2
    assert page.next_page_token == ""
