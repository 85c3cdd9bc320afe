"""Approval requests as domain values, and the pure parts of their state machine."""

from __future__ import annotations

from dataclasses import dataclass

PENDING = "PENDING"
APPROVED = "APPROVED"
REJECTED = "REJECTED"
EXPIRED = "EXPIRED"
CANCELLED = "CANCELLED"
STATES = (PENDING, APPROVED, REJECTED, EXPIRED, CANCELLED)
OPEN = (PENDING, APPROVED)
APPROVE = "APPROVE"
REJECT = "REJECT"


@dataclass(frozen=True)
class Decision:
    principal: str
    decision: str  # APPROVE or REJECT
    comment: str
    time: int


@dataclass(frozen=True)
class Approval:
    id: str
    product: str
    version: str
    environment: str
    state: str
    requested_by: str
    reason: str
    required_approvals: int
    allow_self_approval: bool
    create_time: int
    expire_time: int
    update_time: int
    decisions: tuple[Decision, ...] = ()

    def effective_state(self, now: int) -> str:
        """EXPIRED once an open request passes its expire time, stored or not."""
        if self.state in OPEN and self.expire_time <= now:
            return EXPIRED
        return self.state

    @property
    def approvals(self) -> int:
        return sum(1 for d in self.decisions if d.decision == APPROVE)
