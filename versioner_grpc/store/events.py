"""Applying one event inside the writer's transaction.

Everything an event changes is written here, together: the deployment, the
event row (with its revision), the version binding, the current-state row and
the metric projection. The caller commits; a rule violation raises before
anything is written.
"""

from __future__ import annotations

import dataclasses
import uuid

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
from versioner_grpc.store import projection
from versioner_grpc.store.codec import (
    deployment_fields,
    deployment_from_row,
    deployment_from_snapshot,
    snapshot,
)
from versioner_grpc.store.schema import Models


def apply_event(
    m: Models, inp: EventInput, now: int, revision: int, *, project_metrics: bool = True
) -> RecordResult:
    """Apply `inp`; a stored (non-duplicate) result carries `revision`."""
    replay = _replay(m, inp)
    if replay is not None:
        return replay
    binding = _check_version_binding(m, inp)
    row = _matching_row(m, inp)
    before = deployment_from_row(row) if row is not None else None
    action = decide(
        before.status if before else None,
        inp.status,
        start_known=before is None or before.start_time is not None,
    )
    if action is Action.DUPLICATE:
        assert before is not None
        if inp.event_id_given:
            m.IgnoredEvent.create(
                event_id=inp.event_id,
                deployment_id=before.id,
                product=inp.product,
                version=inp.version,
                environment=inp.environment,
                status=int(inp.status),
                event_time=inp.event_time,
                record_time=now,
            )
        return RecordResult(_unstored(inp, now, before), duplicate=True)

    after = _next_state(before, inp, action, now)
    if after.status == Status.COMPLETED and action is not Action.FILL_START:
        _set_previous_and_rollback(m, after)

    if before is None:
        m.Deployment.insert(**deployment_fields(after)).execute()
    else:
        fields = deployment_fields(after)
        del fields["id"]
        m.Deployment.update(**fields).where(m.Deployment.id == after.id).execute()
    if binding == "bind":
        m.VersionBinding.insert(
            product=inp.product, version=inp.version, scm_sha=inp.scm_sha
        ).execute()
    elif binding == "fill":
        m.VersionBinding.update(scm_sha=inp.scm_sha).where(
            (m.VersionBinding.product == inp.product) & (m.VersionBinding.version == inp.version)
        ).execute()
    _update_current_state(m, before, after, action)
    if project_metrics:
        projection.apply(m, before, after)
    m.Event.insert(
        revision=revision,
        event_id=inp.event_id,
        deployment_id=after.id,
        product=after.product,
        environment=after.environment,
        status=int(inp.status),
        event_time=inp.event_time,
        record_time=now,
        snapshot=snapshot(after),
        recorded_by=inp.recorded_by,
    ).execute()
    event = StoredEvent(
        revision, inp.event_id, inp.status, inp.event_time, now, after, inp.recorded_by
    )
    return RecordResult(event, duplicate=False)


def _unstored(inp: EventInput, now: int, deployment: Deployment) -> StoredEvent:
    return StoredEvent(0, inp.event_id, inp.status, inp.event_time, now, deployment)


def _replay(m: Models, inp: EventInput) -> RecordResult | None:
    """An event_id seen before returns its original result and writes nothing."""
    if not inp.event_id_given:
        return None
    row = m.Event.get_or_none(m.Event.event_id == inp.event_id)
    if row is not None:
        stored = deployment_from_snapshot(row.snapshot)
        _same_request(inp, stored.product, stored.version, stored.environment, row.status)
        event = StoredEvent(
            row.revision,
            row.event_id,
            Status(row.status),
            row.event_time,
            row.record_time,
            stored,
            row.recorded_by,
        )
        return RecordResult(event, duplicate=True)
    ignored = m.IgnoredEvent.get_or_none(m.IgnoredEvent.event_id == inp.event_id)
    if ignored is not None:
        _same_request(inp, ignored.product, ignored.version, ignored.environment, ignored.status)
        current = deployment_from_row(m.Deployment.get_by_id(ignored.deployment_id))
        event = StoredEvent(
            0,
            ignored.event_id,
            Status(ignored.status),
            ignored.event_time,
            ignored.record_time,
            current,
        )
        return RecordResult(event, duplicate=True)
    return None


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


