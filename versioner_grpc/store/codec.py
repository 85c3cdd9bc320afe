"""Rows ↔ domain values. The event snapshot is the deployment as JSON."""

from __future__ import annotations

import json
from typing import Any

from versioner_grpc.domain.model import Deployment, EnvironmentType, Status


def deployment_from_row(row: Any) -> Deployment:
    """A Deployment from a Peewee row (or anything with the same attributes)."""
    return Deployment(
        id=row.id,
        product=row.product,
        version=row.version,
        environment=row.environment,
        environment_type=EnvironmentType(row.environment_type),
        status=Status(row.status),
        create_time=row.create_time,
        update_time=row.update_time,
        deployed_by=row.deployed_by,
        scm_branch=row.scm_branch,
        scm_sha=row.scm_sha,
        build_url=row.build_url,
        metadata=json.loads(row.metadata) if row.metadata else {},
        start_time=row.start_time,
        end_time=row.end_time,
        previous_version=row.previous_version,
        is_rollback=bool(row.is_rollback),
        scm_commit_time=row.scm_commit_time,
    )


def deployment_fields(d: Deployment) -> dict[str, Any]:
    """Column values for a deployment row."""
    return {
        "id": d.id,
        "product": d.product,
        "version": d.version,
        "environment": d.environment,
        "environment_type": int(d.environment_type),
        "status": int(d.status),
        "create_time": d.create_time,
        "update_time": d.update_time,
        "deployed_by": d.deployed_by,
        "scm_branch": d.scm_branch,
        "scm_sha": d.scm_sha,
        "build_url": d.build_url,
        "metadata": json.dumps(d.metadata, separators=(",", ":"), sort_keys=True),
        "start_time": d.start_time,
        "end_time": d.end_time,
        "previous_version": d.previous_version,
        "is_rollback": d.is_rollback,
        "scm_commit_time": d.scm_commit_time,
    }


def snapshot(d: Deployment) -> str:
    """The deployment as stored on its event, for replays and watch catch-up."""
    fields = deployment_fields(d)
    fields["metadata"] = d.metadata
    return json.dumps(fields, separators=(",", ":"), sort_keys=True)


class _Obj:
    def __init__(self, fields: dict[str, Any]) -> None:
        self.__dict__.update(fields)


def deployment_from_snapshot(text: str) -> Deployment:
    fields = json.loads(text)
    fields["metadata"] = json.dumps(fields.get("metadata") or {})
    return deployment_from_row(_Obj(fields))
