"""The current_state row of a place, the one module that reads and writes it.

A *place* is one product in one environment (product x environment): the unit
GetCurrent answers for, and the key of the current_state table. Its row says
what runs there (current: the newest completion by end time), what was tried
last (latest: the newest deployment by create time), how many deployments are
open, and the metric projection's state (projection.MetricState). Each event
reads the row once and writes what changed in one statement, in the event's
transaction (store/events.py).
"""

from __future__ import annotations

import dataclasses
import functools
import operator

from versioner_grpc.domain.lifecycle import Action
from versioner_grpc.domain.model import Deployment, Status
from versioner_grpc.store.projection import MetricState
from versioner_grpc.store.sql import Sql, placeholders


@dataclasses.dataclass(slots=True)  # a value, never changed; not frozen: built on every event
class PlaceState:
    """One place's current_state row (its key aside); a new place starts from the defaults."""

    current_id: str | None = None
    current_end_time: int | None = None
    latest_id: str = ""
    latest_create_time: int = 0
    in_progress: int = 0
    last_completed_end: int = 0
    failing_since: int = 0

    @property
    def metrics(self) -> MetricState:
        return MetricState(self.last_completed_end, self.failing_since)


COLUMNS = tuple(f.name for f in dataclasses.fields(PlaceState))
"""The current_state columns an event keeps, named by PlaceState's fields (a test
checks them against the Peewee model)."""
_values = operator.attrgetter(*COLUMNS)  # a PlaceState's values in COLUMNS order
_KEY = ("product", "environment")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM current_state WHERE product = ? AND environment = ?"
_INSERT = (
    f"INSERT INTO current_state ({', '.join((*_KEY, 'environment_type', *COLUMNS))}) "
    f"VALUES ({placeholders(len(_KEY) + 1 + len(COLUMNS))})"
)


def read(sql: Sql, product: str, environment: str) -> PlaceState | None:
    """The place's row as it stands, None for a place not seen before."""
    row = sql.row(_SELECT, (product, environment))
    return PlaceState(*row) if row else None  # COLUMNS is the fields' order


def advance(
    place: PlaceState | None,
    before: Deployment | None,
    after: Deployment,
    action: Action,
    metrics: MetricState,
) -> PlaceState:
    """The row after one applied event (pure): current, latest, in-progress and `metrics`."""
    state = place or PlaceState()
    latest_id, latest_create_time = state.latest_id, state.latest_create_time
    if before is None and (place is None or after.create_time >= latest_create_time):
        latest_id, latest_create_time = after.id, after.create_time
    current_id, current_end_time = state.current_id, state.current_end_time
    is_current = after.status == Status.COMPLETED and action is not Action.FILL_START
    if is_current and (current_end_time is None or (after.end_time or 0) >= current_end_time):
        current_id, current_end_time = after.id, after.end_time
    in_progress = state.in_progress
    if after.status.is_open and (before is None or not before.status.is_open):
        in_progress += 1  # became open
    elif before is not None and before.status.is_open and not after.status.is_open:
        in_progress -= 1  # closed
    return PlaceState(
        current_id=current_id,
        current_end_time=current_end_time,
        latest_id=latest_id,
        latest_create_time=latest_create_time,
        in_progress=in_progress,
        last_completed_end=metrics.last_completed_end,
        failing_since=metrics.failing_since,
    )


def write(sql: Sql, after: Deployment, place: PlaceState | None, new: PlaceState) -> None:
    """Store `new` as the row of `after`'s place: one INSERT for a new place, else one
    UPDATE of the columns that differ from `place` (none: no statement)."""
    values = _values(new)
    if place is None:
        sql.run(_INSERT, (after.product, after.environment, int(after.environment_type), *values))
        return
    changed = tuple(
        i for i, (old, value) in enumerate(zip(_values(place), values, strict=True)) if old != value
    )
    if changed:
        params = (*(values[i] for i in changed), after.product, after.environment)
        sql.run(_update(changed), params)


@functools.cache
def _update(changed: tuple[int, ...]) -> str:
    """The UPDATE of the columns at indexes `changed` (at most 2**7 texts, built once each)."""
    assignments = ", ".join(f"{COLUMNS[i]} = ?" for i in changed)
    return f"UPDATE current_state SET {assignments} WHERE product = ? AND environment = ?"
