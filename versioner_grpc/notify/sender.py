"""One HTTP attempt at a delivery: aiohttp, no redirects followed, bounded time and size."""

from __future__ import annotations

import email.utils
import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import ResolveResult

from versioner_grpc.domain.notifications import RESPONSE_EXCERPT_BYTES, classify
from versioner_grpc.notify.payloads import signature
from versioner_grpc.notify.ssrf import TargetRefused, check_target, refused_reason

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


class _PublicOnlyResolver(aiohttp.ThreadedResolver):
    """The connection's own DNS answers pass the SSRF rule too.

    Closes the gap between check_target and connecting, where a name could be
    re-pointed at a private address (DNS rebinding): the connection fails (and
    the next attempt's check refuses the target for good).
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await super().resolve(host, port, family)
        for answer in answers:
            reason = refused_reason(answer["host"])
            if reason:
                raise OSError(f"{host} resolves to {answer['host']}, {reason}")
        return answers


class Sender:
    """Shares one aiohttp session (a connection pool) across every subscription.

    aiohttp rather than httpx: measured on loopback, 10 concurrent lanes, it
    costs 130-180 µs of CPU per request against httpx's 860-900 µs (and 4-6x the
    requests per second), and delivery shares the server's CPU with RecordEvent.
    """

    def __init__(self, *, timeout: float = 10.0, allow_private: bool = False) -> None:
        self.allow_private = allow_private
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the running loop, at first use
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                headers={"User-Agent": USER_AGENT},
                connector=aiohttp.TCPConnector(
                    limit=200,
                    limit_per_host=20,
                    resolver=None if self.allow_private else _PublicOnlyResolver(),
                ),
                trust_env=False,  # no proxy from the environment: the SSRF check sees the target
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

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
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                excerpt = b""
                while len(excerpt) < RESPONSE_EXCERPT_BYTES:
                    chunk = await response.content.read(RESPONSE_EXCERPT_BYTES - len(excerpt))
                    if not chunk:
                        break
                    excerpt += chunk
                status = response.status
                location = response.headers.get("Location", "?")
                wait_header = response.headers.get("Retry-After")
        except TimeoutError:
            return Outcome(0, elapsed(), "timeout: no answer in time", "", "retry")
        except aiohttp.ClientError as exc:
            return Outcome(0, elapsed(), f"{type(exc).__name__}: {exc}", "", "retry")
        text = excerpt.decode("utf-8", "replace")
        result = classify(status)
        error = ""
        if result != "success":
            error = f"HTTP {status}"
            if 300 <= status < 400:
                error += f": redirect to {location} not followed"
        wait = retry_after(wait_header, time.time())
        return Outcome(status, elapsed(), error, text, result, wait if result == "retry" else None)
