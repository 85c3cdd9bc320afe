"""The single writer: one thread, group commit.

Concurrent RecordEvents queue up; the writer takes everything waiting (up to a
batch limit) and applies it in one transaction, each event in its own savepoint
so one rejected event does not sink the others. Every caller is answered only
after the commit, so an acknowledged event is durable. Blocking database work
never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from versioner_grpc.domain.errors import Unavailable, VersionerError
from versioner_grpc.domain.model import EventInput, RecordResult, StoredEvent
from versioner_grpc.store.database import Database
from versioner_grpc.store.events import Encoder, apply_event
from versioner_grpc.store.reads import head_revision

log = logging.getLogger(__name__)


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class _Request:
    event: EventInput
    future: asyncio.Future[RecordResult]
    loop: asyncio.AbstractEventLoop


class Writer:
    """Applies events in batches on a thread of its own."""

    def __init__(
        self,
        database: Database,
        on_commit: Callable[[list[StoredEvent]], None] = lambda events: None,
        max_batch: int = 256,
        project_metrics: bool = True,
        encode: Encoder | None = None,
    ) -> None:
        self.database = database
        self.encode = encode
        self.project_metrics = project_metrics
        self.on_commit = on_commit
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="versioner-writer", daemon=True)
        self.batches = 0  # for tests and benchmarks: how much grouping happened

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    async def record(self, event: EventInput) -> RecordResult:
        """Apply one event; returns once it is committed (or raises its error)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecordResult] = loop.create_future()
        self._queue.put(_Request(event, future, loop))
        return await asyncio.shield(future)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            self._commit(batch)
        self.database.close()

    def _commit(self, batch: list[_Request]) -> None:
        """Apply a batch in one transaction; answer every request after the commit.

        No savepoint per event: apply_event raises rule violations before it
        writes anything, so a rejected event leaves nothing behind. Anything else
        (a bug) rolls the whole batch back, and then each event is retried alone
        so that only the faulty one fails.
        """
        outcomes: list[RecordResult | BaseException] = []
        stored: list[StoredEvent] = []
        db = self.database

        def transaction() -> None:
            outcomes.clear()
            stored.clear()
            now = now_us()
            with db.write_transaction():
                db.lock_appends()
                revision = head_revision(db.sql) + 1
                for request in batch:
                    try:
                        result = apply_event(
                            db.sql,
                            request.event,
                            now,
                            revision,
                            project_metrics=self.project_metrics,
                            encode=self.encode,
                        )
                    except VersionerError as exc:
                        outcomes.append(exc)
                        continue
                    outcomes.append(result)
                    if not result.duplicate:
                        stored.append(result.event)
                        revision += 1
                if stored and db.is_postgres:
                    db.sql.run("SELECT pg_notify('versioner_events', ?)", (str(revision - 1),))

        try:
            db.call(transaction)
            self.batches += 1
        except Unavailable as exc:
            outcomes = [exc] * len(batch)
            stored = []
        except Exception as exc:  # a bug, not the client's doing: INTERNAL
            if len(batch) > 1:
                for request in batch:
                    self._commit([request])
                return
            log.exception("applying event %s failed", batch[0].event.event_id)
            outcomes = [exc]
            stored = []
        for request, outcome in zip(batch, outcomes, strict=True):
            request.loop.call_soon_threadsafe(_settle, request.future, outcome)
        if stored:
            try:
                self.on_commit(stored)
            except Exception:
                log.exception("publishing committed events failed")


def _settle(future: asyncio.Future[RecordResult], outcome: RecordResult | BaseException) -> None:
    if future.cancelled():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
