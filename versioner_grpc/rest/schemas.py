"""The HTTP API's answers as models: documentation in /openapi.json, not a second encoder.

Routes build their JSON in `views` and answer it directly (no validation per
response); the tests check real answers against these models, so the document
says what the server sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class RuleViolationOut(BaseModel):
    rule_name: str
    kind: str = Field(description="approval, freeze, flow or concurrency")
    reason: str = Field(description="the ErrorInfo reason it would have been refused with")
    message: str


class DeploymentOut(BaseModel):
    id: str
    product_name: str
    version: str
    environment_name: str
    environment_type: str = Field(description="production, staging, test, development, unspecified")
    status: str = Field(description="pending, started, completed, failed or aborted")
    deployed_by: str
    scm_branch: str
    scm_sha: str
    build_url: str
    deploy_url: str = Field(description="the same as build_url (Versioner's name)")
    extra_metadata: dict[str, Any]
    deployed_at: str = Field(description="when it started, else when it was first reported")
    completed_at: str | None = Field(description="when it reached a terminal status")
    create_time: str
    start_time: str | None
    end_time: str | None
    update_time: str
    duration_seconds: float | None
    previous_version: str
    is_rollback: bool
    scm_commit_time: str | None
    approval_id: str = Field(description="the approval that let it through (empty: none)")
    override_reason: str = Field(description="set when a deployments:override token forced it")
    rule_violations: list[RuleViolationOut] = Field(description="report-mode rules it broke")


class RecordedOut(DeploymentOut):
    """POST /deployment-events/: the deployment after the event, and the event."""

    revision: int = Field(description="the event's revision (0 for a lifecycle duplicate)")
    duplicate: bool = Field(description="true when nothing was written")
    event_id: str
    event_status: str
    event_time: str
    recorded_by: str = Field(description="the name of the token that wrote it")


class EnvironmentStateOut(BaseModel):
    product_name: str
    environment_name: str
    environment_type: str
    current: DeploymentOut | None = Field(description="the COMPLETED one with the latest end")
    latest: DeploymentOut | None = Field(description="the most recent one, any status")


class CurrentOut(BaseModel):
    states: list[EnvironmentStateOut]
    revision: int = Field(description="the revision the answer was read at")


class HistoryOut(BaseModel):
    deployments: list[DeploymentOut]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: the end")
    revision: int


class EventOut(BaseModel):
    """The data of one `event: deployment` message of GET /deployments/watch."""

    revision: int
    event_id: str
    status: str
    event_time: str
    record_time: str
    recorded_by: str
    deployment: DeploymentOut
