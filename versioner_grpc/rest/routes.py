"""The route layer: a table of HTTP routes, each guarded by the scope of the RPC it serves.

A route names the gRPC method it stands for (`rpc`); the caller's bearer token
is checked exactly as the gRPC interceptor checks it (TokenFile.authorize with
that method's scope), and the token's name becomes the call's principal. Adding
another service's routes (approvals, rules, audit, subscriptions) is a list of
ApiRoute entries passed to `mount`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import JSONResponse, Response

from versioner_grpc.auth import REQUIRED_SCOPE, TokenFile, principal_name

BEARER = HTTPBearer(
    auto_error=False,
    description="A token from the server's auth file (`versioner-server token create`).",
)
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": 'No bearer token, or one nobody issued: `{"detail": "..."}`'},
    403: {"description": 'The token lacks the scope this call needs: `{"detail": "..."}`'},
}


@dataclass(frozen=True)
class ApiRoute:
    """One HTTP route; `rpc` is the full gRPC method name whose scope it requires."""

    method: str
    path: str
    endpoint: Callable[..., Awaitable[Any]]
    summary: str
    rpc: str | None = None  # None: open to everyone (health, docs)
    tags: Sequence[str] = ()
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)
    dependencies: Sequence[DependsParam] = ()
    response_class: type[Response] = JSONResponse
    include_in_schema: bool = True


def guard(rpc: str, tokens: TokenFile | None) -> Callable[..., Awaitable[None]]:
    """A dependency that authorizes the caller for `rpc` and records the principal."""

    async def authorize(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        if tokens is None:
            return
        header = request.headers.get("authorization", "")
        name = tokens.authorize(rpc, [("authorization", header)])
        # Async dependencies run in the endpoint's task: the servicer sees it.
        principal_name.set(name)
        request.state.principal = name

    return authorize


def mount(app: FastAPI, routes: Iterable[ApiRoute], tokens: TokenFile | None) -> None:
    """Add `routes` to `app`, each behind the scope check of its RPC.

    A route whose RPC has no scope in auth.REQUIRED_SCOPE is refused here: it
    would otherwise be open to anyone even with an auth file.
    """
    for route in routes:
        if route.rpc is not None and route.rpc not in REQUIRED_SCOPE:
            raise ValueError(f"{route.method} {route.path}: {route.rpc} has no required scope")
        dependencies = list(route.dependencies)
        responses = dict(route.responses)
        if route.rpc is not None:
            dependencies.insert(0, Depends(guard(route.rpc, tokens)))
            responses = {**AUTH_RESPONSES, **responses}
        app.add_api_route(
            route.path,
            route.endpoint,
            methods=[route.method],
            summary=route.summary,
            tags=list(route.tags),
            dependencies=dependencies,
            responses=responses,
            response_class=route.response_class,
            include_in_schema=route.include_in_schema,
        )
