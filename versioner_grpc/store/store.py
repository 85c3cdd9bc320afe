"""The store as the service sees it: async reads on a thread pool, writes via the writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from versioner_grpc.domain.model import EventInput, RecordResult, StoredEvent
from versioner_grpc.domain.validation import Filters
from versioner_grpc.store import reads
from versioner_grpc.store.database import Database
from versioner_grpc.store.events import Encoder
from versioner_grpc.store.read_cache import RevisionCache
from versioner_grpc.store.sql import Sql
from versioner_grpc.store.writer import Writer

T = TypeVar("T")


class Store:
    """One database, its reader threads and its writer thread."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "NORMAL",
        readers: int = 2,
        project_metrics: bool = True,
        read_cache: bool = True,
        encode: Encoder | None = None,
    ) -> None:
        self.database = Database(url, sqlite_synchronous=sqlite_synchronous)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="versioner-read")
        self._subscribers: list[Callable[[list[StoredEvent]], None]] = []
        self.cache = RevisionCache(entries=512 if read_cache else 0)
        self.writer = Writer(
            self.database,
            on_commit=self._committed,
            project_metrics=project_metrics,
            encode=encode,
        )

    def open(self) -> list[int]:
        """Migrate the schema and start the writer; return the migrations applied."""
        applied = self.database.migrate()
        self.database.close()
        self.writer.start()
        return applied

    def close(self) -> None:
        self.writer.stop()
        self._readers.submit(self.database.close).result()
        self._readers.shutdown(wait=True)

    def subscribe(self, callback: Callable[[list[StoredEvent]], None]) -> None:
        """Call `callback` (on the writer thread) with each batch of committed events."""
        self._subscribers.append(callback)

    def _committed(self, events: list[StoredEvent]) -> None:
        for callback in self._subscribers:
            callback(events)

    async def record(self, event: EventInput) -> RecordResult:
        return await self.writer.record(event)

    async def read(self, question: Callable[[Sql], T]) -> T:
        """Answer `question` on a reader thread, inside one consistent snapshot."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_sync, question)

    def _read_sync(self, question: Callable[[Sql], T]) -> T:
        def run() -> T:
            with self._snapshot():
                return question(self.database.sql)

        return self.database.call(run)

    async def read_cached(
        self, key: Hashable, question: Callable[[Sql], tuple[bytes, int]]
    ) -> bytes:
        """An encoded answer: from the cache while the head revision is unchanged.

        `question` runs in a snapshot on a reader thread and returns the encoded
        answer and the revision it was read at.
        """

        def run() -> bytes:
            sql = self.database.sql
            hit = self.cache.get(key, reads.head_revision(sql))
            if hit is not None:
                return hit
            with self._snapshot():
                answer, revision = question(sql)
            self.cache.put(key, revision, answer)
            return answer

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.database.call, run)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        db = self.database.db
        with db.atomic():
            if self.database.is_postgres:
                db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    async def events_page(
        self, after: int, limit: int, filters: Filters | None = None
    ) -> tuple[list[StoredEvent], int]:
        return await self.read(lambda sql: reads.events_page(sql, after, limit, filters))

    async def revisions(self) -> tuple[int, int]:
        """(oldest, newest) stored revision; (0, 0) when empty."""
        return await self.read(lambda sql: (reads.oldest_revision(sql), reads.head_revision(sql)))

    async def compact(self, older_than: int) -> int:
        """Delete events recorded before `older_than` (µs), always keeping the newest one.

        Deployments, current state and metrics are kept; only the event log (the
        watch cursor's history and the event_id idempotency window) shrinks.
        """

        def run() -> int:
            m = self.database.models
            with self.database.write_transaction():
                self.database.lock_appends()
                head = reads.head_revision(self.database.sql)
                deleted = (
                    m.Event.delete()
                    .where((m.Event.record_time < older_than) & (m.Event.revision < head))
                    .execute()
                )
                m.IgnoredEvent.delete().where(m.IgnoredEvent.record_time < older_than).execute()
                return deleted

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.database.call, run)

    async def ping(self) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.database.ping)
