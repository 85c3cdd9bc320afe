"""Notification rules: subscriptions, event types, filters, retry policy. Pure, no I/O."""

from __future__ import annotations

import enum
import random
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from versioner_grpc.domain.errors import InvalidArgument
from versioner_grpc.domain.model import Deployment, EnvironmentType, Status

DEPLOYMENT_EVENT_TYPES = (
    "deployment.pending",
    "deployment.started",
    "deployment.completed",
    "deployment.failed",
    "deployment.aborted",
)
# From governance's audit trail (see governance/notices.py for which entries).
GOVERNANCE_EVENT_TYPES = (
    "deployment.blocked",
    "deployment.override",
    "approval.requested",
    "approval.approved",
    "approval.rejected",
)
EVENT_TYPES = DEPLOYMENT_EVENT_TYPES + GOVERNANCE_EVENT_TYPES
TEST_EVENT_TYPE = "ping"
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 1024
MAX_NAME = 100
MAX_URL = 2048
MAX_FILTER_ENTRIES = 100
RESPONSE_EXCERPT_BYTES = 1024


class Format(enum.IntEnum):
    """Message shape; numbers match the proto enum."""

    UNSPECIFIED = 0
    WEBHOOK = 1
    SLACK = 2


class DeliveryState(enum.IntEnum):
    """Numbers match the proto enum."""

    UNSPECIFIED = 0
    PENDING = 1
    SUCCEEDED = 2
    FAILED = 3


def event_type(status: Status) -> str:
    """The notification event type of a deployment event with this status."""
    return "deployment." + status.name.lower()


@dataclass(frozen=True)
class SubscriptionFields:
    """What a client sets on a subscription (validated)."""

    name: str
    url: str
    format: Format
    products: tuple[str, ...] = ()
    environments: tuple[str, ...] = ()
    environment_types: tuple[EnvironmentType, ...] = ()
    event_types: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class Subscription:
    """A stored subscription. `sealed_secret` is the secret as stored (see notify/secrets)."""

    id: str
    fields: SubscriptionFields
    has_secret: bool
    cursor: int
    create_time: int
    update_time: int
    sealed_secret: str = field(default="", repr=False)

    def matches(self, kind: str, deployment: Deployment) -> bool:
        """Does an event of type `kind` about `deployment` pass the filters?"""
        return self.matches_place(
            kind, deployment.product, deployment.environment, deployment.environment_type
        )

    def matches_place(
        self, kind: str, product: str, environment: str, environment_type: EnvironmentType
    ) -> bool:
        """The filters, for any event: its type and where it happens."""
        f = self.fields
        return (
            (not f.event_types or kind in f.event_types)
            and (not f.products or product in f.products)
            and (not f.environments or environment in f.environments)
            and (not f.environment_types or environment_type in f.environment_types)
        )


@dataclass(frozen=True)
class Attempt:
    number: int
    time: int
    http_status: int
    latency_us: int
    error: str
    response_body: str
    result: str  # success, retry or failed


@dataclass(frozen=True)
class Delivery:
    id: str
    subscription_id: str
    revision: int
    event_type: str
    state: DeliveryState
    create_time: int
    update_time: int
    next_attempt_time: int
    body: str = field(repr=False)
    event_record_time: int = 0
    redelivery_of: str = ""
    attempts: tuple[Attempt, ...] = ()


class _Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, name: str, why: str) -> None:
        self.items.append((name, why))

    def raise_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def _text(v: _Violations, name: str, raw: str, limit: int) -> str:
    value = raw.strip()
    if not value:
        v.add(name, "must not be empty")
    elif len(value) > limit:
        v.add(name, f"must be at most {limit} characters (got {len(value)})")
    elif any(unicodedata.category(ch) == "Cc" for ch in value):
        v.add(name, "must not contain control characters")
    return value


def validate_url(v: _Violations, raw: str) -> str:
    url = raw.strip()
    if not url:
        v.add("url", "must not be empty")
        return url
    if len(url) > MAX_URL:
        v.add("url", f"must be at most {MAX_URL} characters")
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        v.add("url", f"is not a valid URL: {exc}")
        return url
    if parts.scheme not in ("http", "https"):
        v.add("url", f"scheme must be http or https (got {parts.scheme or 'none'!r})")
    elif not parts.hostname:
        v.add("url", "must name a host")
    elif parts.username or parts.password:
        v.add("url", "must not carry credentials; use the secret for signing")
    elif port == 0:
        v.add("url", "port must not be 0")
    elif any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        v.add("url", "must not contain spaces or control characters")
    return url


