"""What the CLI prints: tables for people, JSON for scripts, one-line errors on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from versioner.v1 import deployment_service_pb2 as pb

from versioner_client.statuses import status_word


def err(line: str) -> None:
    """One line on stderr, prefixed so it reads as ours among a pipeline's output."""
    print(f"versioner: {line}", file=sys.stderr, flush=True)


def to_json(message: Message) -> dict[str, Any]:
    """A message as the JSON-ready dict the API documents (proto field names)."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def dump(value: Any, *, compact: bool = False) -> str:
    if compact:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(value, indent=2, ensure_ascii=False)


def humanize_age(then: datetime, now: datetime) -> str:
    """How long ago, in the largest whole unit ("2 hours ago"): read at a glance."""
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 45:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size) if unit == "minute" else seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'} ago"
    return "1 minute ago"


def format_time(value: datetime) -> str:
    """A UTC time a person reads at a glance: 2026-01-01T12:00:00Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(seconds: float) -> str:
    """A short duration: "12s", "1m05s", "2h03m"."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; trailing blanks trimmed."""
    rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


_ENV_ORDER = {
    pb.ENVIRONMENT_TYPE_DEVELOPMENT: 0,
    pb.ENVIRONMENT_TYPE_TEST: 1,
    pb.ENVIRONMENT_TYPE_STAGING: 2,
    pb.ENVIRONMENT_TYPE_PRODUCTION: 3,
    pb.ENVIRONMENT_TYPE_UNSPECIFIED: 4,
}


def _when(deployment: pb.Deployment) -> datetime | None:
    for field in ("end_time", "start_time", "create_time"):
        if deployment.HasField(field):
            stamp: Timestamp = getattr(deployment, field)
            return stamp.ToDatetime(tzinfo=UTC)
    return None


def format_current(states: Sequence[pb.EnvironmentState], now: datetime) -> list[str]:
    """The `current` table: what runs where, and what is happening there if different.

    Products are grouped; environments follow the pipeline (dev, test, staging,
    production). LATEST appears only when some environment's latest deployment
    is not its current one (in progress, failed...).
    """
    ordered = sorted(
        states,
        key=lambda s: (s.product_name, _ENV_ORDER.get(s.environment_type, 4), s.environment_name),
    )
    rows = []
    any_latest = False
    for state in ordered:
        if state.HasField("current"):
            current = state.current
            when = _when(current)
            row = [
                state.environment_name,
                state.product_name,
                current.version,
                humanize_age(when, now) if when else "-",
                f"by {current.deployed_by}" if current.deployed_by else "",
            ]
        else:
            row = [state.environment_name, state.product_name, "-", "never completed", ""]
        latest = ""
        if state.HasField("latest") and (
            not state.HasField("current") or state.latest.id != state.current.id
        ):
            latest = f"→ {state.latest.version} {status_word(state.latest.status)}"
            when = _when(state.latest)
            if when:
                latest += f" {humanize_age(when, now)}"
            any_latest = True
        rows.append([*row, latest])
    header = ["ENVIRONMENT", "PRODUCT", "VERSION", "DEPLOYED", "BY", "LATEST"]
    if not any_latest:
        header, rows = header[:-1], [row[:-1] for row in rows]
    return table(header, rows)


def format_history(deployments: Sequence[pb.Deployment]) -> list[str]:
    """The `history` table, newest first as the server sends it."""
    rows = []
    for d in deployments:
        when = d.create_time.ToDatetime(tzinfo=UTC) if d.HasField("create_time") else None
        duration = (
            format_duration(d.duration.ToTimedelta().total_seconds())
            if d.HasField("duration")
            else ""
        )
        rows.append(
            [
                format_time(when) if when else "-",
                status_word(d.status),
                d.product_name,
                d.version + (" (rollback)" if d.is_rollback else ""),
                d.environment_name,
                d.deployed_by,
                duration,
                d.id,
            ]
        )
    header = ["TIME", "STATUS", "PRODUCT", "VERSION", "ENVIRONMENT", "BY", "DURATION", "ID"]
    return table(header, rows)


def format_event(event: pb.Event) -> str:
    """One `watch` line: time, revision, status, product, version, environment, by."""
    d = event.deployment
    when = event.event_time if event.HasField("event_time") else event.record_time
    parts = [
        format_time(when.ToDatetime(tzinfo=UTC)),
        f"#{event.revision}",
        f"{status_word(event.status):<9}",
        d.product_name,
        d.version,
        d.environment_name,
    ]
    if d.deployed_by:
        parts.append(f"by {d.deployed_by}")
    return "  ".join(parts)
