"""Rows ↔ domain values. The event snapshot is the deployment as JSON."""

from __future__ import annotations

import json
from typing import Any

from versioner_grpc.domain.model import Deployment, EnvironmentType, RuleViolation, Status
from versioner_grpc.store.sql import Row


def deployment_from_tuple(row: Row) -> Deployment:
    """A Deployment from a row selected with sql.DEPLOYMENT_COLUMNS, in that order."""
    (id_, product, version, environment, env_type, status, deployed_by, scm_branch, scm_sha,
     build_url, metadata, create_time, update_time, start_time, end_time, previous_version,
     is_rollback, scm_commit_time, *governance) = row  # fmt: skip
    approval_id, override_reason, violations = governance or ("", "", "")
    return Deployment(
        id=id_,
        product=product,
        version=version,
        environment=environment,
        environment_type=EnvironmentType(env_type),
        status=Status(status),
        create_time=create_time,
        update_time=update_time,
        deployed_by=deployed_by,
        scm_branch=scm_branch,
        scm_sha=scm_sha,
        build_url=build_url,
        metadata=json.loads(metadata) if metadata and metadata != "{}" else {},
        start_time=start_time,
        end_time=end_time,
        previous_version=previous_version,
        is_rollback=bool(is_rollback),
        scm_commit_time=scm_commit_time,
        approval_id=approval_id or "",
        override_reason=override_reason or "",
        rule_violations=violations_from_text(violations),
    )


def deployment_tuple(d: Deployment) -> Row:
    """Column values in sql.DEPLOYMENT_COLUMNS order."""
    return (
        d.id,
        d.product,
        d.version,
        d.environment,
        int(d.environment_type),
        int(d.status),
        d.deployed_by,
        d.scm_branch,
        d.scm_sha,
        d.build_url,
        json.dumps(d.metadata, separators=(",", ":"), sort_keys=True) if d.metadata else "{}",
        d.create_time,
        d.update_time,
        d.start_time,
        d.end_time,
        d.previous_version,
        d.is_rollback,
        d.scm_commit_time,
        d.approval_id,
        d.override_reason,
        violations_text(d.rule_violations),
    )


def violations_text(violations: tuple[RuleViolation, ...]) -> str:
    if not violations:
        return ""
    return json.dumps([[v.rule_name, v.kind, v.reason, v.message] for v in violations])


def violations_from_text(text: str | None) -> tuple[RuleViolation, ...]:
    if not text:
        return ()
    return tuple(RuleViolation(*item) for item in json.loads(text))


def snapshot(d: Deployment) -> str:
    """The deployment as stored on its event, for replays and watch catch-up."""
    values = deployment_tuple(d)
    return json.dumps([*values[:10], d.metadata, *values[11:]], separators=(",", ":"))


def deployment_from_snapshot(text: str) -> Deployment:
    values: list[Any] = json.loads(text)
    values[10] = json.dumps(values[10]) if values[10] else "{}"
    return deployment_from_tuple(tuple(values))
