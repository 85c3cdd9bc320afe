"""The core rules without a server: apply_event and the projection on in-memory
SQLite, the watch hub on a real Store (a temp SQLite file: the hub reads on
other threads, and each thread would see its own in-memory database).

These run in a few seconds; the end-to-end suites prove the same rules through
gRPC on both databases.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from versioner_grpc.domain.errors import FailedPrecondition, ResourceExhausted, Unavailable
from versioner_grpc.domain.filters import Filters
from versioner_grpc.domain.model import (
    Deployment,
    EnvironmentType,
    EventInput,
    RecordResult,
    Status,
    StoredEvent,
)
from versioner_grpc.domain.validation import validate_event
from versioner_grpc.store import current_state, projection, reads
from versioner_grpc.store.database import Database
from versioner_grpc.store.events import apply_event
from versioner_grpc.store.sql import Sql
from versioner_grpc.store.store import Store
from versioner_grpc.watch import WatchHub

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
MINUTE = 60_000_000


def event(status: Status, version: str = "1.0.0", at: int = T0, **fields: Any) -> EventInput:
    fields.setdefault("product", "shop")
    fields.setdefault("environment", "production")
    return validate_event(
        version=version, status=int(status), now=at + MINUTE, event_time=at, **fields
    )


class Core:
    """One in-memory database and the writer's part: apply events, one transaction each."""

    def __init__(self) -> None:
        self.database = Database("sqlite:///:memory:")
        self.database.migrate()
        self.sql = self.database.sql

    def apply(self, inp: EventInput) -> RecordResult:
        with self.database.write_transaction():
            revision = reads.head_revision(self.sql) + 1
            return apply_event(self.sql, inp, inp.event_time + MINUTE, revision)

    def head(self) -> int:
        return reads.head_revision(self.sql)

    def current_version(self, product: str = "shop", env: str = "production") -> str | None:
        (state,) = reads.current_states(self.sql, product, env)
        return state.current.version if state.current else None

    def counters(self, metric: str) -> dict[int, tuple[int, float]]:
        rows = reads.metric_rows(self.sql).counters
        return {status: (count, total) for _, _, m, status, count, total, _ in rows if m == metric}


@pytest.fixture
def core() -> Iterator[Core]:
    c = Core()
    yield c
    c.database.close()


# --------------------------------------------------------------------------- apply_event


def test_started_then_completed_is_one_deployment_with_its_times(core: Core) -> None:
    started = core.apply(event(Status.STARTED, at=T0))
    completed = core.apply(event(Status.COMPLETED, at=T0 + 5 * MINUTE))
    assert completed.event.deployment.id == started.event.deployment.id
    assert (started.event.revision, completed.event.revision) == (1, 2)
    d = completed.event.deployment
    assert (d.status, d.start_time, d.end_time) == (Status.COMPLETED, T0, T0 + 5 * MINUTE)
    assert core.current_version() == "1.0.0"


def test_a_replayed_event_id_returns_the_original_and_writes_nothing(core: Core) -> None:
    first = core.apply(event(Status.COMPLETED, event_id="ci-1"))
    again = core.apply(event(Status.COMPLETED, event_id="ci-1"))
    assert again.duplicate and not first.duplicate
    assert again.event.revision == first.event.revision == 1
    assert core.head() == 1


def test_an_event_id_reused_for_another_event_is_rejected(core: Core) -> None:
    core.apply(event(Status.COMPLETED, event_id="ci-1"))
    with pytest.raises(FailedPrecondition) as raised:
        core.apply(event(Status.COMPLETED, version="2.0.0", event_id="ci-1"))
    assert raised.value.reason == "EVENT_ID_REUSED"
    assert core.head() == 1


def test_a_version_stays_bound_to_its_first_sha_and_a_mismatch_writes_nothing(core: Core) -> None:
    core.apply(event(Status.COMPLETED, scm_sha="abc123"))
    with pytest.raises(FailedPrecondition) as raised:
        core.apply(event(Status.STARTED, scm_sha="def456", at=T0 + MINUTE))
    assert raised.value.reason == "VERSION_SHA_MISMATCH"
    assert core.head() == 1
    page, _ = reads.history_page(core.sql, Filters(), None, 10)
    assert len(page) == 1


