"""The watch hub: catch-up from the store, then live fan-out, with no gap and no duplicate.

One consumer task advances `head`, the revision up to which every stored event
is in the hub's log, strictly in revision order. Events come from this
replica's writer (taken straight from memory when they follow `head`) or, when
there is a gap, from the store, which other replicas also write to; PostgreSQL
NOTIFY (the store's word of writes elsewhere) and a slow poll say when to look.

The log is shared: a watcher is a cursor into it (`sent`), not a queue, so
fanning an event out costs nothing per watcher until the watcher's own task
runs. A fan-out task wakes the watchers that are behind, a bounded number at a
time, and then pauses in proportion to the time the round took, so that
RecordEvent keeps most of the event loop however many streams are open (the way
etcd's watch server and the Kubernetes watch cache keep writers fast). A woken
watcher takes everything after its cursor that matches its filters; a stream
that asked for batches gets it in one message, so under load batches grow
instead of messages multiplying.

A watcher registers before it catches up from the store, then goes live from
where the catch-up ended. A watcher whose cursor falls more than `buffer`
events behind the log's newest event is ended with RESOURCE_EXHAUSTED and
resumes from its last revision; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from versioner_grpc.domain.errors import FailedPrecondition, ResourceExhausted, Unavailable
from versioner_grpc.domain.filters import Filters
from versioner_grpc.domain.model import Deployment, Status, StoredEvent
from versioner_grpc.store.store import Store

log = logging.getLogger("versioner.watch")
CATCH_UP_PAGE = 500
# Fan-out pacing: at most this many watchers are woken at once; a round waits
# for their sends (at most ROUND_WAIT seconds, and not once a quarter of the
# buffer has arrived meanwhile), and the next round starts after a
# pause of PAUSE_FACTOR x the round's duration (at most MAX_PAUSE seconds, and
# cut short once a quarter of the buffer has arrived), so fan-out takes about
# 1 / (1 + PAUSE_FACTOR) of the loop under load, delivery stays within about a
# second, and the pacing itself never pushes a watcher beyond the buffer.
WAKE_CHUNK = 100
ROUND_WAIT = 0.2
PAUSE_FACTOR = 4.0
MAX_PAUSE = 0.6
MIN_PAUSE = 0.001
DIRECT_WAKE = 8  # up to this many streams, new events wake them straight away

WatchItem = list[StoredEvent] | int
"""What a stream yields: events in revision order (one message), or a progress revision."""


def _filtered(filters: Filters) -> bool:
    """Whether a watcher wants only some events (watch filters name a product, an
    environment and statuses at most; otherwise every event is a match)."""
    return bool(filters.product or filters.environment or filters.statuses)


@dataclass(eq=False)
class _Watcher:
    filters: Filters
    limit: int
    sent: int
    """Every event up to this revision was sent to this stream or did not match."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    live: bool = False
    waiting: bool = False
    round: int = 0
    match: Callable[[Deployment, Status], bool] = field(init=False)

    def __post_init__(self) -> None:
        self.match = self.filters.event_matcher  # the one filter rule, built once


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
        self._revisions: list[int] = []  # the log: revisions ...
        self._events: list[StoredEvent] = []  # ... and their events, oldest first
        self._dropped = 0  # the newest revision no longer in the log
        self._watchers: set[_Watcher] = set()
        self._signals: asyncio.Queue[list[StoredEvent] | None] = asyncio.Queue()
        self._dirty = asyncio.Event()
        self._round = 0
        self._round_left = 0
        self._round_done = asyncio.Event()
        self._appended = 0  # events appended since the fan-out's last pause
        self._urgent = asyncio.Event()  # ... enough of them to end that pause
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
        self._dropped = self.head
        self.store.subscribe(self._committed)
        self._tasks = [
            asyncio.create_task(self._consume(), name="watch-consume"),
            asyncio.create_task(self._poll(), name="watch-poll"),
            asyncio.create_task(self._fan_out(), name="watch-fan-out"),
        ]
        self._stop_listening = self.store.on_external_write(self.poke)

    async def close(self) -> None:
        """End every stream with UNAVAILABLE (clients reconnect elsewhere) and stop."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.wake.set()
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
                    self._append([e for e in signal if e.revision > self.head])
                    continue
                await self._fetch()
            except Unavailable as exc:
                log.warning("watch hub cannot read the store: %s", exc)
            except Exception:
                log.exception("watch hub failed to deliver events")

    async def _fetch(self) -> None:
        """Append everything the store holds after `head`."""
        while True:
            events, covered = await self.store.events_page(self.head, CATCH_UP_PAGE)
            self._append(events)
            self.head = max(self.head, covered)
            if len(events) < CATCH_UP_PAGE:
                return

    def _append(self, events: list[StoredEvent]) -> None:
        """Add events that follow `head` to the log and let the fan-out know."""
        if not events:
            return
        self._events.extend(events)
        self._revisions.extend(e.revision for e in events)
        self.head = events[-1].revision
        self._appended += len(events)
        if self._appended * 4 >= self.buffer:
            self._urgent.set()
            self._round_done.set()  # nor wait for a watcher that is slow to send
        if len(self._watchers) <= DIRECT_WAKE:
            # A few streams: wake them now, as a queue would, without the fan-out's hop.
            for watcher in self._watchers:
                if watcher.waiting:
                    watcher.wake.set()
        if len(self._revisions) > 2 * self.buffer:  # trimmed in bulk: amortized O(1)
            cut = len(self._revisions) - self.buffer
            self._dropped = self._revisions[cut - 1]
            del self._revisions[:cut], self._events[:cut]
        self._dirty.set()

    def _floor(self) -> int:
        """The newest revision beyond the last `buffer` events: a cursor below it is lost."""
        kept = len(self._revisions)
        return self._revisions[kept - self.buffer - 1] if kept > self.buffer else self._dropped

    def _pending(self, watcher: _Watcher) -> tuple[list[StoredEvent], int]:
        """Matching events after the watcher's cursor (at most its limit), and the
        revision the scan reached (every event up to it is in the batch or skipped)."""
        start = bisect.bisect_right(self._revisions, watcher.sent)
        if start == len(self._revisions):
            return [], max(watcher.sent, self.head)
        limit = watcher.limit
        if not _filtered(watcher.filters):
            batch = self._events[start : start + limit]
            full = start + limit < len(self._events)
            return batch, batch[-1].revision if full else max(batch[-1].revision, self.head)
        batch = []
        for event in self._events[start:]:
            if watcher.match(event.deployment, event.status):
                batch.append(event)
                if len(batch) == limit:
                    return batch, event.revision
        return batch, self.head

    # Fan-out -----------------------------------------------------------------

    async def _fan_out(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await self._dirty.wait()
            self._dirty.clear()
            started = loop.time()
            behind = [w for w in self._watchers if w.live and w.sent < self.head]
            for i in range(0, len(behind), WAKE_CHUNK):
                self._round += 1
                self._round_left = 0
                self._round_done.clear()
                for watcher in behind[i : i + WAKE_CHUNK]:
                    if watcher.waiting:  # one still sending will look again by itself
                        watcher.round = self._round
                        self._round_left += 1
                        watcher.wake.set()
                if self._round_left:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that coincides with the wait ending.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(ROUND_WAIT):
                            await self._round_done.wait()
            # A round of a few streams costs next to nothing: no pause worth having.
            weight = min(1.0, len(behind) / WAKE_CHUNK)
            pause = min(MAX_PAUSE, (loop.time() - started) * PAUSE_FACTOR * weight)
            if pause >= MIN_PAUSE and not self._urgent.is_set():
                # Cut short when the log has moved far enough that waiting longer
                # could push a watcher that keeps up beyond the buffer.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._urgent.wait()
            self._urgent.clear()
            self._appended = 0

    def _sent(self, watcher: _Watcher) -> None:
        """A woken watcher has sent what it had: count it off its round."""
        if watcher.round == self._round:
            watcher.round = 0
            self._round_left -= 1
            if self._round_left <= 0:
                self._round_done.set()
        if watcher.sent < self.head:
            self._dirty.set()  # more arrived meanwhile: the next round wakes it

    # Streams -----------------------------------------------------------------

    async def stream(
        self, filters: Filters, after: int | None, max_events: int = 1
    ) -> AsyncIterator[WatchItem]:
        """Event batches of at most `max_events` (and progress revisions, as ints)
        for one WatchDeployments call."""
        if self._closed:
            raise Unavailable("server is shutting down")
        if len(self._watchers) >= self.max_watchers:
            raise ResourceExhausted(f"too many watchers (limit {self.max_watchers})")
        limit = max(1, max_events)
        watcher = _Watcher(filters, limit, sent=after or 0)
        self._watchers.add(watcher)  # before catching up: nothing falls between
        try:
            if after is None:  # live only: whatever commits from now on
                _, watcher.sent = await self.store.revisions()
            else:
                oldest, _ = await self.store.revisions()
                if oldest and after < oldest - 1:
                    raise FailedPrecondition(
                        "REVISION_COMPACTED",
                        f"revision {after} is no longer stored (oldest is {oldest}): "
                        "list, then watch from the list's revision",
                        {"oldest_revision": str(oldest), "requested_revision": str(after)},
                    )
            async for batch in self._from_store(watcher, after is not None):
                yield batch
            watcher.live = True
            async for item in self._live(watcher):
                yield item
        finally:
            self._watchers.discard(watcher)
            if watcher.round == self._round:
                self._sent(watcher)

    async def _from_store(self, watcher: _Watcher, first: bool) -> AsyncIterator[WatchItem]:
        """Read from the store until the log holds everything after the cursor."""
        while first or watcher.sent < self._floor():
            events, covered = await self.store.events_page(
                watcher.sent, CATCH_UP_PAGE, watcher.filters
            )
            for i in range(0, len(events), watcher.limit):
                batch = events[i : i + watcher.limit]
                yield batch
                watcher.sent = batch[-1].revision
            if not events and covered <= watcher.sent:
                return  # nothing more stored: live decides whether it is lost
            watcher.sent = max(watcher.sent, covered)
            first = len(events) >= CATCH_UP_PAGE

    async def _live(self, watcher: _Watcher) -> AsyncIterator[WatchItem]:
        while True:
            if self._closed:
                raise Unavailable("server is shutting down; resume elsewhere")
            if watcher.sent < self._floor():
                raise ResourceExhausted(
                    f"watcher fell more than {self.buffer} events behind; "
                    f"resume with after_revision={watcher.sent}"
                )
            batch, reached = self._pending(watcher)
            # Handed over before the write, as a queue would: the buffer is what
            # may pile up after the message being sent.
            watcher.sent = max(watcher.sent, reached)
            if batch:
                yield batch
            self._sent(watcher)
            if batch and len(batch) == watcher.limit and watcher.sent < self.head:
                continue  # a backlog: keep sending rather than wait a round per batch
            watcher.waiting = True
            try:
                async with asyncio.timeout(self.progress_interval):
                    await watcher.wake.wait()
            except TimeoutError:
                if watcher.sent >= self.head:
                    yield watcher.sent
            finally:
                watcher.waiting = False
                watcher.wake.clear()
