"""Input rules: names, limits and times. Every violation names its field.

Validation collects every violation of a request, not just the first, so a
client fixes its call in one round trip.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any
from urllib.parse import urlsplit

from versioner_grpc.domain.errors import InvalidArgument
from versioner_grpc.domain.filters import Filters
from versioner_grpc.domain.model import EventInput, Status

MAX_PRODUCT = 255
MAX_VERSION = 100
MAX_ENVIRONMENT = 100
MAX_TEXT = 255  # deployed_by, scm_branch
MAX_SHA = 64
MAX_URL = 2048
MAX_ID = 128  # event_id, deployment_id
MAX_METADATA_BYTES = 64 * 1024
MAX_REASON = 1000  # override_reason, approval reason and comments

# Objects and lists nest at most this deep, extra_metadata itself counting as 1: every level
# is three protobuf message levels, and a Deployment inside a watch message must stay
# well under protobuf's decoding limit of 100.
MAX_METADATA_DEPTH = 16
MAX_METADATA_KEYS = 1000  # keys at every level together
FUTURE_TOLERANCE_US = 5 * 60 * 1_000_000
_ID = re.compile(r"^[A-Za-z0-9._:/@+=-]+$")
_SHA = re.compile(r"^[0-9a-fA-F]{4,64}$")


class _Violations:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, why: str) -> None:
        self.items.append((field, why))

    def raise_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def _name(v: _Violations, field: str, raw: str, limit: int, required: bool) -> str:
    value = raw.strip()
    if not value:
        if required:
            v.add(field, "must not be empty")
    elif len(value) > limit:
        v.add(field, f"must be at most {limit} characters (got {len(value)})")
    elif _has_control(value):
        v.add(field, "must not contain control characters")
    return value


def _identifier(v: _Violations, field: str, raw: str) -> str:
    value = raw.strip()
    if value and (len(value) > MAX_ID or not _ID.match(value)):
        v.add(field, f"must be at most {MAX_ID} characters of A-Z a-z 0-9 . _ : / @ + = -")
    return value


def metadata_shape(metadata: object) -> tuple[int, int]:
    """(nesting depth, total keys) of a JSON-like value, without recursion."""
    depth = keys = 0
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            depth = max(depth, level)
            keys += len(value)
            stack.extend((child, level + 1) for child in value.values())
        elif isinstance(value, list):
            depth = max(depth, level)
            stack.extend((child, level + 1) for child in value)
    return depth, keys


def metadata_depth_violation(metadata: object) -> str | None:
    """Why `metadata` nests too deep, or None. Iterative: any depth is safe to check."""
    depth, _ = metadata_shape(metadata)
    if depth > MAX_METADATA_DEPTH:
        return f"must nest at most {MAX_METADATA_DEPTH} levels of objects and lists (got {depth})"
    return None


def validate_event(
    *,
    product: str,
    version: str,
    environment: str,
    status: int,
    now: int,
    event_time: int | None = None,
    event_id: str = "",
    deployment_id: str = "",
    deployed_by: str = "",
    scm_branch: str = "",
    scm_sha: str = "",
    build_url: str = "",
    metadata: dict[str, Any] | None = None,
    metadata_bytes: int = 0,
    scm_commit_time: int | None = None,
    recorded_by: str = "",
    override_reason: str = "",
) -> EventInput:
    """Check a RecordEvent request and return its normalized form."""
    v = _Violations()
    product = _name(v, "product_name", product, MAX_PRODUCT, True)
    version = _name(v, "version", version, MAX_VERSION, True)
    environment = _name(v, "environment_name", environment, MAX_ENVIRONMENT, True)
    if status not in Status._value2member_map_ or status == Status.UNSPECIFIED:
        v.add("status", "must be one of PENDING, STARTED, COMPLETED, FAILED, ABORTED")
    deployed_by = _name(v, "deployed_by", deployed_by, MAX_TEXT, False)
    scm_branch = _name(v, "scm_branch", scm_branch, MAX_TEXT, False)
    scm_sha = scm_sha.strip()
    if scm_sha and not _SHA.match(scm_sha):
        v.add("scm_sha", "must be 4 to 64 hexadecimal characters")
    build_url = build_url.strip()
    if build_url:
        parts = urlsplit(build_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            v.add("build_url", "must be an http(s) URL")
        elif len(build_url) > MAX_URL or _has_control(build_url):
            v.add("build_url", f"must be at most {MAX_URL} characters, no control characters")
    if metadata_bytes > MAX_METADATA_BYTES:
        v.add("extra_metadata", f"must be at most {MAX_METADATA_BYTES} bytes serialized")
    elif metadata:
        depth, keys = metadata_shape(metadata)
        if depth > MAX_METADATA_DEPTH:
            v.add(
                "extra_metadata",
                f"must nest at most {MAX_METADATA_DEPTH} levels of objects and lists (got {depth})",
            )
        if keys > MAX_METADATA_KEYS:
            v.add("extra_metadata", f"must have at most {MAX_METADATA_KEYS} keys (got {keys})")
    if event_time is not None:
        if event_time > now + FUTURE_TOLERANCE_US:
            v.add("event_time", "must not be more than 5 minutes in the future")
        elif event_time <= 0:
            v.add("event_time", "must be after 1970-01-01")
    if scm_commit_time is not None:
        if scm_commit_time > now + FUTURE_TOLERANCE_US:
            v.add("scm_commit_time", "must not be more than 5 minutes in the future")
        elif scm_commit_time <= 0:
            v.add("scm_commit_time", "must be after 1970-01-01")
    event_id = _identifier(v, "event_id", event_id)
    deployment_id = _identifier(v, "deployment_id", deployment_id)
    override_reason = _name(v, "override_reason", override_reason, MAX_REASON, False)
    v.raise_any()
    return EventInput(
        product=product,
        version=version,
        environment=environment,
        status=Status(status),
        event_time=event_time if event_time is not None else now,
        event_id=event_id or uuid.uuid4().hex,
        event_id_given=bool(event_id),
        deployment_id=deployment_id,
        deployed_by=deployed_by,
        scm_branch=scm_branch,
        scm_sha=scm_sha.lower(),
        build_url=build_url,
        metadata=metadata or None,
        scm_commit_time=scm_commit_time,
        recorded_by=recorded_by,
        override_reason=override_reason,
    )


def validate_deployment_id(raw: str) -> str:
    """A deployment id a lookup names: RecordEvent's rule for ids, and not empty.

    The id is a database key, never a file path, so "../x" is merely an id that
    does not exist.
    """
    v = _Violations()
    value = _identifier(v, "deployment_id", raw)
    if not value and not v.items:
        v.add("deployment_id", "must not be empty")
    v.raise_any()
    return value


def validate_filters(
    *,
    product: str = "",
    environment: str = "",
    statuses: list[int] | tuple[int, ...] = (),
    version: str = "",
    deployed_by: str = "",
    since: int | None = None,
    until: int | None = None,
) -> Filters:
    """Check read filters (every one optional) and return their normalized form."""
    v = _Violations()
    product = _name(v, "product_name", product, MAX_PRODUCT, False)
    environment = _name(v, "environment_name", environment, MAX_ENVIRONMENT, False)
    version = _name(v, "version", version, MAX_VERSION, False)
    deployed_by = _name(v, "deployed_by", deployed_by, MAX_TEXT, False)
    for i, s in enumerate(statuses):
        if s not in Status._value2member_map_ or s == Status.UNSPECIFIED:
            v.add(f"statuses[{i}]", "must be one of PENDING, STARTED, COMPLETED, FAILED, ABORTED")
    if since is not None and until is not None and until <= since:
        v.add("until", "must be after since")
    v.raise_any()
    return Filters(
        product=product,
        environment=environment,
        statuses=frozenset(Status(s) for s in statuses),
        version=version,
        deployed_by=deployed_by,
        since=since,
        until=until,
    )


def validate_triple(
    product: str, version: str, environment: str, *, version_required: bool = True
) -> tuple[str, str, str]:
    """Product, version and environment of a governance call, normalized."""
    v = _Violations()
    triple = (
        _name(v, "product_name", product, MAX_PRODUCT, True),
        _name(v, "version", version, MAX_VERSION, version_required),
        _name(v, "environment_name", environment, MAX_ENVIRONMENT, True),
    )
    v.raise_any()
    return triple


def validate_text(field: str, raw: str, limit: int = MAX_REASON) -> str:
    """An optional free-text field (reason, comment): bounded, no control characters."""
    v = _Violations()
    value = _name(v, field, raw, limit, False)
    v.raise_any()
    return value


def validate_identifier(field: str, raw: str) -> str:
    """A required id (e.g. approval_id)."""
    v = _Violations()
    value = _identifier(v, field, raw)
    if not value:
        v.add(field, "must not be empty")
    v.raise_any()
    return value
