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

from versioner_grpc import convert, convert_governance
from versioner_grpc.domain.model import Deployment, Status, StoredEvent
from versioner_grpc.domain.notifications import (
    TEST_EVENT_TYPE,
    Format,
    event_type,
)
from versioner_grpc.governance.notices import GovernanceEvent

EMOJI = {
    "deployment.pending": ":hourglass_flowing_sand:",
    "deployment.started": ":rocket:",
    "deployment.completed": ":white_check_mark:",
    "deployment.failed": ":x:",
    "deployment.aborted": ":no_entry_sign:",
    "deployment.blocked": ":no_entry_sign:",
    "deployment.override": ":warning:",
    "approval.requested": ":closed_lock_with_key:",
    "approval.approved": ":white_check_mark:",
    "approval.rejected": ":x:",
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


def _proto_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def governance_webhook_body(g: GovernanceEvent) -> dict[str, Any]:
    """Versioner's fields for a governance event, plus what it is about.

    `deployment`: the deployment an override let through; for a blocked
    attempt, what was attempted (no deployment exists). `rule`: the blocking
    rule, or the rules an override passed. `approval`: the whole request
    (proto JSON mapping) as it stood at that moment, for approval events.
    """
    e, d, details = g.entry, g.deployment, g.entry.details
    body: dict[str, Any] = {
        "id": d.id if d else (e.deployment_id or e.approval_id),
        "event_type": g.kind,
        "deployed_at": rfc3339(e.time),
        "environment": e.environment,
        "is_successful": is_successful(g.kind),
        "deployer": (d.deployed_by if d else details.get("deployed_by")) or e.principal or None,
        "product_name": e.product,
        "version": e.version,
        "commit_sha": d.scm_sha if d else None,
        "source_url": d.build_url if d else None,
        "revision": g.revision,
        "audit_id": e.id,
        "occurred_at": rfc3339(e.time),
        "principal": e.principal,
    }
    if d is not None:
        body["deployment"] = _proto_json(convert.deployment(d))
    elif g.kind == "deployment.blocked":
        body["deployment"] = {
            "id": e.deployment_id,
            "product_name": e.product,
            "version": e.version,
            "environment_name": e.environment,
            "environment_type": f"ENVIRONMENT_TYPE_{g.environment_type.name}",
            "status": f"DEPLOYMENT_STATUS_{details.get('status', 'UNSPECIFIED')}",
            "deployed_by": details.get("deployed_by", ""),
            "event_id": details.get("event_id", ""),
        }
    if g.kind == "deployment.blocked":
        body["rule"] = {
            "name": e.rule_name,
            "reason": details.get("reason", ""),
            "message": details.get("message", ""),
            "metadata": details.get("metadata", {}),
        }
    elif g.kind == "deployment.override":
        body["override_reason"] = details.get("override_reason", "")
        body["rule"] = {"name": e.rule_name}
        body["violations"] = details.get("violations", [])
    if g.approval is not None:
        body["approval"] = _proto_json(convert_governance.approval(g.approval, e.time))
    elif e.approval_id:
        body["approval"] = {"id": e.approval_id}
    return body


def governance_slack_body(g: GovernanceEvent) -> dict[str, Any]:
    """One readable line per governance event, with the rule or the approval id."""
    e, details = g.entry, g.entry.details
    emoji = EMOJI.get(g.kind, ":bell:")
    what = f"*{e.product}* `{e.version}` in *{e.environment}*"
    if g.kind == "deployment.blocked":
        who = details.get("deployed_by") or e.principal
        line = f"{emoji} {what} blocked by rule *{e.rule_name}*"
        if details.get("message"):
            line += f": {details['message']}"
        if who:
            line += f" (attempted by {who})"
    elif g.kind == "deployment.override":
        line = f"{emoji} {what}: override by {e.principal or 'unknown'}"
        line += f": {details.get('override_reason', '')} (rule *{e.rule_name}* not satisfied)"
    else:
        verb = {
            "approval.requested": "approval requested",
            "approval.approved": "approved",
            "approval.rejected": "rejected",
        }[g.kind]
        line = f"{emoji} {what}: {verb}"
        comment = g.approval.reason if g.approval and g.kind == "approval.requested" else ""
        if g.approval and g.kind != "approval.requested":
            comment = next(
                (d.comment for d in reversed(g.approval.decisions) if d.principal == e.principal),
                "",
            )
        line += f" by {e.principal}" if e.principal else ""
        line += f": {comment}" if comment else ""
        line += f" (approval `{e.approval_id}`)"
    plain = line.replace("*", "").replace("`", "")
    return {
        "text": plain,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": line}}],
    }


def render_governance(fmt: Format, g: GovernanceEvent) -> tuple[str, str]:
    body = governance_slack_body(g) if fmt is Format.SLACK else governance_webhook_body(g)
    return g.kind, json.dumps(body, separators=(",", ":"), ensure_ascii=False)


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
