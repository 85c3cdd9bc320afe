"""Status words people and CI systems use, mapped onto DeploymentStatus.

Pipelines say "success", "deployed", "cancelled"...; the wire speaks
DEPLOYMENT_STATUS_*. Accepting the common words (case-insensitive) lets a
pipeline pass its own job status straight through.
"""

from __future__ import annotations

from typing import cast

from versioner.v1 import deployment_service_pb2 as pb

# The Node client keeps a copy (STATUS_WORDS in clients/node/src/client.js);
# tests/test_status_aliases.py fails when the two differ.
ALIASES: dict[int, tuple[str, ...]] = {
    pb.DEPLOYMENT_STATUS_PENDING: ("pending", "queued", "scheduled"),
    pb.DEPLOYMENT_STATUS_STARTED: ("started", "in_progress", "init", "deploying"),
    pb.DEPLOYMENT_STATUS_COMPLETED: ("completed", "success", "complete", "finished", "deployed"),
    pb.DEPLOYMENT_STATUS_FAILED: ("failed", "fail", "failure", "error"),
    pb.DEPLOYMENT_STATUS_ABORTED: (
        "aborted",
        "abort",
        "cancelled",
        "canceled",
        "cancel",
        "skipped",
    ),
}

STATUS_BY_WORD: dict[str, int] = {
    word: status for status, words in ALIASES.items() for word in words
} | {pb.DeploymentStatus.Name(status).lower(): status for status in ALIASES}

ACCEPTED_WORDS: tuple[str, ...] = tuple(word for words in ALIASES.values() for word in words)


def parse_status(word: str | int) -> pb.DeploymentStatus:
    """The DeploymentStatus value for an alias, an enum name or an enum value.

    Raises ValueError naming the accepted words, so a typo in a pipeline fails
    loudly instead of recording the wrong status.
    """
    if isinstance(word, int) and not isinstance(word, bool):
        if word in ALIASES:
            return _wire(word)
        raise ValueError(f"unknown deployment status {word!r}")
    key = str(word).strip().lower().replace("-", "_")
    try:
        return _wire(STATUS_BY_WORD[key])
    except KeyError:
        raise ValueError(
            f"unknown deployment status {word!r}; use one of: {', '.join(ACCEPTED_WORDS)}"
        ) from None


def _wire(status: int) -> pb.DeploymentStatus:
    """protoc's .pyi types enum fields as the enum class; at runtime they are ints."""
    return cast(pb.DeploymentStatus, status)


def status_word(status: int) -> str:
    """The short lower-case name of a status ("completed"), for display."""
    name = pb.DeploymentStatus.Name(status) if status in pb.DeploymentStatus.values() else ""
    return name.removeprefix("DEPLOYMENT_STATUS_").lower() or str(status)