def _names(v: _Violations, name: str, raw: Iterable[str], limit: int) -> tuple[str, ...]:
    values = list(raw)
    if len(values) > MAX_FILTER_ENTRIES:
        v.add(name, f"at most {MAX_FILTER_ENTRIES} entries")
        return ()
    out: list[str] = []
    for i, value in enumerate(values):
        clean = value.strip()
        if not clean:
            v.add(name, f"entry {i} is empty: it would match nothing (omit the filter to "
                  "match everything)")  # fmt: skip
            continue
        out.append(_text(v, name, clean, limit))
    return tuple(dict.fromkeys(out))


def _event_types(v: _Violations, raw: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in raw:
        if value not in EVENT_TYPES:
            v.add("event_types", f"unknown event type {value!r}; known: {', '.join(EVENT_TYPES)}")
        else:
            out.append(value)
    return tuple(dict.fromkeys(out))


def _environment_types(v: _Violations, raw: Iterable[int]) -> tuple[EnvironmentType, ...]:
    out: list[EnvironmentType] = []
    for value in raw:
        try:
            out.append(EnvironmentType(value))
        except ValueError:
            v.add("environment_types", f"unknown environment type {value}")
    return tuple(dict.fromkeys(out))


def _format(v: _Violations, raw: int) -> Format:
    try:
        fmt = Format(raw)
    except ValueError:
        v.add("format", f"unknown format {raw}: use WEBHOOK or SLACK")
        return Format.UNSPECIFIED
    if fmt is Format.UNSPECIFIED:
        v.add("format", "must be WEBHOOK or SLACK")
    return fmt


def _secret(v: _Violations, secret: str) -> str:
    size = len(secret.encode())
    if secret and size < MIN_SECRET_BYTES:
        v.add("secret", f"must be at least {MIN_SECRET_BYTES} bytes (got {size})")
    elif size > MAX_SECRET_BYTES:
        v.add("secret", f"must be at most {MAX_SECRET_BYTES} bytes")
    return secret


def validate_subscription(
    *,
    name: str,
    url: str,
    format: int,
    secret: str,
    products: Sequence[str],
    environments: Sequence[str],
    environment_types: Sequence[int],
    event_types: Sequence[str],
    enabled: bool,
) -> tuple[SubscriptionFields, str]:
    """The validated fields and secret; every violation names its field."""
    v = _Violations()
    fields_ = SubscriptionFields(
        name=_text(v, "name", name, MAX_NAME),
        url=validate_url(v, url),
        format=_format(v, format),
        products=_names(v, "products", products, 255),
        environments=_names(v, "environments", environments, 100),
        environment_types=_environment_types(v, environment_types),
        event_types=_event_types(v, event_types),
        enabled=enabled,
    )
    clean_secret = _secret(v, secret)
    v.raise_any()
    return fields_, clean_secret


UPDATABLE = (
    "name",
    "url",
    "format",
    "secret",
    "products",
    "environments",
    "environment_types",
    "event_types",
    "enabled",
)


def validate_mask(paths: Sequence[str]) -> tuple[str, ...]:
    if not paths:
        raise InvalidArgument([("update_mask", f"must name fields to change: {UPDATABLE}")])
    unknown = [p for p in paths if p not in UPDATABLE]
    if unknown:
        raise InvalidArgument(
            [("update_mask", f"unknown field(s) {unknown}; updatable: {', '.join(UPDATABLE)}")]
        )
    return tuple(dict.fromkeys(paths))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, for a bounded time."""

    base: float = 1.0  # seconds before the first retry (doubling after)
    cap: float = 300.0
    window: float = 86_400.0  # give up this long after the delivery was created

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based).

        Equal jitter: half the exponential step plus a random half, so retries of
        many deliveries spread out but never come sooner than half the step.
        A Retry-After from the receiver wins when it asks for longer.
        """
        step: float = min(self.cap, self.base * 2.0 ** (attempt - 1))
        delay = step / 2 + rng.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay


def classify(http_status: int) -> str:
    """success, retry or failed, for a receiver's HTTP status."""
    if 200 <= http_status < 300:
        return "success"
    if http_status in (408, 429) or http_status >= 500:
        return "retry"
    return "failed"  # other 4xx; 1xx/3xx (redirects are not followed)