def test_terminal_states_are_final(core: Core) -> None:
    done = core.apply(event(Status.COMPLETED, deployment_id="d-1"))
    with pytest.raises(FailedPrecondition) as raised:
        core.apply(event(Status.FAILED, deployment_id="d-1", at=T0 + MINUTE))
    assert raised.value.reason == "INVALID_TRANSITION"
    assert core.apply(event(Status.COMPLETED, deployment_id="d-1")).duplicate
    assert core.head() == done.event.revision


def test_an_earlier_version_completing_again_is_a_rollback(core: Core) -> None:
    core.apply(event(Status.COMPLETED, version="1.0.0", at=T0))
    core.apply(event(Status.COMPLETED, version="2.0.0", at=T0 + MINUTE))
    back = core.apply(event(Status.COMPLETED, version="1.0.0", at=T0 + 2 * MINUTE))
    d = back.event.deployment
    assert (d.previous_version, d.is_rollback) == ("2.0.0", True)
    assert core.current_version() == "1.0.0"
    assert core.counters(projection.ROLLBACKS) == {int(Status.COMPLETED): (1, 0.0)}


def test_a_late_older_completion_does_not_replace_what_runs(core: Core) -> None:
    core.apply(event(Status.COMPLETED, version="2.0.0", at=T0 + 10 * MINUTE))
    core.apply(event(Status.COMPLETED, version="1.0.0", at=T0))
    assert core.current_version() == "2.0.0"
    (state,) = reads.current_states(core.sql, "shop", "production")
    assert state.latest is not None and state.latest.version == "2.0.0"


def test_history_filters_match_the_domain_rule(core: Core) -> None:
    core.apply(event(Status.COMPLETED, version="1.0.0", at=T0))
    core.apply(event(Status.FAILED, version="1.0.1", at=T0 + MINUTE))
    core.apply(event(Status.COMPLETED, version="1.0.0", at=T0, environment="staging"))
    everything, _ = reads.history_page(core.sql, Filters(), None, 10)
    for filters in (
        Filters(statuses=frozenset({Status.FAILED})),
        Filters(environment="staging"),
        Filters(version="1.0.0", since=T0, until=T0 + MINUTE),
    ):
        page, _ = reads.history_page(core.sql, filters, None, 10)
        assert page == [d for d in everything if filters.matches(d)]
        assert page


def test_the_hubs_fast_matcher_agrees_with_the_rule() -> None:
    deployments = [
        core_deployment(product, env, status)
        for product in ("shop", "api")
        for env in ("production", "staging")
        for status in (Status.STARTED, Status.COMPLETED)
    ]
    for filters in (
        Filters(),
        Filters(product="shop"),
        Filters(environment="staging", statuses=frozenset({Status.STARTED})),
        Filters(product="api", environment="production", statuses=frozenset({Status.COMPLETED})),
        Filters(version="1.0.0", since=T0),  # not a watch filter: the general rule
    ):
        for d in deployments:
            for status in (Status.STARTED, Status.COMPLETED):
                assert filters.event_matcher(d, status) == filters.matches(d, status)
    assert sum(Filters(product="shop").matches(d) for d in deployments) == 4


def core_deployment(product: str, environment: str, status: Status) -> Deployment:
    return Deployment(
        id=f"{product}-{environment}-{int(status)}",
        product=product,
        version="1.0.0",
        environment=environment,
        environment_type=EnvironmentType.PRODUCTION,
        status=status,
        create_time=T0,
        update_time=T0,
    )


# --------------------------------------------------------------------------- projection


def test_a_terminal_deployment_counts_once_with_its_duration(core: Core) -> None:
    core.apply(event(Status.STARTED, at=T0))
    core.apply(event(Status.COMPLETED, at=T0 + 2 * MINUTE, event_id="end"))
    core.apply(event(Status.COMPLETED, at=T0 + 2 * MINUTE, event_id="end"))  # replay
    assert core.counters(projection.DEPLOYMENTS) == {int(Status.COMPLETED): (1, 0.0)}
    assert core.counters(projection.DURATION) == {int(Status.COMPLETED): (1, 120.0)}
    buckets = reads.metric_rows(core.sql).buckets
    (bucket,) = [b for _, _, m, _, b, _ in buckets if m == projection.DURATION]
    assert projection.DURATION_BUCKETS[bucket] == 120  # le="120" holds 120 s


