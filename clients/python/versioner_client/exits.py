"""The CLI's exit codes: one table, read by `describe_error`, `--help` and the docs.

A pipeline branches on these, so each code names one kind of outcome, and the
gRPC status codes that lead to it are listed here and nowhere else.
"""

from __future__ import annotations

import enum

import grpc

from versioner_client.errors import VersionerError


class Exit(enum.IntEnum):
    OK = 0
    ERROR = 1  # usage error, unreachable server, unexpected server error
    REJECTED = 4
    CONFLICT = (
        5  # also: blocked by a deployment rule (`versioner check`, `run --wait-for-approval`)
    )


EXIT_OK, EXIT_ERROR, EXIT_REJECTED, EXIT_CONFLICT = (
    Exit.OK,
    Exit.ERROR,
    Exit.REJECTED,
    Exit.CONFLICT,
)

# What each failed call's status means for the exit code; anything else is EXIT_ERROR.
CONNECTION_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
REJECTION_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
)
CONFLICT_CODES = (grpc.StatusCode.FAILED_PRECONDITION,)


def _names(codes: tuple[grpc.StatusCode, ...]) -> str:
    return ", ".join(code.name for code in codes)


MEANINGS: dict[Exit, str] = {
    Exit.OK: "ok (run: the command's own exit code; 128+N when killed by signal N)",
    Exit.ERROR: "usage error, server unreachable (after retries), or unexpected server error",
    Exit.REJECTED: f"rejected by the server ({_names(REJECTION_CODES)})",
    Exit.CONFLICT: f"precondition conflict ({_names(CONFLICT_CODES)}, e.g. VERSION_SHA_MISMATCH)",
}


def help_text() -> str:
    """The exit code table as `--help` prints it."""
    return "exit codes:\n" + "".join(f"  {int(code)}  {text}\n" for code, text in MEANINGS.items())


def describe_error(error: VersionerError, address: str) -> tuple[Exit, str]:
    """The exit code and the one stderr line for a failed call."""
    message = " ".join(str(error.message).split()) or error.code.name
    if error.code in CONNECTION_CODES:
        return Exit.ERROR, f"cannot reach {address}: {message}"
    if error.code in CONFLICT_CODES:
        reason = f" ({error.reason})" if error.reason else ""
        return Exit.CONFLICT, f"conflict{reason}: {message}"
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        return Exit.REJECTED, f"rejected: {' '.join(str(error).split())}"
    if error.code in REJECTION_CODES:
        return Exit.REJECTED, f"rejected ({error.code.name.lower().replace('_', ' ')}): {message}"
    return Exit.ERROR, f"server error ({error.code.name}): {message}"
