"""Protobuf messages → the HTTP API's JSON, with Versioner's field names.

Statuses and environment types are lower-case words (`completed`, `production`),
times RFC 3339 in UTC, durations seconds. `deployed_at` is when the deployment
started (or was first seen), `completed_at` when it reached a terminal status,
`deploy_url` repeats `build_url` under the name Versioner's clients read.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from versioner.v1 import deployment_service_pb2 as pb

from versioner_grpc.rest import messages


def status_word(status: int) -> str:
    return str(pb.DeploymentStatus.Name(status)).removeprefix("DEPLOYMENT_STATUS_").lower()


def environment_type_word(kind: int) -> str:
    return str(pb.EnvironmentType.Name(kind)).removeprefix("ENVIRONMENT_TYPE_").lower()


def _time(message: Message, field: str) -> str | None:
    if not message.HasField(field):
        return None
    value: str = getattr(message, field).ToJsonString()
    return value


def deployment(d: pb.Deployment) -> dict[str, Any]:
    start, create = _time(d, "start_time"), _time(d, "create_time")
    return {
        "id": d.id,
        "product_name": d.product_name,
        "version": d.version,
        "environment_name": d.environment_name,
        "environment_type": environment_type_word(d.environment_type),
        "status": status_word(d.status),
        "deployed_by": d.deployed_by,
        "scm_branch": d.scm_branch,
        "scm_sha": d.scm_sha,
        "build_url": d.build_url,
        "deploy_url": d.build_url,
        "extra_metadata": messages.whole(json_format.MessageToDict(d.extra_metadata)),
        "deployed_at": start or create,
        "completed_at": _time(d, "end_time"),
        "create_time": create,
        "start_time": start,
        "end_time": _time(d, "end_time"),
        "update_time": _time(d, "update_time"),
        "duration_seconds": d.duration.ToTimedelta().total_seconds()
        if d.HasField("duration")
        else None,
        "previous_version": d.previous_version,
        "is_rollback": d.is_rollback,
        "scm_commit_time": _time(d, "scm_commit_time"),
        "approval_id": d.approval_id,
        "override_reason": d.override_reason,
        "rule_violations": [messages.view(v) for v in d.rule_violations],
    }


def event(e: pb.Event) -> dict[str, Any]:
    return {
        "revision": e.revision,
        "event_id": e.event_id,
        "status": status_word(e.status),
        "event_time": _time(e, "event_time"),
        "record_time": _time(e, "record_time"),
        "recorded_by": e.recorded_by,
        "deployment": deployment(e.deployment),
    }


def recorded(response: pb.RecordEventResponse) -> dict[str, Any]:
    """POST /deployment-events/: the deployment after the event, plus the event's facts."""
    body = deployment(response.event.deployment)
    body.update(
        revision=response.event.revision,
        duplicate=response.duplicate,
        event_id=response.event.event_id,
        event_status=status_word(response.event.status),
        event_time=_time(response.event, "event_time"),
        recorded_by=response.event.recorded_by,
    )
    return body


def state(s: pb.EnvironmentState) -> dict[str, Any]:
    return {
        "product_name": s.product_name,
        "environment_name": s.environment_name,
        "environment_type": environment_type_word(s.environment_type),
        "current": deployment(s.current) if s.HasField("current") else None,
        "latest": deployment(s.latest) if s.HasField("latest") else None,
    }
