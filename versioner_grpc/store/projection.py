"""The metric projection: counters and histogram buckets kept beside the events.

Written in the event's transaction, read by the Prometheus collector at scrape
time. So the numbers survive restarts, count a replayed event once, include
late events, and every replica on one database exports the same values.
"""

from __future__ import annotations

import bisect
import dataclasses

from versioner_grpc.domain.model import Deployment, Status
from versioner_grpc.store.sql import Sql

US = 1_000_000
# Upper bounds in seconds. Deployments take seconds to hours.
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400)
# Gaps between deployments, lead times and restores take minutes to weeks.
INTERVAL_BUCKETS = (
    60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400,
    7 * 86400, 14 * 86400, 30 * 86400,
)  # fmt: skip

DEPLOYMENTS = "deployments"
ROLLBACKS = "rollbacks"
DURATION = "duration"
BETWEEN = "time_between"
LEAD_TIME = "lead_time"
RESTORE = "time_to_restore"
BUCKETS = {
    DURATION: DURATION_BUCKETS,
    BETWEEN: INTERVAL_BUCKETS,
    LEAD_TIME: INTERVAL_BUCKETS,
    RESTORE: INTERVAL_BUCKETS,
}


@dataclasses.dataclass(slots=True)  # a value, never changed; not frozen: built on every event
class MetricState:
    """What the projection remembers of one place between events.

    Stored on the place's current_state row (store/current_state.py); the
    projection reads and returns it and knows nothing of that table.
    """

    last_completed_end: int = 0  # end time of the newest completion, 0 if none yet
    failing_since: int = 0  # first failure after that completion, 0 if none


def apply(
    sql: Sql, state: MetricState, before: Deployment | None, after: Deployment
) -> MetricState:
    """Project one applied event onto the metric tables; return the place's new state.

    Only a deployment's arrival at a terminal state counts. The time between
    deployments counts completions in end-time order (a late, older completion
    adds no interval); time to restore runs from the first failure after the
    last completion to the next completion.
    """
    if not after.status.is_terminal or (before is not None and before.status.is_terminal):
        return state
    assert after.end_time is not None
    where = (after.product, after.environment)
    _bump(sql, *where, DEPLOYMENTS, after.status, last=after.end_time)
    if after.duration is not None:
        _observe(sql, *where, DURATION, after.status, after.duration / US)
    if after.status == Status.FAILED:
        first_failure = not state.failing_since or after.end_time < state.failing_since
        if first_failure and after.end_time > state.last_completed_end:
            return MetricState(state.last_completed_end, failing_since=after.end_time)
        return state
    if after.status != Status.COMPLETED:
        return state
    if after.is_rollback:
        _bump(sql, *where, ROLLBACKS, Status.COMPLETED)
    last = state.last_completed_end
    if after.end_time >= last:
        if last:
            _observe(sql, *where, BETWEEN, Status.UNSPECIFIED, (after.end_time - last) / US)
        failing_since = state.failing_since
        if failing_since and after.end_time >= failing_since:
            restore = (after.end_time - failing_since) / US
            _observe(sql, *where, RESTORE, Status.UNSPECIFIED, restore)
            failing_since = 0
        state = MetricState(last_completed_end=after.end_time, failing_since=failing_since)
    if after.scm_commit_time is not None and after.scm_commit_time <= after.end_time:
        lead = (after.end_time - after.scm_commit_time) / US
        _observe(sql, *where, LEAD_TIME, Status.UNSPECIFIED, lead)
    return state


def _bump(
    sql: Sql,
    product: str,
    env: str,
    metric: str,
    status: Status,
    *,
    value: float = 0.0,
    last: int = 0,
) -> None:
    sql.run(
        "INSERT INTO metric_counter (product, environment, metric, status, count, sum, last) "
        "VALUES (?, ?, ?, ?, 1, ?, ?) "
        "ON CONFLICT (product, environment, metric, status) DO UPDATE SET "
        "count = metric_counter.count + 1, sum = metric_counter.sum + excluded.sum, "
        f"last = {sql.greatest}(metric_counter.last, excluded.last)",
        (product, env, metric, int(status), value, last),
    )


def _observe(sql: Sql, product: str, env: str, metric: str, status: Status, seconds: float) -> None:
    _bump(sql, product, env, metric, status, value=seconds)
    bucket = bisect.bisect_left(BUCKETS[metric], seconds)  # index == len(bounds): +Inf
    sql.run(
        "INSERT INTO metric_bucket (product, environment, metric, status, bucket, count) "
        "VALUES (?, ?, ?, ?, ?, 1) "
        "ON CONFLICT (product, environment, metric, status, bucket) DO UPDATE SET "
        "count = metric_bucket.count + 1",
        (product, env, metric, int(status), bucket),
    )
