"""The governance routes: /approvals/, /rules/check and /audit/ (DESIGN.md sections 6 and 8).

Each route builds the GovernanceService request and calls the servicer, so the
validation, the rules, the scopes (the guard of the RPC it names) and the store
are the ones gRPC callers get. Bodies refuse unknown fields (422 naming them):
these routes have no seed clients to stay compatible with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Query
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse
from versioner.v1 import governance_service_pb2 as gpb

from versioner_grpc.auth import GOVERNANCE
from versioner_grpc.governance_service import GovernanceService
from versioner_grpc.rest.deployments import (
    NO_CONTEXT,
    _timestamp,
    require_json,
    require_json_when_body,
)
from versioner_grpc.rest.messages import enum_number, model, page, view
from versioner_grpc.rest.routes import ApiRoute

APPROVAL = model(gpb.Approval.DESCRIPTOR)
APPROVAL_PAGE = page("ApprovalPage", "approvals", gpb.Approval.DESCRIPTOR)
AUDIT_PAGE = page("AuditPage", "entries", gpb.AuditEntry.DESCRIPTOR)
CHECK = model(gpb.CheckRulesResponse.DESCRIPTOR)
REQUESTED = model(gpb.RequestApprovalResponse.DESCRIPTOR)
ApprovalId = Annotated[str, Path(description="the approval request's id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[str, Query(description="next_cursor of the previous page")]
MAX_WAIT_SECONDS = 60.0


class ApprovalIn(BaseModel):
    """POST /approvals/: ask for an approval of this version in this environment."""

    model_config = ConfigDict(extra="forbid")
    product_name: str
    version: str
    environment_name: str
    reason: str = ""


class DecisionIn(BaseModel):
    """POST /approvals/{id}/approve or /reject (the body is optional)."""

    model_config = ConfigDict(extra="forbid")
    comment: str = ""


class CheckIn(BaseModel):
    """POST /rules/check: what RecordEvent would decide now for STARTED."""

    model_config = ConfigDict(extra="forbid")
    product_name: str
    version: str
    environment_name: str
    deployment_id: str = ""


def _approval(message: gpb.Approval) -> dict[str, Any]:
    return view(message)


def _page(items: str, values: list[dict[str, Any]], token: str) -> dict[str, Any]:
    return {items: values, "next_cursor": token or None}


def governance_routes(service: GovernanceService) -> list[ApiRoute]:
    """The GovernanceService calls over HTTP."""

    async def request_approval(body: ApprovalIn) -> JSONResponse:
        answer = await service.RequestApproval(
            gpb.RequestApprovalRequest(**body.model_dump()), NO_CONTEXT
        )
        return JSONResponse(
            {"approval": _approval(answer.approval), "created": answer.created},
            status_code=201 if answer.created else 200,
        )

    async def list_approvals(
        product_name: str = "",
        environment_name: str = "",
        state: Annotated[
            list[str], Query(description="repeatable: ?state=pending&state=approved")
        ] = [],  # noqa: B006 (FastAPI copies defaults)
        limit: Limit = 50,
        cursor: Cursor = "",
    ) -> JSONResponse:
        states = [enum_number(gpb.ApprovalState.DESCRIPTOR, "state", s) for s in state]
        answer = await service.ListApprovals(
            gpb.ListApprovalsRequest(
                product_name=product_name,
                environment_name=environment_name,
                states=states,  # type: ignore[arg-type]
                page_size=limit,
                page_token=cursor,
            ),
            NO_CONTEXT,
        )
        return JSONResponse(
            _page("approvals", [_approval(a) for a in answer.approvals], answer.next_page_token)
        )

    async def get_approval(
        approval_id: ApprovalId,
        wait: Annotated[
            float,
            Query(
                ge=0,
                le=MAX_WAIT_SECONDS,
                description="long poll: answer once decided or expired, or after this many seconds",
            ),
        ] = 0,
    ) -> JSONResponse:
        request = gpb.GetApprovalRequest(approval_id=approval_id)
        if wait:
            request.wait.FromNanoseconds(int(wait * 1e9))
        answer = await service.GetApproval(request, NO_CONTEXT)
        return JSONResponse(_approval(answer.approval))

    async def approve(approval_id: ApprovalId, body: DecisionIn | None = None) -> JSONResponse:
        comment = body.comment if body else ""
        answer = await service.Approve(
            gpb.ApproveRequest(approval_id=approval_id, comment=comment), NO_CONTEXT
        )
        return JSONResponse(_approval(answer.approval))

    async def reject(approval_id: ApprovalId, body: DecisionIn | None = None) -> JSONResponse:
        comment = body.comment if body else ""
        answer = await service.Reject(
            gpb.RejectRequest(approval_id=approval_id, comment=comment), NO_CONTEXT
        )
        return JSONResponse(_approval(answer.approval))

    async def _check(body: CheckIn) -> JSONResponse:
        answer = await service.CheckRules(gpb.CheckRulesRequest(**body.model_dump()), NO_CONTEXT)
        return JSONResponse(view(answer))

    async def check_rules_get(
        product_name: str, version: str, environment_name: str, deployment_id: str = ""
    ) -> JSONResponse:
        return await _check(
            CheckIn(
                product_name=product_name,
                version=version,
                environment_name=environment_name,
                deployment_id=deployment_id,
            )
        )

    async def check_rules_post(body: CheckIn) -> JSONResponse:
        return await _check(body)

    async def list_audit(
        since: datetime | None = None,
        until: datetime | None = None,
        principal: str = "",
        kind: Annotated[
            list[str], Query(description="repeatable: ?kind=approval.approved&kind=...")
        ] = [],  # noqa: B006
        limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
        cursor: Cursor = "",
    ) -> JSONResponse:
        request = gpb.ListAuditRequest(
            principal=principal, kinds=kind, page_size=limit, page_token=cursor
        )
        if since is not None:
            request.since.CopyFrom(_timestamp(since))
        if until is not None:
            request.until.CopyFrom(_timestamp(until))
        answer = await service.ListAudit(request, NO_CONTEXT)
        return JSONResponse(
            _page("entries", [view(e) for e in answer.entries], answer.next_page_token)
        )

    tags = ("governance",)
    decided: dict[int | str, dict[str, Any]] = {
        200: {"model": APPROVAL},
        404: {"description": "no approval request has this id"},
        409: {"description": "SELF_APPROVAL, ALREADY_DECIDED: `detail.code` says which"},
    }
    return [
        ApiRoute(
            "POST",
            "/approvals/",
            request_approval,
            "Request an approval (201 when opened, 200 with the open one for the same triple)",
            rpc=GOVERNANCE + "RequestApproval",
            tags=tags,
            dependencies=[Depends(require_json)],
            responses={
                200: {"model": REQUESTED, "description": "the open request for this triple"},
                201: {"model": REQUESTED, "description": "a new request"},
                409: {"description": "APPROVAL_NOT_REQUIRED: no approval rule applies"},
            },
        ),
        ApiRoute(
            "GET",
            "/approvals/",
            list_approvals,
            "Approval requests, newest first (pages: cursor)",
            rpc=GOVERNANCE + "ListApprovals",
            tags=tags,
            responses={200: {"model": APPROVAL_PAGE}},
        ),
        ApiRoute(
            "GET",
            "/approvals/{approval_id}",
            get_approval,
            "One approval request (wait: long poll until it is decided)",
            rpc=GOVERNANCE + "GetApproval",
            tags=tags,
            responses={
                200: {"model": APPROVAL},
                404: {"description": "no approval request has this id"},
            },
        ),
        ApiRoute(
            "POST",
            "/approvals/{approval_id}/approve",
            approve,
            "Approve a request (scope deployments:approve)",
            rpc=GOVERNANCE + "Approve",
            tags=tags,
            dependencies=[Depends(require_json_when_body)],
            responses=decided,
        ),
        ApiRoute(
            "POST",
            "/approvals/{approval_id}/reject",
            reject,
            "Reject a request (scope deployments:approve)",
            rpc=GOVERNANCE + "Reject",
            tags=tags,
            dependencies=[Depends(require_json_when_body)],
            responses=decided,
        ),
        ApiRoute(
            "GET",
            "/rules/check",
            check_rules_get,
            "What RecordEvent would decide now for moving this version into the environment",
            rpc=GOVERNANCE + "CheckRules",
            tags=tags,
            responses={200: {"model": CHECK}},
        ),
        ApiRoute(
            "POST",
            "/rules/check",
            check_rules_post,
            "CheckRules with a JSON body",
            rpc=GOVERNANCE + "CheckRules",
            tags=tags,
            responses={200: {"model": CHECK}},
            dependencies=[Depends(require_json)],
        ),
        ApiRoute(
            "GET",
            "/audit/",
            list_audit,
            "The audit trail, oldest first (pages: cursor)",
            rpc=GOVERNANCE + "ListAudit",
            tags=tags,
            responses={200: {"model": AUDIT_PAGE}},
        ),
    ]