def test_time_to_restore_runs_from_the_first_failure_to_the_next_completion(core: Core) -> None:
    core.apply(event(Status.COMPLETED, version="1.0.0", at=T0))
    core.apply(event(Status.FAILED, version="1.0.1", at=T0 + MINUTE))
    core.apply(event(Status.FAILED, version="1.0.2", at=T0 + 2 * MINUTE))
    core.apply(event(Status.COMPLETED, version="1.0.3", at=T0 + 11 * MINUTE))
    assert core.counters(projection.RESTORE) == {0: (1, 600.0)}
    assert core.counters(projection.BETWEEN) == {0: (1, 660.0)}


def test_pending_and_started_count_nothing(core: Core) -> None:
    core.apply(event(Status.PENDING))
    core.apply(event(Status.STARTED, at=T0 + MINUTE))
    assert core.counters(projection.DEPLOYMENTS) == {}
    (place,) = reads.metric_rows(core.sql).places
    assert place[3] == 1  # in progress


def test_the_projection_takes_and_returns_its_state_and_ignores_open_events(core: Core) -> None:
    started = core.apply(event(Status.STARTED, at=T0)).event.deployment
    state = projection.MetricState(last_completed_end=T0 - MINUTE, failing_since=0)
    assert projection.apply(core.sql, state, None, started) is state
    failed = core.apply(event(Status.FAILED, at=T0 + MINUTE)).event.deployment
    assert projection.apply(core.sql, state, started, failed) == projection.MetricState(
        last_completed_end=T0 - MINUTE, failing_since=T0 + MINUTE
    )


def test_the_place_row_keeps_the_projections_state_between_events(core: Core) -> None:
    core.apply(event(Status.COMPLETED, version="1.0.0", at=T0))
    core.apply(event(Status.FAILED, version="1.0.1", at=T0 + MINUTE))
    place = current_state.read(core.sql, "shop", "production")
    assert place is not None
    assert place.metrics == projection.MetricState(T0, T0 + MINUTE)
    core.apply(event(Status.COMPLETED, version="1.0.2", at=T0 + 3 * MINUTE))
    place = current_state.read(core.sql, "shop", "production")
    assert place is not None and place.metrics == projection.MetricState(T0 + 3 * MINUTE, 0)
    assert current_state.read(core.sql, "shop", "staging") is None


class CountingSql(Sql):
    """The real Sql on the same connection, keeping the text of each statement."""

    def __init__(self, sql: Sql) -> None:
        super().__init__(sql.db)
        self.texts: list[str] = []

    def row(self, text: str, params: Sequence[Any] = ()) -> Any:
        self.texts.append(text)
        return super().row(text, params)

    def run(self, text: str, params: Sequence[Any] = ()) -> int:
        self.texts.append(text)
        return super().run(text, params)


def test_an_event_reads_the_place_row_once_and_writes_only_what_changed(core: Core) -> None:
    counting = CountingSql(core.sql)
    for inp, writes in (
        (event(Status.PENDING, at=T0), "INSERT"),  # a new place
        (event(Status.STARTED, at=T0 + MINUTE), None),  # still one open: nothing to write
        (event(Status.COMPLETED, at=T0 + 2 * MINUTE), "UPDATE"),
    ):
        counting.texts.clear()
        with core.database.write_transaction():
            apply_event(counting, inp, inp.event_time, reads.head_revision(core.sql) + 1)
        touching = [t.split()[0] for t in counting.texts if "current_state" in t]
        assert touching == ["SELECT", *([writes] if writes else [])]
    assert core.current_version() == "1.0.0"


# --------------------------------------------------------------------------- watch hub


async def _with_hub(tmp: Path, body: Any, **options: Any) -> None:
    loop = asyncio.get_running_loop()
    store = Store(f"sqlite:///{tmp}/hub.db")
    await loop.run_in_executor(None, store.open)
    hub = WatchHub(store, progress_interval=60, poll_interval=60, **options)
    await hub.start()
    try:
        await asyncio.wait_for(body(store, hub), 20)
    finally:
        await hub.close()
        await loop.run_in_executor(None, store.close)


