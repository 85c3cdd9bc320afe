"""Domain errors → HTTP status and JSON body, in the shapes Versioner's clients parse.

The one place they are mapped for HTTP (errors_grpc is the one for gRPC):
- bad input: 422 `{"detail": [{"loc": [where, field], "msg", "type"}]}`, FastAPI's shape;
- auth: 401 / 403 `{"detail": "..."}`;
- rule refusals: 409 / 423 / 428 (by reason) with `detail.error`, `code`, `message`,
  `retry_after` and `details` (the ErrorInfo metadata, `rule_name` among it);
- 404 for an id that names nothing, 429 for limits, 503 when the database is down.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from versioner_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VersionerError,
)

# ErrorInfo reason → HTTP status. Rules that a wait fixes (a freeze window) are
# 423 Locked; rules that need something done first (an approval, an earlier
# environment) 428 Precondition Required; conflicts with what is stored 409.
REASON_STATUS = {
    "CONCURRENT_DEPLOYMENT": 409,
    "VERSION_SHA_MISMATCH": 409,
    "DEPLOYMENT_MISMATCH": 409,
    "INVALID_TRANSITION": 409,
    "SELF_APPROVAL": 409,
    "ALREADY_DECIDED": 409,
    "APPROVAL_NOT_PENDING": 409,
    "APPROVAL_EXPIRED": 409,
    "APPROVAL_NOT_REQUIRED": 409,
    "NO_DEPLOY_WINDOW": 423,
    "APPROVAL_REQUIRED": 428,
    "FLOW_VIOLATION": 428,
    "INSUFFICIENT_SOAK_TIME": 428,
    "REVISION_COMPACTED": 410,
}
# Refusals by a deployment rule (DESIGN.md section 6) carry error "deployment_blocked".
BLOCKING_REASONS = frozenset(
    {
        "CONCURRENT_DEPLOYMENT",
        "NO_DEPLOY_WINDOW",
        "APPROVAL_REQUIRED",
        "FLOW_VIOLATION",
        "INSUFFICIENT_SOAK_TIME",
    }
)
# Domain (gRPC) field names → the HTTP API's names for the same input.
HTTP_FIELD = {
    "page_token": "cursor",
    "page_size": "limit",
    "statuses": "status",
    "states": "state",
    "kinds": "kind",
}


def http_field(field: str) -> str:
    """`statuses[1]` → `status`, `page_token` → `cursor`; others are the same."""
    base = field.split("[", 1)[0]
    return HTTP_FIELD.get(base, field)


def location(request: Request, field: str) -> str:
    """Where a field came from: the path, the query string or the JSON body."""
    if field in request.path_params:
        return "path"
    return "body" if request.method in ("POST", "PUT", "PATCH") else "query"


def error_body(exc: VersionerError, request: Request) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body for a domain error raised while serving `request`."""
    if isinstance(exc, InvalidArgument):
        return 422, {
            "detail": [
                {
                    "loc": [location(request, http_field(f)), http_field(f)],
                    "msg": why,
                    "type": "value_error",
                }
                for f, why in exc.violations
            ]
        }
    if isinstance(exc, FailedPrecondition):
        detail: dict[str, Any] = {
            "error": "deployment_blocked" if exc.reason in BLOCKING_REASONS else "conflict",
            "code": exc.reason,
            "message": str(exc),
            "retry_after": exc.metadata.get("retry_after"),
            "details": dict(exc.metadata),
        }
        return REASON_STATUS.get(exc.reason, 409), {"detail": detail}
    if isinstance(exc, Unauthenticated):
        return 401, {"detail": str(exc)}
    if isinstance(exc, PermissionDenied):
        return 403, {"detail": str(exc)}
    if isinstance(exc, NotFound):
        return 404, {"detail": str(exc)}
    if isinstance(exc, ResourceExhausted):
        return 429, {"detail": str(exc)}
    if isinstance(exc, Unavailable):
        return 503, {"detail": str(exc)}
    return 500, {"detail": "internal error"}


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for what its parser refuses, as `loc`, `msg`, `type` only.

    The offending input is not echoed back: it may be megabytes, or a number
    JSON cannot carry (1e400), which would turn the 422 into a 500.
    """
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def handle(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI exception handler for VersionerError."""
    assert isinstance(exc, VersionerError)
    status, body = error_body(exc, request)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": "1"}
    return JSONResponse(body, status_code=status, headers=headers)
