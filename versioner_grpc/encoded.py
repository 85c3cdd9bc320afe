"""Responses that are already encoded, and the serializer that sends them as they are.

Some answers are encoded once and sent many times: a watch event goes to every
watcher, and cached GetCurrent/ListHistory answers to every poller. The service
returns those as `PreEncoded`; the handlers it is registered with (service.py,
`add_to_server`) serialize a message, or pass pre-encoded bytes through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class PreEncoded(Generic[M]):
    """The wire bytes of an M, encoded ahead of time."""

    data: bytes

    @classmethod
    def of(cls, message: M) -> PreEncoded[M]:
        return cls(message.SerializeToString())


def serialize(response: Message | PreEncoded[Message]) -> bytes:
    """A response handler's serializer: encode a message, pass a PreEncoded through."""
    if isinstance(response, PreEncoded):
        return response.data
    return response.SerializeToString()
