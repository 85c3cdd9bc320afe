"""ASGI middleware around every HTTP request: body limit, metrics, one log line.

The log line carries the same fields as the gRPC call line (method, code,
duration_ms, peer, principal) plus the route template, so one query finds calls
from both APIs.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from versioner_grpc.logs import fields
from versioner_grpc.metrics.http_metrics import HttpMetrics

log = logging.getLogger("versioner.http")
UNMATCHED = "unmatched"  # the route label of a request no route matched (bounded)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


class ObservingMiddleware:
    """Refuses bodies over `max_body` bytes with 413; counts, times and logs each request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        code = 500
        limit = self.max_body

        async def observed_send(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                # Refused before a byte of the body is read.
                await _reply(observed_send, 413, {"detail": str(BodyTooLarge(limit).detail)})
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(limit)
                return message

            await self.app(scope, limited_receive, observed_send)
        finally:
            self._record(scope, code, time.perf_counter() - start)

    def _record(self, scope: Scope, code: int, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or UNMATCHED
        method = scope["method"]
        self.metrics.observe(method, template, code, elapsed)
        client = scope.get("client")
        state: dict[str, Any] = scope.get("state") or {}
        log.info(
            "http",
            extra=fields(
                event="http",
                method=method,
                route=template,
                code=code,
                duration_ms=round(elapsed * 1000, 3),
                peer=f"{client[0]}:{client[1]}" if client else "",
                principal=state.get("principal", ""),
            ),
        )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
