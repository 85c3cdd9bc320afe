"""Applying one event inside the writer's transaction.

Everything an event changes is written here, together: the deployment, the
event row (with its revision), the version binding, the metric projection
(projection.py) and the place's current_state row (current_state.py, which
also stores the projection's state). The caller commits; a rule violation
raises before anything is written (except a governance refusal's audit row).
Fixed SQL (see sql.py): this runs for every event.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Callable

from versioner_grpc.domain.environments import environment_type
from versioner_grpc.domain.errors import FailedPrecondition
from versioner_grpc.domain.lifecycle import Action, decide
from versioner_grpc.domain.model import (
    Deployment,
    EventInput,
    RecordResult,
    Status,
    StoredEvent,
)
from versioner_grpc.store import current_state, projection
from versioner_grpc.store.codec import (
    deployment_from_snapshot,
    deployment_from_tuple,
    deployment_tuple,
    snapshot,
)
from versioner_grpc.store.governance import Gate
from versioner_grpc.store.sql import DEPLOYMENT_COLUMNS, DEPLOYMENT_FIELDS, Sql, placeholders

_OPEN = (int(Status.PENDING), int(Status.STARTED))
# Columns an event may change on an existing deployment (the rest are fixed at creation).
_MUTABLE = tuple(
    c for c in DEPLOYMENT_FIELDS
    if c not in ("id", "product", "version", "environment", "environment_type", "create_time")
)  # fmt: skip
_INSERT_DEPLOYMENT = (
    f"INSERT INTO deployment ({DEPLOYMENT_COLUMNS}, encoded) "
    f"VALUES ({placeholders(len(DEPLOYMENT_FIELDS) + 1)})"
)
_UPDATE_DEPLOYMENT = (
    "UPDATE deployment SET "
    + ", ".join(f"{c} = ?" for c in (*_MUTABLE, "encoded"))
    + " WHERE id = ?"
)


class Binding(enum.Enum):
    """What an event writes to version_binding (the scm_sha a product's version is bound to)."""

    NONE = "none"  # already bound, or nothing to bind
    BIND = "bind"  # first time this version is seen: bind it (possibly to an empty sha)
    FILL = "fill"  # bound to no sha yet and this event carries one: fill it in


Encoder = Callable[[Deployment], bytes]
"""The deployment's wire encoding, stored beside its row (given by the server wiring:
the store knows no protobuf)."""


def apply_event(
    sql: Sql,
    inp: EventInput,
    now: int,
    revision: int,
    *,
    project_metrics: bool = True,
    gate: Gate | None = None,
    encode: Encoder | None = None,
) -> RecordResult:
    """Apply `inp`; a stored (non-duplicate) result carries `revision`.

    `gate` applies the governance rules; a refusal raises after writing only its
    audit row (see store/governance.py).
    """
    replay = _replay(sql, inp)
    if replay is not None:
        return replay
    binding = _check_version_binding(sql, inp)
    before = _matching(sql, inp)
    action = decide(
        before.status if before else None,
        inp.status,
        start_known=before is None or before.start_time is not None,
    )
    if action is Action.DUPLICATE:
        assert before is not None
        if inp.event_id_given:
            sql.run(
                "INSERT INTO ignored_event (event_id, deployment_id, product, version, "
                "environment, status, event_time, record_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (inp.event_id, before.id, inp.product, inp.version, inp.environment,
                 int(inp.status), inp.event_time, now),
            )  # fmt: skip
        return RecordResult(_unstored(inp, now, before), duplicate=True)

    clearance = gate.clear(sql, inp, before, now) if gate is not None else None
    after = _next_state(before, inp, action, now)
    if clearance is not None:
        after.approval_id = clearance.approval_id
        after.override_reason = clearance.override_reason
        after.rule_violations = clearance.violations
    if after.status == Status.COMPLETED and action is not Action.FILL_START:
        _set_previous_and_rollback(sql, after)
    row = dict(zip(DEPLOYMENT_FIELDS, deployment_tuple(after), strict=True))
    encoded = encode(after) if encode is not None else None
    if before is None:
        sql.run(_INSERT_DEPLOYMENT, (*row.values(), encoded))
    else:
        sql.run(_UPDATE_DEPLOYMENT, (*(row[c] for c in _MUTABLE), encoded, after.id))
    if binding is Binding.BIND:
        sql.run(
            "INSERT INTO version_binding (product, version, scm_sha) VALUES (?, ?, ?)",
            (inp.product, inp.version, inp.scm_sha),
        )
    elif binding is Binding.FILL:
        sql.run(
            "UPDATE version_binding SET scm_sha = ? WHERE product = ? AND version = ?",
            (inp.scm_sha, inp.product, inp.version),
        )
    place = current_state.read(sql, after.product, after.environment)
    metrics = place.metrics if place else projection.MetricState()
    if project_metrics:
        metrics = projection.apply(sql, metrics, before, after)
    current_state.write(
        sql, after, place, current_state.advance(place, before, after, action, metrics)
    )
    sql.run(
        "INSERT INTO event (revision, event_id, deployment_id, product, environment, status, "
        "event_time, record_time, snapshot, recorded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (revision, inp.event_id, after.id, after.product, after.environment, int(inp.status),
         inp.event_time, now, snapshot(after), inp.recorded_by),
    )  # fmt: skip
    event = StoredEvent(
        revision, inp.event_id, inp.status, inp.event_time, now, after, inp.recorded_by
    )
    return RecordResult(event, duplicate=False)


def _unstored(inp: EventInput, now: int, deployment: Deployment) -> StoredEvent:
    return StoredEvent(0, inp.event_id, inp.status, inp.event_time, now, deployment)


