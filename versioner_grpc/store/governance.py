"""Governance in the database: the rule gate in the event path, approvals, the audit trail.

The gate (`Gate.clear`) is the one call store/events.py makes: inside the writer's
transaction, after the lifecycle decision and before anything is written. A
refused event raises FailedPrecondition after inserting its audit row; the
writer commits the batch as usual (a refused event writes nothing else), so the
refusal and its audit row are durable together and the other events of the
batch are unaffected.

Approval writes run in their own transactions holding the same append lock as
event writes: decisions on one request are serialized across replicas (two
approvers racing never make two APPROVED transitions, and neither decision is
lost), and audit ids become visible in commit order. Governance writes happen
at human speed, so sharing that lock costs event ingestion nothing measurable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from versioner_grpc.domain.errors import FailedPrecondition, NotFound
from versioner_grpc.domain.model import Deployment, EventInput, RuleViolation, Status
from versioner_grpc.governance import approvals as ap
from versioner_grpc.governance import audit
from versioner_grpc.governance.approvals import Approval, Decision
from versioner_grpc.governance.audit import AuditEntry
from versioner_grpc.governance.rules import (
    ApprovalFact,
    ApprovalPolicy,
    Outcome,
    RuleSet,
    Target,
    Verdict,
)
from versioner_grpc.store.reads import head_revision
from versioner_grpc.store.sql import Sql

_APPROVAL_COLUMNS = (
    "id, product, version, environment, state, requested_by, reason, required_approvals, "
    "allow_self_approval, create_time, expire_time, update_time"
)
_AUDIT_COLUMNS = (
    "id, time, kind, principal, product, version, environment, approval_id, deployment_id, "
    "rule_name, details"
)


class SqlFacts:
    """rules.Facts answered from the tables, on the caller's transaction."""

    def __init__(self, sql: Sql, now: int, create_time: int) -> None:
        self.sql = sql
        self.now = now
        self.create_time = create_time

    def approvals(self, product: str, version: str, environment: str) -> list[ApprovalFact]:
        rows = self.sql.rows(
            "SELECT a.id, a.state, a.expire_time, (SELECT COUNT(*) FROM approval_decision d "
            "WHERE d.approval_id = a.id AND d.decision = ?) FROM approval a "
            "WHERE a.product = ? AND a.version = ? AND a.environment = ? AND a.state IN (?, ?) "
            "AND a.expire_time > ? ORDER BY a.create_time DESC",
            (ap.APPROVE, product, version, environment, *ap.OPEN, self.now),
        )
        return [ApprovalFact(id_, state, count, expire) for id_, state, expire, count in rows]

    def completions(self, product: str, version: str) -> list[tuple[str, int]]:
        rows = self.sql.rows(
            "SELECT environment, MIN(end_time) FROM deployment WHERE product = ? AND version = ? "
            "AND status = ? AND end_time IS NOT NULL GROUP BY environment",
            (product, version, int(Status.COMPLETED)),
        )
        return [(env, end) for env, end in rows]

    def open_deployment(self, product: str, environment: str, exclude_id: str) -> str | None:
        """Another STARTED deployment, or a PENDING one queued before this one (FIFO)."""
        value = self.sql.value(
            "SELECT id FROM deployment WHERE product = ? AND environment = ? AND id <> ? "
            "AND (status = ? OR (status = ? AND create_time < ?)) "
            "ORDER BY create_time, id LIMIT 1",
            (product, environment, exclude_id, int(Status.STARTED), int(Status.PENDING),
             self.create_time),
        )  # fmt: skip
        return str(value) if value is not None else None


@dataclass(frozen=True)
class Clearance:
    """What let an event through: recorded on the deployment."""

    approval_id: str = ""
    override_reason: str = ""
    violations: tuple[RuleViolation, ...] = ()


_PASSED = Clearance()


def gated(status: Status, before: Deployment | None) -> bool:
    """Rules bite when a deployment moves into STARTED, or completes without having started."""
    if status == Status.STARTED or status == Status.COMPLETED:
        return before is None or before.status == Status.PENDING
    return False


