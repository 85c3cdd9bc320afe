"""Domain values: statuses, environment types, events and deployments.

Times are integers: microseconds since the Unix epoch, UTC. They compare,
store and subtract exactly on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.IntEnum):
    """Deployment status; numbers match the proto enum."""

    UNSPECIFIED = 0
    PENDING = 1
    STARTED = 2
    COMPLETED = 3
    FAILED = 4
    ABORTED = 5

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_open(self) -> bool:
        return self in (Status.PENDING, Status.STARTED)


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.ABORTED})


class EnvironmentType(enum.IntEnum):
    """Environment kind; numbers match the proto enum."""

    UNSPECIFIED = 0
    PRODUCTION = 1
    STAGING = 2
    TEST = 3
    DEVELOPMENT = 4


@dataclass(frozen=True)
class EventInput:
    """A validated, normalized status report, ready to be applied."""

    product: str
    version: str
    environment: str
    status: Status
    event_time: int
    event_id: str
    event_id_given: bool
    deployment_id: str = ""
    deployed_by: str = ""
    scm_branch: str = ""
    scm_sha: str = ""
    build_url: str = ""
    metadata: dict[str, Any] | None = None
    scm_commit_time: int | None = None
    recorded_by: str = ""
    override_reason: str = ""  # break-glass: pass every rule (scope deployments:override)


@dataclass(frozen=True)
class RuleViolation:
    """A rule in report mode that was not satisfied (or one an override passed)."""

    rule_name: str
    kind: str
    reason: str
    message: str


@dataclass
class Deployment:
    """One attempt to put a version of a product into an environment."""

    id: str
    product: str
    version: str
    environment: str
    environment_type: EnvironmentType
    status: Status
    create_time: int
    update_time: int
    deployed_by: str = ""
    scm_branch: str = ""
    scm_sha: str = ""
    build_url: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    start_time: int | None = None
    end_time: int | None = None
    previous_version: str = ""
    is_rollback: bool = False
    scm_commit_time: int | None = None
    # Governance: what let it through (docs/DESIGN.md section 6).
    approval_id: str = ""
    override_reason: str = ""
    rule_violations: tuple[RuleViolation, ...] = ()

    @property
    def duration(self) -> int | None:
        """end - start in microseconds, when both are known (never negative)."""
        if self.start_time is None or self.end_time is None:
            return None
        return max(0, self.end_time - self.start_time)


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: its revision and the deployment right after it."""

    revision: int
    event_id: str
    status: Status
    event_time: int
    record_time: int
    deployment: Deployment
    recorded_by: str = ""


@dataclass(frozen=True)
class RecordResult:
    """What RecordEvent answers: the event, and whether nothing was written."""

    event: StoredEvent
    duplicate: bool


@dataclass(frozen=True)
class EnvironmentState:
    """What runs in one environment of one product."""

    product: str
    environment: str
    environment_type: EnvironmentType
    current: Deployment | None
    latest: Deployment | None


Stored = bytes | Deployment
"""A deployment as a read returns it: its stored encoding, or (for a row written
without one) the deployment itself, for the caller to encode."""


@dataclass(frozen=True)
class StoredState:
    """What runs in one place (a product x environment), deployments as stored."""

    product: str
    environment: str
    environment_type: EnvironmentType
    current: Stored | None
    latest: Stored | None
