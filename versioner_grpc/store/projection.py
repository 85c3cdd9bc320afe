"""The metric projection: counters and histogram buckets kept beside the events.

Written in the event's transaction, read by the Prometheus collector at scrape
time. So the numbers survive restarts, count a replayed event once, include
late events, and every replica on one database exports the same values.
"""

from __future__ import annotations

import bisect

import peewee as pw

from versioner_grpc.domain.model import Deployment, Status
from versioner_grpc.store.schema import Models

US = 1_000_000
# Upper bounds in seconds. Deployments take seconds to hours.
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
# Gaps between deployments, lead times and restores take minutes to weeks.
INTERVAL_BUCKETS = (
    60,
    300,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    30 * 86400,
)

# metric name → bucket bounds (None: a plain counter)
DEPLOYMENTS = "deployments"
ROLLBACKS = "rollbacks"
DURATION = "duration"
BETWEEN = "time_between"
LEAD_TIME = "lead_time"
RESTORE = "time_to_restore"
LAST_COMPLETED = "last_completed"  # state: end time of the newest completion
FAILING_SINCE = "failing_since"  # state: first failure since the last completion
BUCKETS = {
    DURATION: DURATION_BUCKETS,
    BETWEEN: INTERVAL_BUCKETS,
    LEAD_TIME: INTERVAL_BUCKETS,
    RESTORE: INTERVAL_BUCKETS,
}


def apply(m: Models, before: Deployment | None, after: Deployment) -> None:
    """Project one applied event: only a deployment's arrival at a terminal state counts."""
    if not after.status.is_terminal or (before is not None and before.status.is_terminal):
        return
    assert after.end_time is not None
    where = (after.product, after.environment)
    _bump(m, *where, DEPLOYMENTS, after.status, last=after.end_time)
    if after.duration is not None:
        _observe(m, *where, DURATION, after.status, after.duration / US)
    if after.status == Status.FAILED:
        since = _state(m, *where, FAILING_SINCE)
        if since == 0:
            _set_state(m, *where, FAILING_SINCE, after.end_time)
        return
    if after.status != Status.COMPLETED:
        return
    if after.is_rollback:
        _bump(m, *where, ROLLBACKS, Status.COMPLETED)
    last = _state(m, *where, LAST_COMPLETED)
    if after.end_time >= last:
        if last:
            _observe(m, *where, BETWEEN, Status.UNSPECIFIED, (after.end_time - last) / US)
        _set_state(m, *where, LAST_COMPLETED, after.end_time)
    failing_since = _state(m, *where, FAILING_SINCE)
    if failing_since and after.end_time >= failing_since:
        _observe(m, *where, RESTORE, Status.UNSPECIFIED, (after.end_time - failing_since) / US)
        _set_state(m, *where, FAILING_SINCE, 0)
    if after.scm_commit_time is not None and after.scm_commit_time <= after.end_time:
        lead = (after.end_time - after.scm_commit_time) / US
        _observe(m, *where, LEAD_TIME, Status.UNSPECIFIED, lead)


def _bump(
    m: Models,
    product: str,
    env: str,
    metric: str,
    status: Status,
    *,
    value: float = 0.0,
    last: int = 0,
) -> None:
    C = m.MetricCounter
    C.insert(
        product=product,
        environment=env,
        metric=metric,
        status=int(status),
        count=1,
        sum=value,
        last=last,
    ).on_conflict(
        conflict_target=[C.product, C.environment, C.metric, C.status],
        update={C.count: C.count + 1, C.sum: C.sum + value, C.last: pw_max(m, C.last, last)},
    ).execute()


def pw_max(m: Models, column: pw.Field, value: int) -> pw.Node:
    """max(column, value) in SQL: MAX() on SQLite, GREATEST() on PostgreSQL."""
    if isinstance(m.MetricCounter._meta.database, pw.PostgresqlDatabase):
        return pw.fn.GREATEST(column, value)
    return pw.fn.MAX(column, value)


def _observe(
    m: Models, product: str, env: str, metric: str, status: Status, seconds: float
) -> None:
    _bump(m, product, env, metric, status, value=seconds)
    bucket = bisect.bisect_left(BUCKETS[metric], seconds)  # index == len(bounds): +Inf
    B = m.MetricBucket
    B.insert(
        product=product, environment=env, metric=metric, status=int(status), bucket=bucket, count=1
    ).on_conflict(
        conflict_target=[B.product, B.environment, B.metric, B.status, B.bucket],
        update={B.count: B.count + 1},
    ).execute()


def _state(m: Models, product: str, env: str, metric: str) -> int:
    C = m.MetricCounter
    row = C.get_or_none(
        (C.product == product) & (C.environment == env) & (C.metric == metric) & (C.status == 0)
    )
    return row.last if row else 0


def _set_state(m: Models, product: str, env: str, metric: str, value: int) -> None:
    C = m.MetricCounter
    C.insert(
        product=product, environment=env, metric=metric, status=0, count=0, sum=0, last=value
    ).on_conflict(
        conflict_target=[C.product, C.environment, C.metric, C.status],
        update={C.last: value},
    ).execute()