async def _take(stream: AsyncIterator[list[StoredEvent] | int], n: int) -> list[StoredEvent]:
    """The next `n` events of a hub stream (which yields batches and progress revisions)."""
    got: list[StoredEvent] = []
    async for item in stream:
        if isinstance(item, list):
            got.extend(item)
            if len(got) >= n:
                break
    assert len(got) == n, got
    return got


def test_a_watcher_gets_stored_then_live_events_in_order_without_gap_or_duplicate(
    tmp_path: Path,
) -> None:
    async def body(store: Store, hub: WatchHub) -> None:
        for i in range(3):
            await store.record(event(Status.COMPLETED, version=f"1.0.{i}", at=T0 + i))
        stream = hub.stream(Filters(), after=1)
        first = await _take(stream, 2)  # revisions 2 and 3, from the store
        for i in range(3, 6):
            await store.record(event(Status.COMPLETED, version=f"1.0.{i}", at=T0 + i))
        live = await _take(stream, 3)
        await stream.aclose()
        assert [e.revision for e in first + live] == [2, 3, 4, 5, 6]

    asyncio.run(_with_hub(tmp_path, body))


def test_a_watcher_sees_only_what_its_filters_match(tmp_path: Path) -> None:
    async def body(store: Store, hub: WatchHub) -> None:
        wanted = Filters(environment="staging", statuses=frozenset({Status.FAILED}))
        stream = hub.stream(wanted, after=0)
        await store.record(event(Status.FAILED, version="1", environment="production"))
        await store.record(event(Status.COMPLETED, version="2", environment="staging"))
        await store.record(event(Status.FAILED, version="3", environment="staging"))
        (only,) = await _take(stream, 1)
        await stream.aclose()
        assert (only.revision, only.deployment.version) == (3, "3")

    asyncio.run(_with_hub(tmp_path, body))


def test_a_watcher_that_falls_behind_is_cut_off_and_others_are_not(tmp_path: Path) -> None:
    async def body(store: Store, hub: WatchHub) -> None:
        slow = hub.stream(Filters(), after=None)
        fast = hub.stream(Filters(), after=None)
        # Register both (each waits for its first item), then let only `fast` read.
        slow_first = asyncio.ensure_future(slow.__anext__())
        fast_task = asyncio.ensure_future(_take(fast, 4))
        await asyncio.sleep(0)
        while hub.watchers < 2:
            await asyncio.sleep(0.01)
        for i in range(4):
            await store.record(event(Status.COMPLETED, version=f"2.0.{i}", at=T0 + i))
        assert [e.revision for e in await fast_task] == [1, 2, 3, 4]
        await slow_first  # its queue (2 places) overflowed meanwhile
        with pytest.raises(ResourceExhausted):
            await _take(slow, 4)
        await fast.aclose()

    asyncio.run(_with_hub(tmp_path, body, buffer=2))


def test_compacted_history_cannot_be_watched_from_before_it(tmp_path: Path) -> None:
    async def body(store: Store, hub: WatchHub) -> None:
        for i in range(3):
            await store.record(event(Status.COMPLETED, version=f"3.0.{i}", at=T0 + i))
        assert await store.compact(older_than=2**62) == 2  # keeps the newest
        with pytest.raises(FailedPrecondition) as raised:
            await _take(hub.stream(Filters(), after=0), 1)
        assert raised.value.reason == "REVISION_COMPACTED"

    asyncio.run(_with_hub(tmp_path, body))


def test_closing_the_hub_ends_streams_with_unavailable(tmp_path: Path) -> None:
    async def body(store: Store, hub: WatchHub) -> None:
        stream = hub.stream(Filters(), after=None)
        waiting = asyncio.ensure_future(_take(stream, 1))
        while hub.watchers < 1:
            await asyncio.sleep(0.01)
        await hub.close()
        with pytest.raises(Unavailable):
            await waiting

    asyncio.run(_with_hub(tmp_path, body))
