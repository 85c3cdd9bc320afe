"""Governance domain values → protobuf messages."""

from __future__ import annotations

from google.protobuf import duration_pb2
from versioner.v1 import governance_service_pb2 as gpb

from versioner_grpc.convert import timestamp
from versioner_grpc.governance import approvals as ap
from versioner_grpc.governance.approvals import Approval
from versioner_grpc.governance.audit import AuditEntry
from versioner_grpc.governance.rules import Outcome, Result

STATE = {
    ap.PENDING: gpb.APPROVAL_STATE_PENDING,
    ap.APPROVED: gpb.APPROVAL_STATE_APPROVED,
    ap.REJECTED: gpb.APPROVAL_STATE_REJECTED,
    ap.EXPIRED: gpb.APPROVAL_STATE_EXPIRED,
    ap.CANCELLED: gpb.APPROVAL_STATE_CANCELLED,
}
STATE_NAME = {number: name for name, number in STATE.items()}
DECISION = {
    ap.APPROVE: gpb.APPROVAL_DECISION_KIND_APPROVE,
    ap.REJECT: gpb.APPROVAL_DECISION_KIND_REJECT,
}
OUTCOME = {
    Outcome.PASS: gpb.RULE_OUTCOME_PASS,
    Outcome.BLOCK: gpb.RULE_OUTCOME_BLOCK,
    Outcome.REPORT: gpb.RULE_OUTCOME_REPORT,
}


def approval(a: Approval, now: int) -> gpb.Approval:
    return gpb.Approval(
        id=a.id,
        product_name=a.product,
        version=a.version,
        environment_name=a.environment,
        state=STATE[a.effective_state(now)],
        requested_by=a.requested_by,
        reason=a.reason,
        required_approvals=a.required_approvals,
        allow_self_approval=a.allow_self_approval,
        decisions=[
            gpb.ApprovalDecision(
                principal=d.principal,
                decision=DECISION[d.decision],
                comment=d.comment,
                time=timestamp(d.time),
            )
            for d in a.decisions
        ],
        create_time=timestamp(a.create_time),
        expire_time=timestamp(a.expire_time),
        update_time=timestamp(a.update_time),
    )


def rule_result(r: Result) -> gpb.RuleResult:
    msg = gpb.RuleResult(
        rule_name=r.rule.name,
        kind=r.rule.kind,
        mode=r.rule.mode,
        outcome=OUTCOME[r.outcome],
        message=r.message,
        reason=r.reason,
        metadata=dict(r.metadata),
    )
    if r.retry_after is not None:
        seconds, micros = divmod(r.retry_after, 1_000_000)
        msg.retry_after.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=micros * 1000))
    return msg


def audit_entry(e: AuditEntry) -> gpb.AuditEntry:
    msg = gpb.AuditEntry(
        id=e.id,
        time=timestamp(e.time),
        kind=e.kind,
        principal=e.principal,
        product_name=e.product,
        version=e.version,
        environment_name=e.environment,
        approval_id=e.approval_id,
        deployment_id=e.deployment_id,
        rule_name=e.rule_name,
    )
    msg.details.update(e.details)
    return msg
