"""GovernanceService: approvals, the rules preflight and the audit trail (DESIGN.md §6).

Thin like DeploymentService: validation in domain.validation, decisions in
governance.rules, state changes through Store (store.governance holds the SQL), messages in
convert_governance. The principal is always the caller's token name, never a
field of the request; without an auth file every caller is "anonymous" (so
approvals then need allow_self_approval).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from versioner.v1 import governance_service_pb2 as gpb
from versioner.v1 import governance_service_pb2_grpc as gpb_grpc

from versioner_grpc import convert, convert_governance, pagetoken
from versioner_grpc.auth import principal_name
from versioner_grpc.domain.clock import now_us
from versioner_grpc.domain.errors import FailedPrecondition, NotFound, invalid
from versioner_grpc.domain.filters import PageKey
from versioner_grpc.domain.validation import (
    validate_identifier,
    validate_text,
    validate_triple,
)
from versioner_grpc.governance import approvals as ap
from versioner_grpc.governance import audit
from versioner_grpc.governance.rules import Outcome, Target
from versioner_grpc.store.store import Store

if TYPE_CHECKING:  # grpc's classes are not subscriptable at runtime
    Context = grpc.aio.ServicerContext[Any, Any]

ANONYMOUS = "anonymous"
MAX_WAIT_US = 60_000_000
# How often a long poll re-reads the request, for decisions made on other replicas
# (decisions made here wake it at once).
RECHECK_SECONDS = 1.0
DEFAULT_PAGE_SIZE = 50
DEFAULT_AUDIT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def principal() -> str:
    return principal_name.get() or ANONYMOUS


def _page_size(value: int, default: int) -> int:
    if value < 0:
        raise invalid("page_size", "must not be negative")
    return min(value or default, MAX_PAGE_SIZE)


class GovernanceService(gpb_grpc.GovernanceServiceServicer):
    """The versioner.v1.GovernanceService servicer."""

    def __init__(
        self, store: Store, on_approved: Callable[[float], None] = lambda seconds: None
    ) -> None:
        self.store = store
        self.on_approved = on_approved
        # Long polls waiting on a request, woken by a decision made on this replica.
        self._decided: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}

    async def RequestApproval(
        self, request: gpb.RequestApprovalRequest, context: Context
    ) -> gpb.RequestApprovalResponse:
        product, version, environment = validate_triple(
            request.product_name, request.version, request.environment_name
        )
        reason = validate_text("reason", request.reason)
        policy = self.store.gate.rules.approval_policy(product, environment)
        if policy is None:
            raise FailedPrecondition(
                "APPROVAL_NOT_REQUIRED",
                f"no approval rule covers {product} in {environment}; deploy without one",
                {"product_name": product, "environment_name": environment},
            )
        who, now = principal(), now_us()
        found, created = await self.store.request_approval(
            product=product,
            version=version,
            environment=environment,
            reason=reason,
            principal=who,
            policy=policy,
            now=now,
        )
        return gpb.RequestApprovalResponse(
            approval=convert_governance.approval(found, now), created=created
        )

    async def _decide(self, approval_id: str, comment: str, decision: str) -> gpb.Approval:
        approval_id = validate_identifier("approval_id", approval_id)
        comment = validate_text("comment", comment)
        who, now = principal(), now_us()
        found = await self.store.decide_approval(approval_id, who, decision, comment, now)
        if found.state == ap.APPROVED:
            self.on_approved((now - found.create_time) / 1e6)
        waiting = self._decided.pop(approval_id, None)
        if waiting is not None:
            waiting.set()
        return convert_governance.approval(found, now)

    async def Approve(self, request: gpb.ApproveRequest, context: Context) -> gpb.ApproveResponse:
        found = await self._decide(request.approval_id, request.comment, ap.APPROVE)
        return gpb.ApproveResponse(approval=found)

    async def Reject(self, request: gpb.RejectRequest, context: Context) -> gpb.RejectResponse:
        found = await self._decide(request.approval_id, request.comment, ap.REJECT)
        return gpb.RejectResponse(approval=found)

    async def GetApproval(
        self, request: gpb.GetApprovalRequest, context: Context
    ) -> gpb.GetApprovalResponse:
        approval_id = validate_identifier("approval_id", request.approval_id)
        wait = 0
        if request.HasField("wait"):
            wait = request.wait.seconds * 1_000_000 + request.wait.nanos // 1000
            if wait < 0:
                raise invalid("wait", "must not be negative")
        deadline = now_us() + min(wait, MAX_WAIT_US)
        while True:
            found = await self.store.get_approval(approval_id)
            if found is None:
                raise NotFound(f"no approval request {approval_id!r}")
            now = now_us()
            if found.effective_state(now) != ap.PENDING or now >= deadline:
                return gpb.GetApprovalResponse(approval=convert_governance.approval(found, now))
            await self._wait_for_decision(approval_id, min(deadline, found.expire_time) - now)

    async def _wait_for_decision(self, approval_id: str, left_us: int) -> None:
        """Sleep until a decision on this replica wakes us, or RECHECK_SECONDS at most."""
        event = self._decided.setdefault(approval_id, asyncio.Event())
        self._waiters[approval_id] = self._waiters.get(approval_id, 0) + 1
        try:
            await asyncio.wait_for(event.wait(), min(max(left_us, 0) / 1e6, RECHECK_SECONDS))
        except TimeoutError:
            pass
        finally:
            self._waiters[approval_id] -= 1
            if not self._waiters[approval_id]:
                del self._waiters[approval_id]
                self._decided.pop(approval_id, None)

    async def ListApprovals(
        self, request: gpb.ListApprovalsRequest, context: Context
    ) -> gpb.ListApprovalsResponse:
        product = validate_text("product_name", request.product_name, 255)
        environment = validate_text("environment_name", request.environment_name, 100)
        states = []
        for number in request.states:
            name = convert_governance.STATE_NAME.get(number)
            if name is None:
                raise invalid("states", f"unknown approval state {number}")
            states.append(name)
        limit = _page_size(request.page_size, DEFAULT_PAGE_SIZE)
        key = f"ListApprovals|{product}|{environment}|{','.join(sorted(states))}"
        after = None
        if request.page_token:
            position = pagetoken.decode(key, request.page_token)
            after = (position.create_time, position.id)
        now = now_us()
        page, next_key = await self.store.list_approvals(
            product=product,
            environment=environment,
            states=states,
            after=after,
            limit=limit,
            now=now,
        )
        token = pagetoken.encode(key, PageKey(*next_key)) if next_key else ""
        return gpb.ListApprovalsResponse(
            approvals=[convert_governance.approval(a, now) for a in page], next_page_token=token
        )

    async def CheckRules(
        self, request: gpb.CheckRulesRequest, context: Context
    ) -> gpb.CheckRulesResponse:
        product, version, environment = validate_triple(
            request.product_name, request.version, request.environment_name
        )
        deployment_id = request.deployment_id.strip()
        if deployment_id:
            deployment_id = validate_identifier("deployment_id", deployment_id)
        rules, now = self.store.gate.rules, now_us()
        target = Target(product, version, environment, deployment_id)

        verdict = await self.store.check_rules(rules, target, now)
        policy = rules.approval_policy(product, environment)
        response = gpb.CheckRulesResponse(
            allowed=verdict.blocking is None,
            results=[convert_governance.rule_result(r) for r in verdict.results],
            approval_rules=list(policy.rule_names) if policy else [],
        )
        for r in verdict.results:
            if r.rule.kind == "approval" and r.outcome is not Outcome.PASS:
                response.approval_id = r.metadata.get("approval_id", "")
                break
        else:
            response.approval_id = verdict.approval_id
        return response

    async def ListAudit(
        self, request: gpb.ListAuditRequest, context: Context
    ) -> gpb.ListAuditResponse:
        since = convert.optional_us(request, "since")
        until = convert.optional_us(request, "until")
        who = validate_text("principal", request.principal, 255)
        kinds = list(request.kinds)
        for kind in kinds:
            if kind not in audit.KINDS:
                raise invalid("kinds", f"unknown kind {kind!r}; expected {', '.join(audit.KINDS)}")
        limit = _page_size(request.page_size, DEFAULT_AUDIT_PAGE_SIZE)
        key = f"ListAudit|{since}|{until}|{who}|{','.join(sorted(kinds))}"
        after = pagetoken.decode(key, request.page_token).create_time if request.page_token else 0
        entries, next_id = await self.store.list_audit(
            since=since,
            until=until,
            principal=who,
            kinds=kinds,
            after_id=after,
            limit=limit,
        )
        # The position is the entry id; its text form fills the id half (never empty).
        token = pagetoken.encode(key, PageKey(next_id, str(next_id))) if next_id else ""
        return gpb.ListAuditResponse(
            entries=[convert_governance.audit_entry(e) for e in entries], next_page_token=token
        )
