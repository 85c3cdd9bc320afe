"""The audit trail: an append-only record of every governance action.

Each entry has an `id` that only grows, and ids become visible in commit order:
every audit insert happens in a transaction holding the same append lock as
event writes (one writer thread on SQLite, `pg_advisory_xact_lock` on
PostgreSQL). A consumer (the notification feature, a compliance export) can
therefore keep the last id it processed and page `ListAudit` (or read
`audit_entry WHERE id > ?` through the store) from there without missing an
entry that commits later with a smaller id. Nothing updates or deletes entries.
Every entry's details carry `after_revision`, the newest event revision when it
was written: the notification engine sends it after that event, before the next.

Kinds (the `kind` column, also the filter values of ListAudit):
  approval.requested  an approval request was opened (principal: the requester)
  approval.decided    one principal approved or rejected (details: decision, comment)
  approval.approved   the request reached its required approvals
  approval.rejected   a rejection closed the request
  approval.expired    an open request passed its expire time unused
  deployment.blocked  an event was refused by an enforce rule (details: reason, message)
  deployment.override an event passed unsatisfied rules with an override_reason
  rule.reported       an event passed, but report-mode rules were not satisfied
  rules.reloaded      the rules file was (re)loaded (details: path, sha256, rules)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

APPROVAL_REQUESTED = "approval.requested"
APPROVAL_DECIDED = "approval.decided"
APPROVAL_APPROVED = "approval.approved"
APPROVAL_REJECTED = "approval.rejected"
APPROVAL_EXPIRED = "approval.expired"
DEPLOYMENT_BLOCKED = "deployment.blocked"
DEPLOYMENT_OVERRIDE = "deployment.override"
RULE_REPORTED = "rule.reported"
RULES_RELOADED = "rules.reloaded"
KINDS = (
    APPROVAL_REQUESTED,
    APPROVAL_DECIDED,
    APPROVAL_APPROVED,
    APPROVAL_REJECTED,
    APPROVAL_EXPIRED,
    DEPLOYMENT_BLOCKED,
    DEPLOYMENT_OVERRIDE,
    RULE_REPORTED,
    RULES_RELOADED,
)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    time: int
    kind: str
    principal: str = ""
    product: str = ""
    version: str = ""
    environment: str = ""
    approval_id: str = ""
    deployment_id: str = ""
    rule_name: str = ""
    details: dict[str, Any] = field(default_factory=dict)
