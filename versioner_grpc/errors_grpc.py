"""Domain errors → gRPC status codes with google.rpc details. The one place they are mapped."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from versioner_grpc.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VersionerError,
)

DOMAIN = "versioner.dev"


def _packed(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(exc: VersionerError) -> grpc.Status:
    """The gRPC status (code, message, details) a client sees for `exc`."""
    if isinstance(exc, InvalidArgument):
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in exc.violations
            ]
        )
        proto = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[_packed(details)]
        )
    elif isinstance(exc, FailedPrecondition):
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=exc.metadata)
        proto = status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION, message=str(exc), details=[_packed(info)]
        )
    elif isinstance(exc, NotFound):
        proto = status_pb2.Status(code=code_pb2.NOT_FOUND, message=str(exc))
    elif isinstance(exc, ResourceExhausted):
        proto = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=str(exc))
    elif isinstance(exc, Unauthenticated):
        proto = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message=str(exc))
    elif isinstance(exc, PermissionDenied):
        proto = status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=str(exc))
    elif isinstance(exc, Unavailable):
        proto = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc))
    else:
        proto = status_pb2.Status(code=code_pb2.INTERNAL, message=str(exc))
    return rpc_status.to_status(proto)
