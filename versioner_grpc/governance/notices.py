"""Which audit entries are notified, as which event type, and with what (DESIGN.md §7).

The audit trail is the notification engine's second event source; this is the
pure part: the mapping, the place of an entry among the events, and the
approval as an entry saw it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from versioner_grpc.domain.model import Deployment, EnvironmentType
from versioner_grpc.governance import approvals as ap
from versioner_grpc.governance import audit
from versioner_grpc.governance.approvals import Approval
from versioner_grpc.governance.audit import AuditEntry

# Audit kinds that are notified, and their event types. Not notified: a single
# decision (approval.decided: the request's outcome is), expiry, report-mode
# violations and rules reloads (§7 lists no event type for them).
GOVERNANCE_KINDS = {
    audit.DEPLOYMENT_BLOCKED: "deployment.blocked",
    audit.DEPLOYMENT_OVERRIDE: "deployment.override",
    audit.APPROVAL_REQUESTED: "approval.requested",
    audit.APPROVAL_APPROVED: "approval.approved",
    audit.APPROVAL_REJECTED: "approval.rejected",
}
_APPROVAL_STATE = {
    audit.APPROVAL_REQUESTED: ap.PENDING,
    audit.APPROVAL_APPROVED: ap.APPROVED,
    audit.APPROVAL_REJECTED: ap.REJECTED,
}


def after_revision(entry: AuditEntry) -> int:
    """The event revision an audit entry follows in commit order (0: unknown, older entry)."""
    value = entry.details.get("after_revision", 0)
    return int(value) if isinstance(value, int) else 0


@dataclass(frozen=True)
class GovernanceEvent:
    """A notified audit entry with what its message shows.

    `deployment` is the deployment an override let through (as of that event);
    `approval` is the request as it stood when the entry was written.
    """

    kind: str  # the notification event type
    entry: AuditEntry
    environment_type: EnvironmentType = EnvironmentType.UNSPECIFIED
    deployment: Deployment | None = None
    approval: Approval | None = None

    @property
    def revision(self) -> int:
        return after_revision(self.entry)


def approval_as_of(approval: Approval, entry: AuditEntry) -> Approval:
    """The request as an audit entry saw it: later decisions and states left out."""
    state = _APPROVAL_STATE.get(entry.kind, approval.state)
    decisions = tuple(d for d in approval.decisions if d.time <= entry.time)
    update_time = min(approval.update_time, entry.time)
    return replace(approval, state=state, decisions=decisions, update_time=update_time)