def _check_version_binding(m: Models, inp: EventInput) -> str:
    """Enforce version immutability; say what to write: "bind", "fill" or ""."""
    row = m.VersionBinding.get_or_none(
        (m.VersionBinding.product == inp.product) & (m.VersionBinding.version == inp.version)
    )
    if row is None:
        return "bind"
    if not inp.scm_sha:
        return ""
    if not row.scm_sha:
        return "fill"
    if row.scm_sha != inp.scm_sha:
        raise FailedPrecondition(
            "VERSION_SHA_MISMATCH",
            f"{inp.product} {inp.version} is bound to scm_sha {row.scm_sha}, not {inp.scm_sha}",
            {"product_name": inp.product, "version": inp.version, "bound_scm_sha": row.scm_sha},
        )
    return ""


def _matching_row(m: Models, inp: EventInput):
    D = m.Deployment
    if inp.deployment_id:
        row = D.get_or_none(D.id == inp.deployment_id)
        if row is not None and (row.product, row.version, row.environment) != (
            inp.product,
            inp.version,
            inp.environment,
        ):
            raise FailedPrecondition(
                "DEPLOYMENT_MISMATCH",
                f"deployment {inp.deployment_id} is {row.product} {row.version} "
                f"in {row.environment}",
                {"deployment_id": inp.deployment_id},
            )
        return row
    return (
        D.select()
        .where(
            (D.product == inp.product)
            & (D.environment == inp.environment)
            & (D.version == inp.version)
            & (D.status << [int(Status.PENDING), int(Status.STARTED)])
        )
        .order_by(D.create_time.desc(), D.id.desc())
        .first()
    )


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


def _set_previous_and_rollback(m: Models, after: Deployment) -> None:
    """previous_version: what was current just before this completed; rollback if older."""
    D = m.Deployment
    same_place = (
        (D.product == after.product)
        & (D.environment == after.environment)
        & (D.status == int(Status.COMPLETED))
        & (D.end_time <= after.end_time)
        & (D.id != after.id)
    )
    prev = D.select(D.version).where(same_place).order_by(D.end_time.desc(), D.id.desc()).first()
    after.previous_version = prev.version if prev else ""
    after.is_rollback = bool(
        prev
        and prev.version != after.version
        and D.select(D.id).where(same_place & (D.version == after.version)).exists()
    )


def _update_current_state(
    m: Models, before: Deployment | None, after: Deployment, action: Action
) -> None:
    C = m.CurrentState
    key = (C.product == after.product) & (C.environment == after.environment)
    row = C.get_or_none(key)
    became_open = after.status.is_open and (before is None or not before.status.is_open)
    closed = before is not None and before.status.is_open and not after.status.is_open
    is_current = after.status == Status.COMPLETED and action is not Action.FILL_START
    if row is None:
        C.insert(
            product=after.product,
            environment=after.environment,
            environment_type=int(after.environment_type),
            current_id=after.id if is_current else None,
            current_end_time=after.end_time if is_current else None,
            latest_id=after.id,
            latest_create_time=after.create_time,
            in_progress=1 if became_open else 0,
        ).execute()
        return
    changes: dict = {}
    if before is None and after.create_time >= row.latest_create_time:
        changes.update(latest_id=after.id, latest_create_time=after.create_time)
    if is_current and (row.current_end_time is None or after.end_time >= row.current_end_time):
        changes.update(current_id=after.id, current_end_time=after.end_time)
    if became_open:
        changes["in_progress"] = C.in_progress + 1
    elif closed:
        changes["in_progress"] = C.in_progress - 1
    if changes:
        C.update(**changes).where(key).execute()
