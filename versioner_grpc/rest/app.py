"""The FastAPI application: routes, error mapping, middleware, OpenAPI and /docs.

/docs is Swagger UI with its assets from the fastapi-offline package (no CDN);
/openapi.json is generated from the route definitions. /health, /openapi.json
and /docs are open; every other route needs its RPC's scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.responses import JSONResponse

from versioner_grpc.auth import TokenFile
from versioner_grpc.domain.errors import VersionerError
from versioner_grpc.metrics.http_metrics import HttpMetrics
from versioner_grpc.rest import errors
from versioner_grpc.rest.deployments import deployment_routes
from versioner_grpc.rest.observe import ObservingMiddleware
from versioner_grpc.rest.routes import ApiRoute, mount
from versioner_grpc.service import DeploymentService

DESCRIPTION = (
    "The seed's REST API over the same service code as versioner.v1.DeploymentService: "
    "one validation, one set of rules, one store. Send `Authorization: Bearer <token>` "
    "when the server has an auth file."
)


def health_route(serving: Callable[[], bool]) -> ApiRoute:
    async def health() -> JSONResponse:
        ok = serving()
        return JSONResponse(
            {"status": "serving" if ok else "not_serving"}, status_code=200 if ok else 503
        )

    return ApiRoute(
        "GET",
        "/health",
        health,
        "200 while the database is reachable, else 503",
        tags=("health",),
        responses={503: {"description": "the database is unreachable or the server stops"}},
    )


def create_app(
    service: DeploymentService,
    *,
    tokens: TokenFile | None,
    metrics: HttpMetrics,
    serving: Callable[[], bool],
    max_body: int,
    extra_routes: Iterable[ApiRoute] = (),
) -> FastAPI:
    """The HTTP API over `service`; `extra_routes` adds other services' routes."""
    app = FastAPIOffline(
        title="Versioner",
        version="1",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        static_url="/docs/assets",
    )
    app.add_exception_handler(VersionerError, errors.handle)
    app.add_exception_handler(RequestValidationError, errors.validation_failed)
    mount(app, [health_route(serving), *deployment_routes(service), *extra_routes], tokens)
    app.add_middleware(ObservingMiddleware, metrics=metrics, max_body=max_body)
    return app
