"""The questions the store answers, one function each, run inside one snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from versioner_grpc.domain.filters import Filters, PageKey
from versioner_grpc.domain.model import (
    Deployment,
    EnvironmentType,
    Status,
    Stored,
    StoredEvent,
    StoredState,
)
from versioner_grpc.store.codec import deployment_from_snapshot, deployment_from_tuple
from versioner_grpc.store.sql import DEPLOYMENT_COLUMNS, Sql


def head_revision(sql: Sql) -> int:
    """The newest stored revision (0 for an empty store)."""
    return sql.value("SELECT revision FROM event ORDER BY revision DESC LIMIT 1") or 0


def oldest_revision(sql: Sql) -> int:
    """The oldest revision still stored (0 for an empty store)."""
    return sql.value("SELECT revision FROM event ORDER BY revision ASC LIMIT 1") or 0


def _stored(sql: Sql, rows: list[tuple[str, Any]]) -> dict[str, Stored]:
    """(id, encoded) rows by id; the rows without an encoding converted from their columns."""
    found: dict[str, Stored] = {}
    missing = []
    for id_, encoded in rows:
        if encoded is None:
            missing.append(id_)
        else:
            found[id_] = bytes(encoded)  # psycopg2 returns a memoryview
    for start in range(0, len(missing), 500):
        chunk = missing[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in sql.rows(
            f"SELECT {DEPLOYMENT_COLUMNS} FROM deployment WHERE id IN ({marks})", chunk
        ):
            found[row[0]] = deployment_from_tuple(row)
    return found


def current_states(sql: Sql, product: str = "", environment: str = "") -> list[StoredState]:
    """What runs where: one row per (product, environment) matching; a lookup, not a scan."""
    where, params = _where(Filters(product, environment), _FILTERABLE_PLACE, times=False)
    rows = sql.rows(
        "SELECT product, environment, environment_type, current_id, latest_id "
        "FROM current_state" + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY product, environment",
        params,
    )  # fmt: skip
    ids = sorted({i for row in rows for i in (row[3], row[4]) if i})
    encoded: list[tuple[str, Any]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        encoded += sql.rows(f"SELECT id, encoded FROM deployment WHERE id IN ({marks})", chunk)
    by_id = _stored(sql, encoded)
    return [
        StoredState(
            product=p,
            environment=e,
            environment_type=EnvironmentType(t),
            current=by_id.get(current_id) if current_id else None,
            latest=by_id.get(latest_id),
        )
        for p, e, t, current_id, latest_id in rows
    ]


def deployment_by_id(sql: Sql, deployment_id: str) -> Deployment | None:
    """One deployment by its id (a primary-key lookup), or None."""
    row = sql.row(f"SELECT {DEPLOYMENT_COLUMNS} FROM deployment WHERE id = ?", [deployment_id])
    return deployment_from_tuple(row) if row else None


def history_page(
    sql: Sql, filters: Filters, after: PageKey | None, limit: int
) -> tuple[list[Stored], PageKey | None]:
    """Deployments newest first, after the keyset position; the key of the next page."""
    where, params = _where(filters, _FILTERABLE_DEPLOYMENT, times=True)
    if after is not None:
        where.append("(create_time < ? OR (create_time = ? AND id < ?))")
        params += [after.create_time, after.create_time, after.id]
    rows = sql.rows(
        "SELECT id, encoded, create_time FROM deployment"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY create_time DESC, id DESC LIMIT ?",
        [*params, limit + 1],
    )
    kept = rows[:limit]
    by_id = _stored(sql, [(id_, encoded) for id_, encoded, _ in kept])
    page = [by_id[id_] for id_, _, _ in kept]
    more = len(rows) > limit
    return page, (PageKey(kept[-1][2], kept[-1][0]) if more and kept else None)


# Columns each table has for the Filters criteria (each also has a status: the
# event's own on event rows); current_state rows are places, product x environment.
_FILTERABLE_DEPLOYMENT = {"product", "environment", "version", "deployed_by"}
_FILTERABLE_EVENT = {"product", "environment"}
_FILTERABLE_PLACE = {"product", "environment"}


def _where(filters: Filters, columns: set[str], times: bool) -> tuple[list[str], list[Any]]:
    """SQL for `Filters.matches` over a table with `columns` (and create_time if `times`)."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in filters.equalities().items():
        if column not in columns:
            raise ValueError(f"cannot filter this table by {column}")
        where.append(f"{column} = ?")
        params.append(value)
    if filters.statuses:
        where.append(f"status IN ({', '.join('?' * len(filters.statuses))})")
        params += sorted(int(s) for s in filters.statuses)
    if (filters.since is not None or filters.until is not None) and not times:
        raise ValueError("cannot filter this table by time")
    if filters.since is not None:
        where.append("create_time >= ?")
        params.append(filters.since)
    if filters.until is not None:
        where.append("create_time < ?")
        params.append(filters.until)
    return where, params


def events_after(
    sql: Sql, revision: int, limit: int, filters: Filters | None = None
) -> list[StoredEvent]:
    """Stored events with a revision above `revision`, oldest first, matching `filters`."""
    where: list[str] = ["revision > ?"]
    params: list[Any] = [revision]
    if filters is not None:
        more, more_params = _where(filters, _FILTERABLE_EVENT, times=False)
        where += more
        params += more_params
    rows = sql.rows(
        "SELECT revision, event_id, status, event_time, record_time, snapshot, recorded_by "
        f"FROM event WHERE {' AND '.join(where)} ORDER BY revision LIMIT ?",
        [*params, limit],
    )
    return [
        StoredEvent(
            revision=revision_,
            event_id=event_id,
            status=Status(status),
            event_time=event_time,
            record_time=record_time,
            deployment=deployment_from_snapshot(snap),
            recorded_by=recorded_by,
        )
        for revision_, event_id, status, event_time, record_time, snap, recorded_by in rows
    ]


def events_page(
    sql: Sql, after: int, limit: int, filters: Filters | None = None
) -> tuple[list[StoredEvent], int]:
    """Matching events after `after`, and the revision this page has covered.

    Covered means every matching event up to it is in this page or before it:
    the head revision when the page is not full, else the page's last revision.
    """
    events = events_after(sql, after, limit, filters)
    covered = events[-1].revision if len(events) == limit else max(after, head_revision(sql))
    return events, covered


@dataclass(frozen=True)
class MetricRows:
    """The metric projection at one revision, as the exposition renders it.

    counters: (product, environment, metric, status, count, sum, last);
    buckets: (product, environment, metric, status, bucket, count);
    places: (product, environment, environment_type, in_progress, current version or None).
    """

    revision: int
    counters: list[tuple[str, str, str, int, int, float, int]]
    buckets: list[tuple[str, str, str, int, int, int]]
    places: list[tuple[str, str, int, int, str | None]]


def metric_rows(sql: Sql) -> MetricRows:
    """Everything the deployment metrics are rendered from (run inside one snapshot)."""
    return MetricRows(
        revision=head_revision(sql),
        counters=sql.rows(
            "SELECT product, environment, metric, status, count, sum, last FROM metric_counter"
        ),
        buckets=sql.rows(
            "SELECT product, environment, metric, status, bucket, count FROM metric_bucket"
        ),
        places=sql.rows(
            "SELECT s.product, s.environment, s.environment_type, s.in_progress, d.version "
            "FROM current_state s LEFT JOIN deployment d ON d.id = s.current_id "
            "ORDER BY s.product, s.environment"
        ),
    )