class Gate:
    """The rules as the writer applies them; `rules` is swapped whole on reload."""

    def __init__(
        self, rules: RuleSet, count: Callable[[str, str], None] = lambda rule, outcome: None
    ) -> None:
        self.rules = rules
        self.count = count

    def clear(
        self, sql: Sql, inp: EventInput, before: Deployment | None, now: int
    ) -> Clearance | None:
        """None: nothing to record. Raises FailedPrecondition (audited) when refused."""
        if not gated(inp.status, before):
            return None
        rules = self.rules
        if not rules.covering(inp.product, inp.environment):
            return Clearance(override_reason=inp.override_reason) if inp.override_reason else None
        target = Target(inp.product, inp.version, inp.environment, before.id if before else "")
        create_time = before.create_time if before else inp.event_time
        verdict = rules.evaluate(target, SqlFacts(sql, now, create_time), now)
        unmet = tuple(r for r in verdict.results if r.outcome is not Outcome.PASS)
        if not unmet and not inp.override_reason:  # the common case: every rule passes
            for r in verdict.results:
                self.count(r.rule.name, "pass")
            return Clearance(verdict.approval_id) if verdict.approval_id else _PASSED
        violations = tuple(
            RuleViolation(r.rule.name, r.rule.kind, r.reason, r.message) for r in unmet
        )
        where: dict[str, Any] = {
            "principal": inp.recorded_by,
            "product": inp.product,
            "version": inp.version,
            "environment": inp.environment,
            "deployment_id": before.id if before else inp.deployment_id,
        }
        event = {
            "event_id": inp.event_id,
            "status": inp.status.name,
            "deployed_by": inp.deployed_by,
        }
        if inp.override_reason:
            for r in verdict.results:
                self.count(r.rule.name, "override" if r.outcome is not Outcome.PASS else "pass")
            if unmet:
                insert_audit(
                    sql, now, audit.DEPLOYMENT_OVERRIDE, **where,
                    rule_name=unmet[0].rule.name,
                    details={**event, "override_reason": inp.override_reason,
                             "violations": _violations_json(verdict)},
                )  # fmt: skip
            return Clearance(verdict.approval_id, inp.override_reason, violations)
        for r in verdict.results:
            self.count(r.rule.name, r.outcome.value)
        blocking = verdict.blocking
        if blocking is not None:
            insert_audit(
                sql, now, audit.DEPLOYMENT_BLOCKED, **where,
                rule_name=blocking.rule.name,
                details={**event, "reason": blocking.reason, "message": blocking.message,
                         "metadata": dict(blocking.metadata),
                         "violations": _violations_json(verdict)},
            )  # fmt: skip
            raise FailedPrecondition(blocking.reason, blocking.message, blocking.metadata)
        if violations:
            insert_audit(
                sql, now, audit.RULE_REPORTED, **where,
                rule_name=violations[0].rule_name,
                details={**event, "violations": _violations_json(verdict)},
            )  # fmt: skip
        return Clearance(verdict.approval_id, "", violations)


def _violations_json(verdict: Verdict) -> list[dict[str, str]]:
    return [
        {"rule_name": r.rule.name, "kind": r.rule.kind, "outcome": r.outcome.name,
         "reason": r.reason, "message": r.message}
        for r in verdict.results if r.outcome is not Outcome.PASS
    ]  # fmt: skip


# ---------------------------------------------------------------- audit


def insert_audit(
    sql: Sql,
    now: int,
    kind: str,
    *,
    principal: str = "",
    product: str = "",
    version: str = "",
    environment: str = "",
    approval_id: str = "",
    deployment_id: str = "",
    rule_name: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    """Append one entry; call only inside a transaction holding the append lock.

    `details.after_revision` is the newest event revision when the entry was
    written (under the same lock): the entry sits between that event and the
    next one, which is how notifications interleave the two logs in commit order.
    """
    details = {**(details or {}), "after_revision": head_revision(sql)}
    sql.run(
        "INSERT INTO audit_entry (time, kind, principal, product, version, environment, "
        "approval_id, deployment_id, rule_name, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (now, kind, principal, product, version, environment, approval_id, deployment_id,
         rule_name, json.dumps(details, separators=(",", ":"), sort_keys=True)),
    )  # fmt: skip


def list_audit(
    sql: Sql,
    *,
    since: int | None,
    until: int | None,
    principal: str,
    kinds: Sequence[str],
    after_id: int,
    limit: int,
) -> tuple[list[AuditEntry], int]:
    """Entries in id order after `after_id`; the id to continue from (0 = end)."""
    where: list[str] = ["id > ?"]
    params: list[Any] = [after_id]
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    if until is not None:
        where.append("time < ?")
        params.append(until)
    if principal:
        where.append("principal = ?")
        params.append(principal)
    if kinds:
        where.append(f"kind IN ({', '.join('?' * len(kinds))})")
        params.extend(kinds)
    rows = sql.rows(
        f"SELECT {_AUDIT_COLUMNS} FROM audit_entry WHERE {' AND '.join(where)} ORDER BY id LIMIT ?",
        (*params, limit + 1),
    )
    entries = [_audit_entry(row) for row in rows[:limit]]
    return entries, entries[-1].id if len(rows) > limit else 0


