"""Opaque page tokens for keyset pagination.

A token carries the last (create_time, id) of a page and a digest of the filters
it was made for, sealed with a checksum. A tampered token, or one from a query
with other filters, is INVALID_ARGUMENT. The seal is not a secret: a forged
token can only move the reader within what the filters already allow, so every
value in it is checked as strictly as client input (it is client input).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from versioner_grpc.domain.errors import InvalidArgument, invalid
from versioner_grpc.domain.filters import PageKey

_KEY = b"versioner.v1.ListHistory"
# Tokens this service issues are under 300 characters; anything longer is not ours
# and is refused before it is decoded.
MAX_TOKEN_CHARS = 512
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Deployment ids: generated UUIDs or client ids (validation.MAX_ID characters of this set).
_ID = re.compile(r"[A-Za-z0-9._:/@+=-]{1,128}")
_SCOPE = re.compile(r"[0-9a-f]{16}")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, key=_KEY, digest_size=8).digest()


def encode(filters_key: str, key: PageKey) -> str:
    scope = _digest(filters_key.encode()).hex()
    payload = json.dumps([1, scope, key.create_time, key.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload + _digest(payload)).decode().rstrip("=")


def _not_ours() -> InvalidArgument:
    return invalid("page_token", "is not a token this service issued")


def decode(filters_key: str, token: str) -> PageKey:
    """The position in `token`; INVALID_ARGUMENT unless it is ours and for these filters."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise _not_ours()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, binascii.Error) as exc:
        raise _not_ours() from exc
    payload, seal = raw[:-8], raw[-8:]
    if len(raw) <= 8 or _digest(payload) != seal:
        raise _not_ours()
    # One flat array of scalars: refuse any nesting before parsing, so no
    # client-chosen structure ever reaches a recursive decoder.
    if payload.count(b"[") != 1 or b"{" in payload or not payload.startswith(b"["):
        raise _not_ours()
    try:
        parsed = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise _not_ours() from exc
    if not isinstance(parsed, list) or len(parsed) != 4:
        raise _not_ours()
    version, scope, create_time, last_id = parsed
    # bool is a subclass of int: `true` must not pass as a number.
    if type(version) is not int or version != 1:
        raise _not_ours()
    if type(create_time) is not int or not INT64_MIN <= create_time <= INT64_MAX:
        raise _not_ours()
    if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
        raise _not_ours()
    if not isinstance(last_id, str) or not _ID.fullmatch(last_id):
        raise _not_ours()
    if scope != _digest(filters_key.encode()).hex():
        raise invalid("page_token", "was issued for other filters; keep the filters unchanged")
    return PageKey(create_time, last_id)
