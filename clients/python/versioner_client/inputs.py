"""Command-line values: times, durations ago, metadata, booleans.

Each raises UsageError (exit 1) naming what it wanted, so a typo in a pipeline
fails before anything is sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class UsageError(Exception):
    """Bad command-line input found after parsing (exit 1)."""


def parse_time(text: str) -> datetime:
    """An ISO 8601 time ("2026-01-01T00:00:00Z", "2026-01-01"); naive means UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {text!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_since(text: str, now: datetime | None = None, option: str = "--since") -> datetime:
    """A point in time from "7d", "24h", "30m", "1h30m", "2w" (ago) or an ISO 8601 time."""
    compact = text.strip().lower().replace(" ", "")
    if compact and _DURATION_PART.sub("", compact) == "":
        seconds = sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(compact))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        return parse_time(text)
    except UsageError:
        raise UsageError(
            f"{option} wants a duration like 7d, 24h, 30m or an ISO time, not {text!r}"
        ) from None


def parse_metadata(pairs: Sequence[str] | None, json_text: str | None) -> dict[str, Any]:
    """extra_metadata from repeated key=value (values stay strings) or one JSON object."""
    if json_text is not None:
        try:
            value = json.loads(json_text)
        except json.JSONDecodeError as error:
            raise UsageError(f"--metadata-json is not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise UsageError('--metadata-json must be a JSON object, e.g. \'{"ticket": "OPS-1"}\'')
        return value
    metadata: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--metadata wants key=value, not {pair!r}")
        metadata[key.strip()] = value
    return metadata


def parse_bool(name: str, text: str) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off/empty."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UsageError(f"{name} must be true or false, not {text!r}")
