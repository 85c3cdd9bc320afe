"""The single writer: one thread, group commit.

Concurrent RecordEvents queue up; the writer takes everything waiting (up to a
batch limit) and applies it in one transaction. A rejected event writes nothing
(apply_event checks every rule before it writes), so it does not sink the
others; see `_commit` for what happens on a bug. Every caller is answered only
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
from typing import Any, TypeVar

from versioner_grpc.domain.clock import now_us
from versioner_grpc.domain.errors import FailedPrecondition, Unavailable, VersionerError
from versioner_grpc.domain.model import EventInput, RecordResult, StoredEvent
from versioner_grpc.store.database import Database, write_problem
from versioner_grpc.store.events import Encoder, apply_event
from versioner_grpc.store.governance import Gate
from versioner_grpc.store.notify import CHANNEL
from versioner_grpc.store.reads import head_revision

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Request:
    event: EventInput
    future: asyncio.Future[RecordResult]
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None  # time.monotonic() after which the caller has given up


@dataclass
class _Job:
    """Other writes (notifications) that must not fight the writer for SQLite's lock."""

    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class Writer:
    """Applies events in batches on a thread of its own."""

    def __init__(
        self,
        database: Database,
        on_commit: Callable[[list[StoredEvent]], None] = lambda events: None,
        max_batch: int = 256,
        project_metrics: bool = True,
        gate: Gate | None = None,
        encode: Encoder | None = None,
        on_audit: Callable[[], None] = lambda: None,
    ) -> None:
        self.database = database
        self.on_audit = on_audit  # after a commit that refused events (audited when governed)
        self.gate = gate
        self.encode = encode
        self.project_metrics = project_metrics
        self.on_commit = on_commit
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Request | _Job | None] = queue.SimpleQueue()
        # Each counter has one writing thread (no lost updates): queued by the
        # callers' loop, taken by the writer.
        self._events_queued = 0
        self._events_taken = 0
        self.last_batch_end = 0.0  # time.monotonic() when the last event batch committed
        self._thread = threading.Thread(target=self._run, name="versioner-writer", daemon=True)
        self.batches = 0  # for tests and benchmarks: how much grouping happened
        self.applying = 0  # events in the batch being applied now (0: idle)

    def start(self) -> None:
        self._thread.start()

    def waiting(self) -> int:
        """Events queued, not yet taken into a batch (approximate)."""
        return self._events_queued - self._events_taken

    async def run_job(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the writer thread, in a write transaction of its own, between batches.

        On SQLite a second writing thread would wait for the file lock in the
        busy handler's sleeps (milliseconds each); here it simply takes turns.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return await asyncio.shield(future)

    def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    async def record(self, event: EventInput, timeout: float | None = None) -> RecordResult:
        """Apply one event; returns once it is committed (or raises its error).

        `timeout`: seconds the caller will wait (its gRPC deadline). An event
        whose caller has given up before its batch starts is not applied.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecordResult] = loop.create_future()
        self._events_queued += 1
        deadline = time.monotonic() + timeout if timeout is not None else None
        self._queue.put(_Request(event, future, loop, deadline))
        return await asyncio.shield(future)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            items = [item]
            while len(items) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
            batch = [i for i in items if isinstance(i, _Request)]
            self._events_taken += len(batch)
            live = self._live(batch)
            if live:
                self.applying = len(live)
                try:
                    self._commit(live)  # events first: ingestion has priority
                finally:
                    self.applying = 0
                self.last_batch_end = time.monotonic()
            for job in items:
                if isinstance(job, _Job):
                    self._run_job(job)
        self.database.close()

    def _run_job(self, job: _Job) -> None:
        db = self.database

        def transaction() -> Any:
            with db.write_transaction():
                return job.fn()

        outcome: Any
        try:
            outcome = db.call(transaction)
        except Exception as exc:
            outcome = _Failed(exc)
        job.loop.call_soon_threadsafe(_settle_job, job.future, outcome)

    def _live(self, batch: list[_Request]) -> list[_Request]:
        """The requests whose callers still wait; the others are answered, not applied."""
        now = time.monotonic()
        late = [r for r in batch if r.deadline is not None and r.deadline <= now]
        if not late:
            return batch
        for request in late:
            gone = Unavailable("the call's deadline passed before its write began; not applied")
            request.loop.call_soon_threadsafe(_settle, request.future, gone)
        gone_ids = {id(r) for r in late}
        return [r for r in batch if id(r) not in gone_ids]

    def _commit(self, batch: list[_Request]) -> None:
        """Apply a batch in one transaction; answer every request after the commit.

        No savepoint per event: apply_event raises rule violations before it
        writes anything, so a rejected event leaves nothing behind (but the audit
        row of a governance refusal, which commits with the batch on purpose). Anything else
        (a bug) rolls the whole batch back, and then each event is retried alone
        so that only the faulty one fails.
        """
        if not batch:
            return
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
                            gate=self.gate,
                            encode=self.encode,
                        )
                    except VersionerError as exc:
                        outcomes.append(exc)
                        continue
                    outcomes.append(result)
                    if not result.duplicate:
                        stored.append(result.event)
                        revision += 1
                refused = any(isinstance(o, FailedPrecondition) for o in outcomes)
                if (stored or refused) and db.is_postgres:
                    db.sql.run("SELECT pg_notify(?, ?)", (CHANNEL, str(revision - 1)))

        try:
            db.call(transaction)
            self.batches += 1
            db.writes_succeeded()
        except Unavailable as exc:
            outcomes = [exc] * len(batch)
            stored = []
            problem = write_problem(exc)
            if problem:
                db.writes_failed(problem)
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
        if any(isinstance(o, FailedPrecondition) for o in outcomes):
            try:
                self.on_audit()
            except Exception:
                log.exception("publishing refused events failed")


@dataclass
class _Failed:
    error: BaseException


def _settle_job(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.cancelled():
        return
    if isinstance(outcome, _Failed):
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome)


def _settle(future: asyncio.Future[RecordResult], outcome: RecordResult | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