def _replay(sql: Sql, inp: EventInput) -> RecordResult | None:
    """An event_id seen before returns its original result and writes nothing."""
    if not inp.event_id_given:
        return None
    row = sql.row(
        "SELECT revision, status, event_time, record_time, snapshot, recorded_by "
        "FROM event WHERE event_id = ?",
        (inp.event_id,),
    )
    if row is not None:
        revision, status, event_time, record_time, snap, recorded_by = row
        stored = deployment_from_snapshot(snap)
        _same_request(inp, stored.product, stored.version, stored.environment, status)
        event = StoredEvent(
            revision, inp.event_id, Status(status), event_time, record_time, stored, recorded_by
        )
        return RecordResult(event, duplicate=True)
    row = sql.row(
        "SELECT deployment_id, product, version, environment, status, event_time, record_time "
        "FROM ignored_event WHERE event_id = ?",
        (inp.event_id,),
    )
    if row is None:
        return None
    deployment_id, product, version, environment, status, event_time, record_time = row
    _same_request(inp, product, version, environment, status)
    current = sql.row(f"SELECT {DEPLOYMENT_COLUMNS} FROM deployment WHERE id = ?", (deployment_id,))
    assert current is not None
    event = StoredEvent(
        0, inp.event_id, Status(status), event_time, record_time, deployment_from_tuple(current)
    )
    return RecordResult(event, duplicate=True)


def _same_request(inp: EventInput, product: str, version: str, env: str, status: int) -> None:
    if (inp.product, inp.version, inp.environment, int(inp.status)) != (
        product,
        version,
        env,
        status,
    ):
        raise FailedPrecondition(
            "EVENT_ID_REUSED",
            f"event_id {inp.event_id!r} was already used for another event "
            f"({product} {version} in {env}, {Status(status).name})",
            {"event_id": inp.event_id},
        )


def _check_version_binding(sql: Sql, inp: EventInput) -> Binding:
    """Enforce version immutability; say what to write to version_binding."""
    row = sql.row(
        "SELECT scm_sha FROM version_binding WHERE product = ? AND version = ?",
        (inp.product, inp.version),
    )
    if row is None:
        return Binding.BIND
    bound = row[0]
    if not inp.scm_sha:
        return Binding.NONE
    if not bound:
        return Binding.FILL
    if bound != inp.scm_sha:
        raise FailedPrecondition(
            "VERSION_SHA_MISMATCH",
            f"{inp.product} {inp.version} is bound to scm_sha {bound}, not {inp.scm_sha}",
            {"product_name": inp.product, "version": inp.version, "bound_scm_sha": bound},
        )
    return Binding.NONE


def _matching(sql: Sql, inp: EventInput) -> Deployment | None:
    if inp.deployment_id:
        row = sql.row(
            f"SELECT {DEPLOYMENT_COLUMNS} FROM deployment WHERE id = ?", (inp.deployment_id,)
        )
        if row is None:
            return None
        found = deployment_from_tuple(row)
        if (found.product, found.version, found.environment) != (
            inp.product,
            inp.version,
            inp.environment,
        ):
            raise FailedPrecondition(
                "DEPLOYMENT_MISMATCH",
                f"deployment {inp.deployment_id} is {found.product} {found.version} "
                f"in {found.environment}",
                {"deployment_id": inp.deployment_id},
            )
        return found
    row = sql.row(
        f"SELECT {DEPLOYMENT_COLUMNS} FROM deployment WHERE product = ? AND environment = ? "
        "AND version = ? AND status IN (?, ?) ORDER BY create_time DESC, id DESC LIMIT 1",
        (inp.product, inp.environment, inp.version, *_OPEN),
    )
    return deployment_from_tuple(row) if row else None


def _next_state(before: Deployment | None, inp: EventInput, action: Action, now: int) -> Deployment:
    if before is None:
        after = Deployment(
            id=inp.deployment_id or uuid.uuid4().hex,
            product=inp.product,
            version=inp.version,
            environment=inp.environment,
            environment_type=environment_type(inp.environment),
            status=inp.status,
            create_time=inp.event_time,
            update_time=now,
        )
    else:
        after = dataclasses.replace(before, metadata=dict(before.metadata), update_time=now)
    if action is Action.FILL_START:
        after.start_time = inp.event_time
        return after
    after.status = inp.status
    if inp.status == Status.STARTED:
        after.start_time = inp.event_time
    elif inp.status.is_terminal:
        after.end_time = inp.event_time
    # Later reports fill in or correct the details; metadata merges key by key.
    for name in ("deployed_by", "scm_branch", "scm_sha", "build_url", "scm_commit_time"):
        value = getattr(inp, name)
        if value:
            setattr(after, name, value)
    if inp.metadata:
        after.metadata.update(inp.metadata)
    return after


def _set_previous_and_rollback(sql: Sql, after: Deployment) -> None:
    """previous_version: what was current just before this completed; rollback if older."""
    place = (after.product, after.environment, int(Status.COMPLETED), after.end_time, after.id)
    prev = sql.row(
        "SELECT version FROM deployment WHERE product = ? AND environment = ? AND status = ? "
        "AND end_time <= ? AND id <> ? ORDER BY end_time DESC, id DESC LIMIT 1",
        place,
    )
    after.previous_version = prev[0] if prev else ""
    after.is_rollback = bool(
        prev
        and prev[0] != after.version
        and sql.row(
            # The unary + keeps the planner on the version index (few rows per
            # version) rather than the end-time one (every completion there).
            "SELECT 1 FROM deployment WHERE product = ? AND environment = ? AND +status = ? "
            "AND +end_time <= ? AND id <> ? AND version = ? LIMIT 1",
            (*place, after.version),
        )
    )
