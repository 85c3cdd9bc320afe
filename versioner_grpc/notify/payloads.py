"""What a subscription receives: the webhook JSON, the Slack message, the signature.

Bodies are rendered once, when the delivery is created, and stored: every retry
sends the same bytes, so a receiver deduplicating on X-Versioner-Delivery (or on
the signature) sees the very same request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from versioner_grpc import convert
from versioner_grpc.domain.model import Deployment, Status, StoredEvent
from versioner_grpc.domain.notifications import TEST_EVENT_TYPE, Format, event_type

EMOJI = {
    "deployment.pending": ":hourglass_flowing_sand:",
    "deployment.started": ":rocket:",
    "deployment.completed": ":white_check_mark:",
    "deployment.failed": ":x:",
    "deployment.aborted": ":no_entry_sign:",
    "deployment.blocked": ":no_entry:",
    "deployment.override": ":warning:",
    "approval.requested": ":raising_hand:",
    "approval.approved": ":thumbsup:",
    "approval.rejected": ":thumbsdown:",
    TEST_EVENT_TYPE: ":wave:",
}
VERB = {
    "deployment.pending": "queued for",
    "deployment.started": "deploying to",
    "deployment.completed": "deployed to",
    "deployment.failed": "failed in",
    "deployment.aborted": "aborted in",
}


def rfc3339(us: int | None) -> str | None:
    if us is None:
        return None
    when = datetime.fromtimestamp(us / 1e6, tz=UTC)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def is_successful(kind: str) -> bool | None:
    if kind == "deployment.completed":
        return True
    if kind in ("deployment.failed", "deployment.blocked"):
        return False
    return None


def webhook_body(kind: str, revision: int, occurred_at: int, d: Deployment) -> dict[str, Any]:
    """Versioner's webhook fields, plus revision, occurred_at and the whole deployment."""
    return {
        "id": d.id,
        "event_type": kind,
        "deployed_at": rfc3339(d.end_time or d.start_time or occurred_at),
        "environment": d.environment,
        "is_successful": is_successful(kind),
        "deployer": d.deployed_by,
        "product_name": d.product,
        "version": d.version,
        "commit_sha": d.scm_sha,
        "source_url": d.build_url,
        "revision": revision,
        "occurred_at": rfc3339(occurred_at),
        "deployment": json_format.MessageToDict(
            convert.deployment(d), preserving_proto_field_name=True
        ),
    }


def _duration(us: int | None) -> str:
    if us is None:
        return ""
    seconds = round(us / 1e6)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


def slack_body(kind: str, d: Deployment) -> dict[str, Any]:
    """An incoming-webhook message: one readable line as `text`, the same in `blocks`."""
    emoji = EMOJI.get(kind, ":bell:")
    if kind == TEST_EVENT_TYPE:
        line = f"{emoji} Versioner test message: this channel will receive deployment events"
    else:
        verb = VERB.get(kind, kind)
        line = f"{emoji} *{d.product}* `{d.version}` {verb} *{d.environment}*"
        if d.deployed_by:
            line += f" by {d.deployed_by}"
        if d.duration is not None:
            line += f" in {_duration(d.duration)}"
        if d.build_url:
            line += f" (<{d.build_url}|build>)"
    plain = line.replace("*", "").replace("`", "")
    return {
        "text": plain,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": line}}],
    }


def render(fmt: Format, kind: str, revision: int, occurred_at: int, d: Deployment) -> str:
    if fmt is Format.SLACK:
        body = slack_body(kind, d)
    else:
        body = webhook_body(kind, revision, occurred_at, d)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def render_event(fmt: Format, event: StoredEvent) -> tuple[str, str]:
    kind = event_type(event.status)
    return kind, render(fmt, kind, event.revision, event.event_time, event.deployment)


def test_deployment(now: int) -> Deployment:
    """The sample a SendTest carries: clearly not a real deployment."""
    from versioner_grpc.domain.model import EnvironmentType

    return Deployment(
        id="test",
        product="versioner-test",
        version="0.0.0",
        environment="test",
        environment_type=EnvironmentType.TEST,
        status=Status.COMPLETED,
        create_time=now,
        update_time=now,
        start_time=now,
        end_time=now,
        deployed_by="versioner",
    )


def signature(secret: str, body: bytes) -> str:
    """X-Versioner-Signature: sha256=<hex HMAC-SHA256 of the raw body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