def _audit_entry(row: tuple[Any, ...]) -> AuditEntry:
    (id_, time, kind, principal, product, version, environment, approval_id, deployment_id,
     rule_name, details) = row  # fmt: skip
    return AuditEntry(
        id=id_,
        time=time,
        kind=kind,
        principal=principal,
        product=product,
        version=version,
        environment=environment,
        approval_id=approval_id,
        deployment_id=deployment_id,
        rule_name=rule_name,
        details=json.loads(details) if details else {},
    )


# ---------------------------------------------------------------- approvals


def _approval(sql: Sql, row: tuple[Any, ...]) -> Approval:
    decisions = sql.rows(
        "SELECT principal, decision, comment, time FROM approval_decision WHERE approval_id = ? "
        "ORDER BY time, principal",
        (row[0],),
    )
    (id_, product, version, environment, state, requested_by, reason, required, allow_self,
     create_time, expire_time, update_time) = row  # fmt: skip
    return Approval(
        id=id_,
        product=product,
        version=version,
        environment=environment,
        state=state,
        requested_by=requested_by,
        reason=reason,
        required_approvals=required,
        allow_self_approval=bool(allow_self),
        create_time=create_time,
        expire_time=expire_time,
        update_time=update_time,
        decisions=tuple(Decision(*d) for d in decisions),
    )


def get_approval(sql: Sql, approval_id: str) -> Approval | None:
    row = sql.row(f"SELECT {_APPROVAL_COLUMNS} FROM approval WHERE id = ?", (approval_id,))
    return _approval(sql, row) if row else None


def request_approval(
    sql: Sql,
    *,
    product: str,
    version: str,
    environment: str,
    reason: str,
    principal: str,
    policy: ApprovalPolicy,
    now: int,
) -> tuple[Approval, bool]:
    """The open request for the triple, or a new one (audited); whether it is new."""
    row = sql.row(
        f"SELECT {_APPROVAL_COLUMNS} FROM approval WHERE product = ? AND version = ? "
        "AND environment = ? AND state IN (?, ?) AND expire_time > ? "
        "ORDER BY create_time DESC LIMIT 1",
        (product, version, environment, *ap.OPEN, now),
    )
    if row is not None:
        return _approval(sql, row), False
    approval_id = uuid.uuid4().hex
    expire = now + policy.ttl
    sql.run(
        f"INSERT INTO approval ({_APPROVAL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (approval_id, product, version, environment, ap.PENDING, principal, reason,
         policy.required_approvals, policy.allow_self_approval, now, expire, now),
    )  # fmt: skip
    insert_audit(
        sql, now, audit.APPROVAL_REQUESTED, principal=principal, product=product,
        version=version, environment=environment, approval_id=approval_id,
        rule_name=policy.rule_names[0],
        details={"reason": reason, "required_approvals": policy.required_approvals,
                 "expire_time": expire, "rules": list(policy.rule_names)},
    )  # fmt: skip
    found = get_approval(sql, approval_id)
    assert found is not None
    return found, True


