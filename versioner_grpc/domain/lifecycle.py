"""The lifecycle table (docs/DESIGN.md section 1), as one pure function.

    event ↓ / matching deployment →   none open   open PENDING   open STARTED
    PENDING                           new         duplicate      duplicate (no regress)
    STARTED                           new         → STARTED      duplicate
    COMPLETED / FAILED / ABORTED      new         → that state   → that state

A deployment that has ended is matched only by deployment_id: the same terminal
status again is a duplicate, another one is INVALID_TRANSITION, and a late
PENDING or STARTED only fills in a missing start_time.
"""

from __future__ import annotations

import enum

from versioner_grpc.domain.errors import FailedPrecondition
from versioner_grpc.domain.model import Status


class Action(enum.Enum):
    """What an event does to the deployment it matches."""

    CREATE = "create"  # no matching deployment: a new one
    TRANSITION = "transition"  # move to the event's status
    DUPLICATE = "duplicate"  # changes nothing
    FILL_START = "fill_start"  # ended deployment, late PENDING/STARTED: fill start_time only


def decide(stored: Status | None, event: Status, start_known: bool = True) -> Action:
    """Decide what `event` does to a deployment in status `stored` (None: no match).

    An ended deployment is only ever matched by `deployment_id`; the status never
    regresses and terminal states are final.
    """
    if stored is None:
        return Action.CREATE
    if stored.is_terminal:
        if event == stored:
            return Action.DUPLICATE
        if event.is_terminal:
            raise FailedPrecondition(
                "INVALID_TRANSITION",
                f"deployment already ended {stored.name}; it cannot become {event.name}",
                {"from": stored.name, "to": event.name},
            )
        return Action.DUPLICATE if start_known else Action.FILL_START
    if event.is_terminal:
        return Action.TRANSITION
    if stored == Status.PENDING and event == Status.STARTED:
        return Action.TRANSITION
    return Action.DUPLICATE
