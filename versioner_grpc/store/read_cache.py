"""Encoded answers to reads, valid while the store's head revision is unchanged.

GetCurrent and ListHistory depend only on the stored deployments, and every
change to those comes with a new revision. So an answer computed at revision R
is still exact while the head is R: dashboards and CLIs polling the same
question cost one indexed lookup instead of a query and a conversion.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class RevisionCache:
    """A small LRU of encoded answers, each tagged with the revision it was read at.

    `entries=0` keeps nothing (every read cold: a benchmarking switch)."""

    def __init__(self, entries: int = 512, max_entry_bytes: int = 256 * 1024) -> None:
        self.entries = entries
        self.max_entry_bytes = max_entry_bytes
        self._items: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, head: int) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is None or found[0] != head:
                return None
            self._items.move_to_end(key)
            return found[1]

    def put(self, key: Hashable, revision: int, value: bytes) -> None:
        if len(value) > self.max_entry_bytes or not self.entries:
            return
        with self._lock:
            self._items[key] = (revision, value)
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
