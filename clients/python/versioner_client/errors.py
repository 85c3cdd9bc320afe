"""Client-side exceptions for Versioner RPC failures.

Callers branch on what went wrong (bad input, a rule conflict, the server is
down), not on grpc.StatusCode, and get the structured details the server sends
(google.rpc.BadRequest field violations, google.rpc.ErrorInfo reason) without
parsing trailers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field, as the server named it."""

    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}" if self.field else self.description


class VersionerError(Exception):
    """A failed Versioner call: the gRPC code, message and parsed error details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: tuple[FieldViolation, ...] = (),
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_violations = tuple(field_violations)
        self.reason = reason

    def __str__(self) -> str:
        if self.field_violations:
            return "; ".join(str(v) for v in self.field_violations)
        return self.message or self.code.name

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"field_violations={self.field_violations!r}, reason={self.reason!r})"
        )


class InvalidArgument(VersionerError):
    """The server rejected the input (see field_violations)."""


class PreconditionFailed(VersionerError):
    """A rule conflict, e.g. reason VERSION_SHA_MISMATCH or REVISION_COMPACTED."""


class Unavailable(VersionerError):
    """The server could not be reached (or did not answer in time) after retries."""


class Unauthenticated(VersionerError):
    """No valid credentials were presented."""


class PermissionDenied(VersionerError):
    """The credentials are valid but not allowed to do this."""


class NotFound(VersionerError):
    """A named thing that must exist does not."""


class ResourceExhausted(VersionerError):
    """A server limit was hit (for a watch: the consumer was too slow)."""


_BY_CODE: dict[grpc.StatusCode, type[VersionerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: PreconditionFailed,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def from_rpc_error(error: grpc.RpcError) -> VersionerError:
    """The VersionerError subclass for a grpc.RpcError, with its rich details parsed."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or ""
    violations: list[FieldViolation] = []
    reason = ""
    try:
        # What grpc raises is also a grpc.Call (trailing metadata); anything else
        # fails here with AttributeError and has no details.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except (ValueError, AttributeError, TypeError):
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = reason or info.reason
    cls = _BY_CODE.get(code, VersionerError)
    return cls(code, message, tuple(violations), reason)
