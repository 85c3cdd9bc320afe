"""Opaque page tokens for keyset pagination.

A token carries the last (create_time, id) of a page and a digest of the filters
it was made for, sealed with a checksum. A tampered token, or one from a query
with other filters, is INVALID_ARGUMENT. The seal is not a secret: a forged
token can only move the reader within what the filters already allow.
"""

from __future__ import annotations

import base64
import hashlib
import json

from versioner_grpc.domain.errors import invalid
from versioner_grpc.domain.filters import PageKey

_KEY = b"versioner.v1.ListHistory"


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, key=_KEY, digest_size=8).digest()


def encode(filters_key: str, key: PageKey) -> str:
    scope = _digest(filters_key.encode()).hex()
    payload = json.dumps([1, scope, key.create_time, key.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload + _digest(payload)).decode().rstrip("=")


def decode(filters_key: str, token: str) -> PageKey:
    """The position in `token`; INVALID_ARGUMENT unless it is ours and for these filters."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload, seal = raw[:-8], raw[-8:]
        if len(raw) <= 8 or _digest(payload) != seal:
            raise ValueError("bad seal")
        version, scope, create_time, last_id = json.loads(payload)
        if version != 1 or not isinstance(create_time, int) or not isinstance(last_id, str):
            raise ValueError("bad payload")
    except (ValueError, TypeError) as exc:
        raise invalid("page_token", "is not a token this service issued") from exc
    if scope != _digest(filters_key.encode()).hex():
        raise invalid("page_token", "was issued for other filters; keep the filters unchanged")
    return PageKey(create_time, last_id)
