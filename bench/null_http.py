"""The null HTTP service: Versioner's HTTP stack with a POST /deployment-events/ that does no work.

Same FastAPI app factory pieces (the seed's body model and its JSON content-type
check, ObservingMiddleware with its metrics and log line, the error handler),
served by the same HttpServer (uvicorn in an asyncio loop). The route answers a
prebuilt body shaped like Versioner's (bench.fixtures), so the difference to
Versioner is the servicer, the store and the conversions.

`python -m bench.null_http --listen 127.0.0.1:0` logs a JSON "serving" line with
`grpc_address` (none: empty) and `http_address`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from dataclasses import replace
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse

from bench.fixtures import null_responses
from versioner_grpc import logs
from versioner_grpc.config import Config
from versioner_grpc.domain.errors import VersionerError
from versioner_grpc.logs import fields
from versioner_grpc.metrics.http_metrics import HttpMetrics
from versioner_grpc.rest import errors, views
from versioner_grpc.rest.deployments import DeploymentEvent, record_request, require_json
from versioner_grpc.rest.observe import ObservingMiddleware
from versioner_grpc.rest.serve import HttpServer

log = logging.getLogger("bench.null_http")


def null_app(max_body: int) -> FastAPI:
    recorded = null_responses().record
    answer: dict[str, Any] = views.recorded(recorded)

    async def record_event(body: DeploymentEvent) -> JSONResponse:
        record_request(body)  # the same parse into a request, then nothing
        return JSONResponse(answer)

    app = FastAPIOffline(title="null", openapi_url="/openapi.json", docs_url=None, redoc_url=None)
    app.add_exception_handler(VersionerError, errors.handle)
    app.add_exception_handler(RequestValidationError, errors.validation_failed)
    app.add_api_route(
        "/deployment-events/",
        record_event,
        methods=["POST"],
        dependencies=[Depends(require_json)],
    )
    app.add_middleware(
        ObservingMiddleware, metrics=HttpMetrics(CollectorRegistry()), max_body=max_body
    )
    return app


async def serve(listen: str) -> None:
    config = replace(Config(), http_listen=listen)
    server = HttpServer(null_app(config.max_message_bytes), config)
    await server.start()
    host = listen.rpartition(":")[0]
    log.info(
        "serving",
        extra=fields(event="serving", grpc_address="", http_address=f"{host}:{server.port}"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.null_http")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--log-level", default=Config().log_level)
    args = parser.parse_args()
    logs.configure(args.log_level)
    asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
