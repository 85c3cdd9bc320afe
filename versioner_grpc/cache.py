"""The one cache: a small thread-safe LRU whose entries may be tied to a revision.

Everything cached is cached for the same reason (work that an unchanged store
would only repeat): encoded watch messages and batches by event revision, SSE
messages by event revision, encoded read answers while the head revision is
unchanged, and the metrics exposition while the head revision is unchanged.
Every change to what they depend on comes with a new revision, so an entry read
at revision R is exact while the head is R.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """Up to `entries` values; a value larger than `max_size` (by `size`) is not kept.

    `get(key, revision)` hits only when the entry was put with that revision;
    callers that cache immutable things leave the revision at its default.
    """

    def __init__(
        self,
        entries: int,
        *,
        size: Callable[[V], int] | None = None,
        max_size: int = 0,
    ) -> None:
        self.entries = entries
        self._size = size
        self._max_size = max_size
        self._items: OrderedDict[K, tuple[int, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, revision: int = 0) -> V | None:
        with self._lock:
            found = self._items.get(key)
            if found is None or found[0] != revision:
                return None
            self._items.move_to_end(key)
            return found[1]

    def put(self, key: K, value: V, revision: int = 0) -> None:
        if self._size is not None and self._size(value) > self._max_size:
            return
        with self._lock:
            self._items[key] = (revision, value)
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