def decide(
    sql: Sql, approval_id: str, principal: str, decision: str, comment: str, now: int
) -> Approval:
    """Record one principal's decision; the request's state follows (audited)."""
    approval = get_approval(sql, approval_id)
    if approval is None:
        raise NotFound(f"no approval request {approval_id!r}")
    state = approval.effective_state(now)
    meta = {"approval_id": approval_id, "state": state}
    if state == ap.EXPIRED:
        raise FailedPrecondition(
            "APPROVAL_EXPIRED",
            f"approval request {approval_id} expired; request a new one",
            meta,
        )
    if state != ap.PENDING:
        raise FailedPrecondition(
            "APPROVAL_NOT_PENDING",
            f"approval request {approval_id} is already {state}; nothing left to decide",
            meta,
        )
    if any(d.principal == principal for d in approval.decisions):
        raise FailedPrecondition(
            "ALREADY_DECIDED",
            f"{principal!r} already decided on approval request {approval_id}",
            {**meta, "principal": principal},
        )
    self_approval = decision == ap.APPROVE and principal == approval.requested_by
    if self_approval and not approval.allow_self_approval:
        raise FailedPrecondition(
            "SELF_APPROVAL",
            f"{principal!r} requested {approval_id} and cannot approve it; ask someone else",
            {**meta, "principal": principal},
        )
    sql.run(
        "INSERT INTO approval_decision (approval_id, principal, decision, comment, time) "
        "VALUES (?, ?, ?, ?, ?)",
        (approval_id, principal, decision, comment, now),
    )
    where: dict[str, Any] = {
        "principal": principal,
        "product": approval.product,
        "version": approval.version,
        "environment": approval.environment,
        "approval_id": approval_id,
    }
    insert_audit(
        sql, now, audit.APPROVAL_DECIDED, **where,
        details={"decision": decision, "comment": comment},
    )  # fmt: skip
    approvals = approval.approvals + (decision == ap.APPROVE)
    new_state = ap.PENDING
    if decision == ap.REJECT:
        new_state = ap.REJECTED
    elif approvals >= approval.required_approvals:
        new_state = ap.APPROVED
    if new_state != ap.PENDING:
        # The state guard makes a lost race visible instead of a second transition.
        changed = sql.run(
            "UPDATE approval SET state = ?, update_time = ? WHERE id = ? AND state = ?",
            (new_state, now, approval_id, ap.PENDING),
        )
        if changed != 1:
            raise FailedPrecondition(
                "APPROVAL_NOT_PENDING", f"approval request {approval_id} changed meanwhile", meta
            )
        kind = audit.APPROVAL_APPROVED if new_state == ap.APPROVED else audit.APPROVAL_REJECTED
        insert_audit(
            sql, now, kind, **where,
            details={"approvals": approvals, "required_approvals": approval.required_approvals,
                     "wait_seconds": (now - approval.create_time) / 1e6},
        )  # fmt: skip
    found = get_approval(sql, approval_id)
    assert found is not None
    return found


def list_approvals(
    sql: Sql,
    *,
    product: str,
    environment: str,
    states: Sequence[str],
    after: tuple[int, str] | None,
    limit: int,
    now: int,
) -> tuple[list[Approval], tuple[int, str] | None]:
    """Newest first, keyset-paged on (create_time, id); states as effective states."""
    where: list[str] = []
    params: list[Any] = []
    if product:
        where.append("product = ?")
        params.append(product)
    if environment:
        where.append("environment = ?")
        params.append(environment)
    if states:
        clauses = []
        for state in states:
            if state in ap.OPEN:
                clauses.append("(state = ? AND expire_time > ?)")
                params.extend((state, now))
            elif state == ap.EXPIRED:
                clauses.append("(state = ? OR (state IN (?, ?) AND expire_time <= ?))")
                params.extend((ap.EXPIRED, *ap.OPEN, now))
            else:
                clauses.append("state = ?")
                params.append(state)
        where.append("(" + " OR ".join(clauses) + ")")
    if after is not None:
        where.append("(create_time < ? OR (create_time = ? AND id < ?))")
        params.extend((after[0], after[0], after[1]))
    text = f"SELECT {_APPROVAL_COLUMNS} FROM approval"
    if where:
        text += " WHERE " + " AND ".join(where)
    rows = sql.rows(text + " ORDER BY create_time DESC, id DESC LIMIT ?", (*params, limit + 1))
    page = [_approval(sql, row) for row in rows[:limit]]
    next_key = (page[-1].create_time, page[-1].id) if len(rows) > limit else None
    return page, next_key


def expire_due(sql: Sql, now: int) -> int:
    """Mark open requests past their expire time EXPIRED (audited); return how many."""
    rows = sql.rows(
        "SELECT id, product, version, environment FROM approval "
        "WHERE state IN (?, ?) AND expire_time <= ?",
        (*ap.OPEN, now),
    )
    for approval_id, product, version, environment in rows:
        sql.run(
            "UPDATE approval SET state = ?, update_time = ? WHERE id = ?",
            (ap.EXPIRED, now, approval_id),
        )
        insert_audit(
            sql, now, audit.APPROVAL_EXPIRED, product=product, version=version,
            environment=environment, approval_id=approval_id,
        )  # fmt: skip
    return len(rows)


def pending_summary(sql: Sql, now: int) -> tuple[int, int | None]:
    """How many requests are pending (unexpired), and the oldest one's create time."""
    row = sql.row(
        "SELECT COUNT(*), MIN(create_time) FROM approval WHERE state = ? AND expire_time > ?",
        (ap.PENDING, now),
    )
    assert row is not None
    return int(row[0]), row[1]
