"""What a reader asks for, and the one rule that says whether a deployment matches.

History pages, event pages and the live watch all select with `Filters`: the
store turns `criteria()` into SQL, the watch hub applies `matches()` in memory,
so the three can only differ if this module does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from versioner_grpc.domain.model import Deployment, Status, StoredEvent


@dataclass(frozen=True)
class Filters:
    """Which deployments or events a reader wants; empty means all."""

    product: str = ""
    environment: str = ""
    statuses: frozenset[Status] = frozenset()
    version: str = ""
    deployed_by: str = ""
    since: int | None = None  # create_time >= since
    until: int | None = None  # create_time < until

    def key(self) -> str:
        """A stable text form, so a page token can prove it belongs to these filters."""
        return json.dumps(
            [
                self.product,
                self.environment,
                sorted(int(s) for s in self.statuses),
                self.version,
                self.deployed_by,
                self.since,
                self.until,
            ]
        )

    def equalities(self) -> dict[str, str]:
        """The text fields that must be equal, by Deployment attribute name (set ones only)."""
        return dict(self._equal)

    @cached_property
    def _equal(self) -> tuple[tuple[str, str], ...]:
        fields = (
            ("product", self.product),
            ("environment", self.environment),
            ("version", self.version),
            ("deployed_by", self.deployed_by),
        )
        return tuple((name, value) for name, value in fields if value)

    def matches(self, deployment: Deployment, status: Status | None = None) -> bool:
        """Whether `deployment` (with `status` in place of its own, for an event) is wanted.

        The rule: every set text field equal, the status among `statuses` (if
        any), create_time within [since, until). The store's SQL says the same.
        """
        if any(getattr(deployment, name) != value for name, value in self._equal):
            return False
        if self.statuses and (deployment.status if status is None else status) not in self.statuses:
            return False
        if self.since is not None and deployment.create_time < self.since:
            return False
        return self.until is None or deployment.create_time < self.until

    @cached_property
    def event_matcher(self) -> Callable[[Deployment, Status], bool]:
        """`matches(deployment, status)` for events, built once: the watch hub tests
        every event against every watcher, whose filters name a product, an
        environment and statuses at most, so those get a function of their own."""
        if self.version or self.deployed_by or self.since is not None or self.until is not None:
            return self.matches
        product, environment, statuses = self.product, self.environment, self.statuses

        def match(deployment: Deployment, status: Status) -> bool:
            return (
                (not product or deployment.product == product)
                and (not environment or deployment.environment == environment)
                and (not statuses or status in statuses)
            )

        return match

    def matches_event(self, event: StoredEvent) -> bool:
        """An event matches by the deployment it produced and its own status."""
        return self.event_matcher(event.deployment, event.status)


@dataclass(frozen=True)
class PageKey:
    """Keyset position in the history: the last (create_time, id) a page returned."""

    create_time: int
    id: str
