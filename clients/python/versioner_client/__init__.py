"""Python client and CLI for Versioner gRPC (deployment tracking).

from versioner_client import VersionerClient

with VersionerClient("versioner.internal:50051", token=...) as client:
    client.record("my-service", "1.2.3", "production", "success")
    for event in client.watch(environment="production"):
        ...
"""

from versioner_client.ci import Origin, detect_ci
from versioner_client.client import VersionerClient
from versioner_client.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VersionerError,
)
from versioner_client.statuses import parse_status

__all__ = [
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "Origin",
    "PermissionDenied",
    "PreconditionFailed",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "VersionerClient",
    "VersionerError",
    "detect_ci",
    "parse_status",
]
