"""Protobuf ↔ domain values: deployments, events, states, times, metadata."""

from __future__ import annotations

from typing import Any, cast

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from versioner.v1 import deployment_service_pb2 as pb

from versioner_grpc.domain.errors import invalid
from versioner_grpc.domain.model import Deployment, EnvironmentState, StoredEvent


def us_from_timestamp(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


# google.protobuf.Timestamp's valid range: 0001-01-01 to 9999-12-31.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799


def optional_us(message: Message, field: str) -> int | None:
    """The field's time in microseconds, or None when unset; out of range is invalid."""
    if not message.HasField(field):
        return None
    ts = getattr(message, field)
    if not (MIN_SECONDS <= ts.seconds <= MAX_SECONDS and 0 <= ts.nanos < 1_000_000_000):
        raise invalid(field, "is not a valid timestamp (years 1 to 9999, nanos 0 to 999999999)")
    return us_from_timestamp(ts)


def wire_status(status: int) -> pb.DeploymentStatus:
    """A status for a message field: protoc's .pyi types enum fields as the enum
    class, while at runtime they hold plain ints (the numbers match the domain's)."""
    return cast(pb.DeploymentStatus, int(status))


def timestamp(us: int) -> timestamp_pb2.Timestamp:
    seconds, micros = divmod(us, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def metadata_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(struct)
    except ValueError as exc:  # NaN or infinity: not representable in JSON
        raise invalid("extra_metadata", "numbers must be finite (no NaN or infinity)") from exc


def _time(us: int) -> dict[str, int]:
    """A Timestamp or Duration as constructor keywords (cheaper than building one)."""
    seconds, micros = divmod(us, 1_000_000)
    return {"seconds": seconds, "nanos": micros * 1000}


def deployment(d: Deployment) -> pb.Deployment:
    fields: dict[str, Any] = {
        "id": d.id,
        "product_name": d.product,
        "version": d.version,
        "environment_name": d.environment,
        "environment_type": int(d.environment_type),
        "status": int(d.status),
        "deployed_by": d.deployed_by,
        "scm_branch": d.scm_branch,
        "scm_sha": d.scm_sha,
        "build_url": d.build_url,
        "create_time": _time(d.create_time),
        "update_time": _time(d.update_time),
        "previous_version": d.previous_version,
        "is_rollback": d.is_rollback,
    }
    if d.start_time is not None:
        fields["start_time"] = _time(d.start_time)
    if d.end_time is not None:
        fields["end_time"] = _time(d.end_time)
    if d.duration is not None:
        fields["duration"] = _time(d.duration)
    if d.scm_commit_time is not None:
        fields["scm_commit_time"] = _time(d.scm_commit_time)
    if d.approval_id:
        fields["approval_id"] = d.approval_id
    if d.override_reason:
        fields["override_reason"] = d.override_reason
    if d.rule_violations:
        fields["rule_violations"] = [
            pb.RuleViolation(rule_name=v.rule_name, kind=v.kind, reason=v.reason, message=v.message)
            for v in d.rule_violations
        ]
    msg = pb.Deployment(**fields)
    if d.metadata:
        msg.extra_metadata.update(d.metadata)
    return msg


def encoded_deployment(d: Deployment) -> bytes:
    """The bytes stored beside a deployment's row (store.events.Encoder)."""
    return deployment(d).SerializeToString()


def event(e: StoredEvent) -> pb.Event:
    return pb.Event(
        revision=e.revision,
        event_id=e.event_id,
        status=wire_status(e.status),
        event_time=timestamp(e.event_time),
        record_time=timestamp(e.record_time),
        deployment=deployment(e.deployment),
        recorded_by=e.recorded_by,
    )


def state(s: EnvironmentState) -> pb.EnvironmentState:
    msg = pb.EnvironmentState(
        product_name=s.product,
        environment_name=s.environment,
        environment_type=cast(pb.EnvironmentType, int(s.environment_type)),
    )
    if s.current is not None:
        msg.current.CopyFrom(deployment(s.current))
    if s.latest is not None:
        msg.latest.CopyFrom(deployment(s.latest))
    return msg
