"""The questions the store answers, one function each, on a consistent snapshot."""

from __future__ import annotations

from dataclasses import dataclass

from versioner_grpc.domain.model import Deployment as DeploymentValue
from versioner_grpc.domain.model import EnvironmentState, EnvironmentType, Status, StoredEvent
from versioner_grpc.domain.validation import Filters
from versioner_grpc.store.codec import deployment_from_row, deployment_from_snapshot
from versioner_grpc.store.schema import Models


def head_revision(m: Models) -> int:
    """The newest stored revision (0 for an empty store)."""
    E = m.Event
    return E.select(E.revision).order_by(E.revision.desc()).limit(1).scalar() or 0


def oldest_revision(m: Models) -> int:
    """The oldest revision still stored (0 for an empty store)."""
    E = m.Event
    return E.select(E.revision).order_by(E.revision.asc()).limit(1).scalar() or 0


def current_states(m: Models, product: str = "", environment: str = "") -> list[EnvironmentState]:
    """What runs where: one row per (product, environment) matching; a lookup, not a scan."""
    C, D = m.CurrentState, m.Deployment
    query = C.select()
    if product:
        query = query.where(C.product == product)
    if environment:
        query = query.where(C.environment == environment)
    rows = list(query.order_by(C.product, C.environment))
    ids = {i for row in rows for i in (row.current_id, row.latest_id) if i}
    by_id: dict[str, DeploymentValue] = {}
    for chunk in _chunks(sorted(ids), 500):
        for d in D.select().where(D.id << chunk):
            by_id[d.id] = deployment_from_row(d)
    return [
        EnvironmentState(
            product=row.product,
            environment=row.environment,
            environment_type=EnvironmentType(row.environment_type),
            current=by_id.get(row.current_id) if row.current_id else None,
            latest=by_id.get(row.latest_id),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class PageKey:
    """Keyset position: the last (create_time, id) a page returned."""

    create_time: int
    id: str


def history_page(
    m: Models, filters: Filters, after: PageKey | None, limit: int
) -> tuple[list[DeploymentValue], PageKey | None]:
    """Deployments newest first, after the keyset position; the key of the next page."""
    D = m.Deployment
    query = D.select()
    if filters.product:
        query = query.where(D.product == filters.product)
    if filters.environment:
        query = query.where(D.environment == filters.environment)
    if filters.statuses:
        query = query.where(D.status << sorted(int(s) for s in filters.statuses))
    if filters.version:
        query = query.where(D.version == filters.version)
    if filters.deployed_by:
        query = query.where(D.deployed_by == filters.deployed_by)
    if filters.since is not None:
        query = query.where(D.create_time >= filters.since)
    if filters.until is not None:
        query = query.where(D.create_time < filters.until)
    if after is not None:
        query = query.where(
            (D.create_time < after.create_time)
            | ((D.create_time == after.create_time) & (D.id < after.id))
        )
    rows = list(query.order_by(D.create_time.desc(), D.id.desc()).limit(limit + 1))
    page = [deployment_from_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    return page, (PageKey(page[-1].create_time, page[-1].id) if more and page else None)


def events_after(
    m: Models, revision: int, limit: int, filters: Filters | None = None
) -> list[StoredEvent]:
    """Stored events with a revision above `revision`, oldest first, matching `filters`."""
    E = m.Event
    query = E.select().where(E.revision > revision)
    if filters is not None:
        if filters.product:
            query = query.where(E.product == filters.product)
        if filters.environment:
            query = query.where(E.environment == filters.environment)
        if filters.statuses:
            query = query.where(E.status << sorted(int(s) for s in filters.statuses))
    return [
        StoredEvent(
            revision=row.revision,
            event_id=row.event_id,
            status=Status(row.status),
            event_time=row.event_time,
            record_time=row.record_time,
            deployment=deployment_from_snapshot(row.snapshot),
            recorded_by=row.recorded_by,
        )
        for row in query.order_by(E.revision).limit(limit)
    ]


def events_page(
    m: Models, after: int, limit: int, filters: Filters | None = None
) -> tuple[list[StoredEvent], int]:
    """Matching events after `after`, and the revision this page has covered.

    Covered means every matching event up to it is in this page or before it:
    the head revision when the page is not full, else the page's last revision.
    """
    events = events_after(m, after, limit, filters)
    covered = events[-1].revision if len(events) == limit else max(after, head_revision(m))
    return events, covered


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
