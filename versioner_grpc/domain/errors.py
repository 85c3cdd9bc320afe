"""Domain errors: plain exceptions that know nothing of gRPC.

`versioner_grpc.errors_grpc` maps them to status codes in one place.
"""

from __future__ import annotations

from collections.abc import Mapping


class VersionerError(Exception):
    """Base of every error a client can cause or observe."""


class InvalidArgument(VersionerError):
    """Bad input: each violation names the offending field."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{field}: {why}" for field, why in violations))


class FailedPrecondition(VersionerError):
    """The input is well formed but breaks a rule given what is stored."""

    def __init__(self, reason: str, message: str, metadata: Mapping[str, str] | None = None):
        self.reason = reason
        self.metadata = dict(metadata or {})
        super().__init__(message)


class NotFound(VersionerError):
    """A thing the call names by id does not exist (a deployment, an approval, a subscription)."""


class ResourceExhausted(VersionerError):
    """A limit was reached (too many watchers, a watcher too slow)."""


class Unauthenticated(VersionerError):
    """No credentials, or credentials nobody issued."""


class PermissionDenied(VersionerError):
    """Known credentials without the scope the call needs."""


class Unavailable(VersionerError):
    """The database cannot be reached; the call may be retried."""


def invalid(field: str, why: str) -> InvalidArgument:
    """One-violation shorthand."""
    return InvalidArgument([(field, why)])
