"""Bearer tokens with scopes, from a file that stores only their SHA-256 hashes.

The auth file is TOML, one table per token, so issuing a token is an append:

    [[token]]
    name = "ci"
    sha256 = "9f86d0..."
    scopes = ["deployments:write"]

A presented token is hashed and compared with every stored hash in constant
time. The file is re-read on SIGHUP, so a leaked token is revoked by deleting
its table and sending one signal.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import os
import re
import secrets
import threading
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from versioner_grpc.domain.errors import PermissionDenied, Unauthenticated, VersionerError

READ = "deployments:read"
WRITE = "deployments:write"
APPROVE = "deployments:approve"
OVERRIDE = "deployments:override"
NOTIFY_ADMIN = "notifications:admin"
SCOPES = (READ, WRITE, APPROVE, OVERRIDE, NOTIFY_ADMIN)
SERVICE = "/versioner.v1.DeploymentService/"
GOVERNANCE = "/versioner.v1.GovernanceService/"
NOTIFY = "/versioner.v1.NotificationService/"
# The scope each RPC needs. Anything not listed (health, reflection) is open.
REQUIRED_SCOPE = {
    SERVICE + "RecordEvent": WRITE,
    SERVICE + "GetCurrent": READ,
    SERVICE + "ListHistory": READ,
    SERVICE + "WatchDeployments": READ,
    GOVERNANCE + "RequestApproval": WRITE,
    GOVERNANCE + "Approve": APPROVE,
    GOVERNANCE + "Reject": APPROVE,
    GOVERNANCE + "GetApproval": READ,
    GOVERNANCE + "ListApprovals": READ,
    GOVERNANCE + "CheckRules": READ,
    GOVERNANCE + "ListAudit": READ,
    NOTIFY + "CreateSubscription": NOTIFY_ADMIN,
    NOTIFY + "UpdateSubscription": NOTIFY_ADMIN,
    NOTIFY + "DeleteSubscription": NOTIFY_ADMIN,
    NOTIFY + "Redeliver": NOTIFY_ADMIN,
    NOTIFY + "SendTest": NOTIFY_ADMIN,
    NOTIFY + "ListSubscriptions": READ,
    NOTIFY + "ListDeliveries": READ,
}
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")

# The principal of the call being served; empty when authentication is off.
principal_name: contextvars.ContextVar[str] = contextvars.ContextVar("principal", default="")
# The scopes of that call's token; None when authentication is off (all allowed).
principal_scopes: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "principal_scopes", default=None
)


def has_scope(scope: str) -> bool:
    """Whether the call being served may use `scope` (always, without authentication)."""
    scopes = principal_scopes.get()
    return scopes is None or scope in scopes


@dataclass(frozen=True)
class Token:
    name: str
    sha256: bytes
    scopes: frozenset[str]


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(eq=False)
class OpenStream:
    """A streaming call admitted with a token: re-checked whenever the tokens change."""

    method: str
    digest: bytes
    end: Callable[[VersionerError], None]


class TokenFile:
    """The tokens of an auth file; `reload()` re-reads it and ends revoked streams."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tokens: tuple[Token, ...] = ()
        self._streams: set[OpenStream] = set()
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> int:
        """Re-read the file; on error keep the old tokens and raise. Returns the count.

        Every open stream whose token is gone, or no longer has the scope its
        method needs, is ended (UNAUTHENTICATED / PERMISSION_DENIED): revoking a
        token must not leave a stream it opened delivering.
        """
        self.tokens = tuple(load_tokens(self.path))
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            try:
                self._check(stream.method, stream.digest)
            except (Unauthenticated, PermissionDenied) as exc:
                self.release(stream)
                stream.end(exc)
        return len(self.tokens)

    def hold(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]],
        end: Callable[[VersionerError], None],
    ) -> OpenStream | None:
        """Track an admitted stream until `release`; `end(error)` is called on revocation."""
        presented = bearer(metadata)
        if method not in REQUIRED_SCOPE or presented is None:
            return None
        stream = OpenStream(method, hash_token(presented), end)
        with self._lock:
            self._streams.add(stream)
        return stream

    def release(self, stream: OpenStream | None) -> None:
        if stream is not None:
            with self._lock:
                self._streams.discard(stream)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def authenticate(self, presented: str) -> Token | None:
        return self._find(hash_token(presented))

    def _find(self, digest: bytes) -> Token | None:
        found = None
        for token in self.tokens:  # no early exit: every comparison costs the same
            if hmac.compare_digest(token.sha256, digest):
                found = token
        return found

    def authorize(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> str:
        """The caller's token name; raises before the call looks anything up."""
        scope = REQUIRED_SCOPE.get(method)
        if scope is None:
            return ""
        presented = bearer(metadata)
        if presented is None:
            raise Unauthenticated("missing bearer token: send 'authorization: Bearer <token>'")
        return self._check(method, hash_token(presented))

    def _check(self, method: str, digest: bytes) -> str:
        token = self._find(digest)
        if token is None:
            raise Unauthenticated("unknown or revoked token")
        scope = REQUIRED_SCOPE.get(method, "")
        if scope and scope not in token.scopes:
            raise PermissionDenied(f"token {token.name!r} lacks the {scope} scope")
        principal_scopes.set(token.scopes)
        return token.name


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, credentials = text.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    return None


def load_tokens(path: Path) -> list[Token]:
    with path.open("rb") as f:
        data = tomllib.load(f)
    tokens = []
    for i, entry in enumerate(data.get("token", [])):
        name, digest, scopes = entry.get("name"), entry.get("sha256", ""), entry.get("scopes")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{path}: token {i}: name must be 1-64 of A-Z a-z 0-9 . _ @ -")
        if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
            raise ValueError(f"{path}: token {name!r}: sha256 must be 64 hex digits")
        if not isinstance(scopes, list) or not set(scopes) <= set(SCOPES) or not scopes:
            raise ValueError(f"{path}: token {name!r}: scopes must be a subset of {SCOPES}")
        tokens.append(Token(name, bytes.fromhex(digest), frozenset(scopes)))
    return tokens


def create_token(path: str | Path, name: str, scopes: Sequence[str]) -> str:
    """Append a new token's hash to the auth file and return the token (shown once)."""
    path = Path(path)
    if not _NAME.match(name):
        raise ValueError("name must be 1-64 of A-Z a-z 0-9 . _ @ -")
    if not scopes or not set(scopes) <= set(SCOPES):
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    if path.exists() and any(t.name == name for t in load_tokens(path)):
        raise ValueError(f"a token named {name!r} already exists in {path}")
    token = "vrs_" + secrets.token_urlsafe(32)
    quoted = ", ".join(f'"{scope}"' for scope in scopes)
    entry = (
        f'\n[[token]]\nname = "{name}"\nsha256 = "{hash_token(token).hex()}"\nscopes = [{quoted}]\n'
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(entry)
    load_tokens(path)  # the file still parses
    return token
