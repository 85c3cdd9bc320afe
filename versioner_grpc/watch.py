"""The watch hub: catch-up from the store, then live fan-out, with no gap and no duplicate.

One consumer task advances `head`, the revision up to which every stored event
has been handed to every live watcher, strictly in revision order. Events come
from this replica's writer (taken straight from memory when they follow `head`)
or, when there is a gap, from the store, which other replicas also write to;
the store's word of writes elsewhere (PostgreSQL NOTIFY) and a slow poll say
when to look.

A watcher registers before it catches up from the store, then drops from its
live queue whatever the catch-up already covered. Each watcher has a bounded
queue: one that falls behind is ended with RESOURCE_EXHAUSTED and resumes from
its last revision; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from versioner_grpc.domain.errors import FailedPrecondition, ResourceExhausted, Unavailable
from versioner_grpc.domain.filters import Filters
from versioner_grpc.domain.model import Deployment, Status, StoredEvent
from versioner_grpc.store.store import Store

log = logging.getLogger("versioner.watch")
CATCH_UP_PAGE = 500
_CLOSED = object()


@dataclass(eq=False, slots=True)
class _Watcher:
    filters: Filters
    queue: asyncio.Queue[StoredEvent | object]  # events, or _CLOSED
    overflowed: bool = False
    match: Callable[[Deployment, Status], bool] = field(init=False)

    def __post_init__(self) -> None:
        self.match = self.filters.event_matcher


class WatchHub:
    """Fans committed events out to WatchDeployments streams."""

    def __init__(
        self,
        store: Store,
        *,
        progress_interval: float = 5.0,
        max_watchers: int = 10_000,
        buffer: int = 1_000,
        poll_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.progress_interval = progress_interval
        self.max_watchers = max_watchers
        self.buffer = buffer
        self.poll_interval = poll_interval
        self.head = 0
        self._watchers: set[_Watcher] = set()
        # A batch from this replica's writer, or None: look in the store.
        self._signals: asyncio.Queue[list[StoredEvent] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._stop_listening: Callable[[], None] = lambda: None

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        _, self.head = await self.store.revisions()
        self.store.subscribe(self._committed)
        self._tasks = [
            asyncio.create_task(self._consume(), name="watch-consume"),
            asyncio.create_task(self._poll(), name="watch-poll"),
        ]
        self._stop_listening = self.store.on_external_write(self.poke)

    async def close(self) -> None:
        """End every stream with UNAVAILABLE (clients reconnect elsewhere) and stop."""
        self._closed = True
        for watcher in list(self._watchers):
            # Buffered events can go: the client resumes from its last revision.
            while not watcher.queue.empty():
                watcher.queue.get_nowait()
            watcher.overflowed = False
            watcher.queue.put_nowait(_CLOSED)
        self._stop_listening()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Sources of news ---------------------------------------------------------

    def _committed(self, events: list[StoredEvent]) -> None:
        """Called on the writer thread after each commit."""
        if self._loop is not None and not self._closed:
            self._loop.call_soon_threadsafe(self._signals.put_nowait, events)

    def poke(self) -> None:
        """Something may have been written elsewhere: look in the store (thread-safe)."""
        if self._loop is not None and not self._closed:
            self._loop.call_soon_threadsafe(self._signals.put_nowait, None)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self._signals.put_nowait(None)

    async def _consume(self) -> None:
        while True:
            signal = await self._signals.get()
            try:
                if signal is not None and signal[-1].revision <= self.head:
                    continue
                if signal is not None and signal[0].revision <= self.head + 1:
                    self._deliver([e for e in signal if e.revision > self.head])
                    continue
                await self._fetch()
            except Unavailable as exc:
                log.warning("watch hub cannot read the store: %s", exc)
            except Exception:
                log.exception("watch hub failed to deliver events")

    async def _fetch(self) -> None:
        """Deliver everything the store holds after `head`."""
        while True:
            events, covered = await self.store.events_page(self.head, CATCH_UP_PAGE)
            self._deliver(events)
            self.head = max(self.head, covered)
            if len(events) < CATCH_UP_PAGE:
                return

    def _deliver(self, events: list[StoredEvent]) -> None:
        for event in events:
            deployment, status = event.deployment, event.status
            for watcher in self._watchers:
                if watcher.overflowed or not watcher.match(deployment, status):
                    continue
                try:
                    watcher.queue.put_nowait(event)
                except asyncio.QueueFull:
                    watcher.overflowed = True
            self.head = event.revision

    # Streams -----------------------------------------------------------------

    async def stream(self, filters: Filters, after: int | None) -> AsyncIterator[StoredEvent | int]:
        """Events (and progress revisions, as ints) for one WatchDeployments call."""
        if self._closed:
            raise Unavailable("server is shutting down")
        if len(self._watchers) >= self.max_watchers:
            raise ResourceExhausted(f"too many watchers (limit {self.max_watchers})")
        watcher = _Watcher(filters, asyncio.Queue(self.buffer))
        self._watchers.add(watcher)  # before catching up: nothing falls between
        try:
            if after is None:  # live only: whatever commits from now on
                _, sent = await self.store.revisions()
            else:
                oldest, _ = await self.store.revisions()
                if oldest and after < oldest - 1:
                    raise FailedPrecondition(
                        "REVISION_COMPACTED",
                        f"revision {after} is no longer stored (oldest is {oldest}): "
                        "list, then watch from the list's revision",
                        {"oldest_revision": str(oldest), "requested_revision": str(after)},
                    )
                sent = after
                while True:
                    events, covered = await self.store.events_page(sent, CATCH_UP_PAGE, filters)
                    for event in events:
                        yield event
                    sent = max(sent, covered)
                    if len(events) < CATCH_UP_PAGE:
                        break
            async for item in self._live(watcher, sent):
                yield item
        finally:
            self._watchers.discard(watcher)

    async def _live(self, watcher: _Watcher, sent: int) -> AsyncIterator[StoredEvent | int]:
        while True:
            if watcher.overflowed:
                raise ResourceExhausted(
                    f"watcher fell more than {self.buffer} events behind; "
                    f"resume with after_revision={sent}"
                )
            item: StoredEvent | object | None
            try:
                item = watcher.queue.get_nowait()
            except asyncio.QueueEmpty:
                item = None
            try:
                if item is None:
                    item = await asyncio.wait_for(watcher.queue.get(), self.progress_interval)
            except TimeoutError:
                if watcher.queue.empty() and not watcher.overflowed:
                    sent = max(sent, self.head)
                    yield sent
                continue
            if not isinstance(item, StoredEvent):  # _CLOSED
                raise Unavailable("server is shutting down; resume elsewhere")
            if item.revision > sent:
                sent = item.revision
                yield item
