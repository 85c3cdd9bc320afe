"""One HTTP attempt at a delivery: httpx, no redirects followed, bounded time and size."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx

from versioner_grpc.domain.notifications import RESPONSE_EXCERPT_BYTES, classify
from versioner_grpc.notify.payloads import signature
from versioner_grpc.notify.ssrf import TargetRefused, check_target

USER_AGENT = "Versioner-Hookshot/1"


@dataclass(frozen=True)
class Outcome:
    http_status: int
    latency_us: int
    error: str
    response_body: str
    result: str  # success, retry or failed
    retry_after: float | None = None


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Sender:
    """Shares one httpx.AsyncClient (connection pool) across every subscription."""

    def __init__(self, *, timeout: float = 10.0, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            trust_env=False,  # no proxy from the environment: the SSRF check must see the target
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def send(
        self, url: str, event_type: str, delivery_id: str, body: bytes, secret: str
    ) -> Outcome:
        start = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - start) * 1e6)

        if not self.allow_private:
            try:
                await check_target(url)
            except TargetRefused as exc:
                return Outcome(0, elapsed(), f"refused target: {exc}", "", "failed")
        headers = {
            "Content-Type": "application/json",
            "X-Versioner-Event": event_type,
            "X-Versioner-Delivery": delivery_id,
        }
        if secret:
            headers["X-Versioner-Signature"] = signature(secret, body)
        try:
            async with self.client.stream("POST", url, content=body, headers=headers) as response:
                excerpt = bytearray()
                async for chunk in response.aiter_raw():
                    excerpt += chunk
                    if len(excerpt) >= RESPONSE_EXCERPT_BYTES:
                        break
        except httpx.TimeoutException as exc:
            return Outcome(0, elapsed(), f"timeout: {type(exc).__name__}", "", "retry")
        except httpx.HTTPError as exc:
            return Outcome(0, elapsed(), f"{type(exc).__name__}: {exc}", "", "retry")
        status = response.status_code
        text = bytes(excerpt[:RESPONSE_EXCERPT_BYTES]).decode("utf-8", "replace")
        result = classify(status)
        error = ""
        if result != "success":
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += f": redirect to {response.headers.get('location', '?')} not followed"
        wait = retry_after(response.headers.get("retry-after"), time.time())
        return Outcome(status, elapsed(), error, text, result, wait if result == "retry" else None)
