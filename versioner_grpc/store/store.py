"""The store as the rest of the server sees it: its one interface to the database.

Async reads run on a thread pool, writes go through the single writer; callers
get domain values (or answers they encoded themselves) and never SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from versioner_grpc.cache import LruCache
from versioner_grpc.domain.filters import Filters, PageKey
from versioner_grpc.domain.model import (
    Deployment,
    EventInput,
    RecordResult,
    Stored,
    StoredEvent,
    StoredState,
)
from versioner_grpc.governance.approvals import Approval
from versioner_grpc.governance.audit import AuditEntry
from versioner_grpc.governance.rules import ApprovalPolicy, RuleSet, Target, Verdict
from versioner_grpc.store import governance, reads
from versioner_grpc.store.database import Database
from versioner_grpc.store.events import Encoder
from versioner_grpc.store.governance import Gate
from versioner_grpc.store.notifications import NotificationStore
from versioner_grpc.store.notify import CHANNEL, PostgresListener
from versioner_grpc.store.reads import MetricRows
from versioner_grpc.store.sql import Sql
from versioner_grpc.store.writer import Writer

T = TypeVar("T")
READ_CACHE_ENTRIES = 512
READ_CACHE_MAX_BYTES = 256 * 1024


class Store:
    """One database, its reader threads and its writer thread."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "NORMAL",
        readers: int = 2,
        project_metrics: bool = True,
        timeout: float = 5.0,
        read_cache: bool = True,
        encode: Encoder | None = None,
    ) -> None:
        self.database = Database(url, sqlite_synchronous=sqlite_synchronous, timeout=timeout)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="versioner-read")
        self._subscribers: list[Callable[[list[StoredEvent]], None]] = []
        self._audit_subscribers: list[Callable[[], None]] = []
        self._listeners: list[PostgresListener] = []
        # GetCurrent and ListHistory answers, valid while the head revision is unchanged.
        self._answers: LruCache[Hashable, bytes] = LruCache(
            READ_CACHE_ENTRIES if read_cache else 0, size=len, max_size=READ_CACHE_MAX_BYTES
        )
        self._metrics: LruCache[str, str] = LruCache(1)
        self.gate = Gate(RuleSet())
        self.writer = Writer(
            self.database,
            on_commit=self._committed,
            project_metrics=project_metrics,
            gate=self.gate,
            encode=encode,
            on_audit=self._audited,
        )
        self.notifications = NotificationStore(self.database, self.writer)

    def open(self) -> list[int]:
        """Migrate the schema and start the writer; return the migrations applied."""
        applied = self.database.migrate()
        self.database.close()
        self.writer.start()
        return applied

    def close(self) -> None:
        for listener in self._listeners:
            listener.stop()
        self.writer.stop()
        self.notifications.close()
        self._readers.submit(self.database.close).result()
        self._readers.shutdown(wait=True)
        self.database.shutdown()

    def writes_waiting(self, recent: float = 0.005) -> bool:
        """RecordEvents are queued, or an event batch committed in the last `recent` s.

        Background work steps aside while this holds. Under a closed-loop load the
        queue is often empty for an instant (the writer just took everything), so
        a batch that has just committed counts too: more are about to come.
        """
        return self.writer.waiting() > 0 or time.monotonic() - self.writer.last_batch_end < recent

    # News of writes ----------------------------------------------------------

    def subscribe(self, callback: Callable[[list[StoredEvent]], None]) -> None:
        """Call `callback` (on the writer thread) with each batch of committed events."""
        self._subscribers.append(callback)

    def _committed(self, events: list[StoredEvent]) -> None:
        for callback in self._subscribers:
            callback(events)

    def subscribe_audit(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on a store thread) after a commit that may have added audit entries."""
        self._audit_subscribers.append(callback)

    def _audited(self) -> None:
        for callback in self._audit_subscribers:
            callback()

    def on_external_write(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (on another thread) when another process may have written.

        Only PostgreSQL has other writers to hear from; returns a function that
        stops the calls.
        """
        if not self.database.is_postgres:
            return lambda: None
        listener = PostgresListener(self.database.url, callback)
        self._listeners.append(listener)
        listener.start()
        return listener.stop

    # Writes ------------------------------------------------------------------

    async def record(self, event: EventInput, timeout: float | None = None) -> RecordResult:
        """Apply one event; `timeout` is how long its caller waits (None: forever)."""
        return await self.writer.record(event, timeout)

    async def deployment(self, deployment_id: str) -> Deployment | None:
        """The deployment with this id, or None when there is none."""
        return await self._read(lambda sql: reads.deployment_by_id(sql, deployment_id))

    async def compact(self, older_than: int) -> int:
        """Delete events recorded before `older_than` (µs), always keeping the newest one.

        Deployments, current state and metrics are kept; only the event log (the
        watch cursor's history and the event_id idempotency window) shrinks.
        """

        def run() -> int:
            sql = self.database.sql
            with self.database.write_transaction():
                self.database.lock_appends()
                head = reads.head_revision(sql)
                deleted = sql.run(
                    "DELETE FROM event WHERE record_time < ? AND revision < ?", (older_than, head)
                )
                sql.run("DELETE FROM ignored_event WHERE record_time < ?", (older_than,))
                return deleted

        loop = asyncio.get_running_loop()
        # Deleting a long history may take a while: a generous bound, not the default.
        limit = max(60.0, self.database.timeout * 12) if self.database.timeout > 0 else 0
        return await loop.run_in_executor(
            self._readers, lambda: self.database.call(run, timeout=limit)
        )

    # Reads -------------------------------------------------------------------

    async def current(
        self,
        product: str,
        environment: str,
        encode: Callable[[list[StoredState], int], bytes],
    ) -> bytes:
        """What runs where, as `encode(states, revision)` made it (cached per revision)."""

        def question(sql: Sql) -> tuple[bytes, int]:
            revision = reads.head_revision(sql)
            return encode(reads.current_states(sql, product, environment), revision), revision

        return await self._read_cached(("current", product, environment), question)

    async def history(
        self,
        filters: Filters,
        after: PageKey | None,
        limit: int,
        encode: Callable[[list[Stored], PageKey | None, int], bytes],
    ) -> bytes:
        """A history page, as `encode(page, next_key, revision)` made it (cached per revision)."""

        def question(sql: Sql) -> tuple[bytes, int]:
            revision = reads.head_revision(sql)
            page, next_key = reads.history_page(sql, filters, after, limit)
            return encode(page, next_key, revision), revision

        return await self._read_cached(("history", filters.key(), after, limit), question)

    async def events_page(
        self, after: int, limit: int, filters: Filters | None = None
    ) -> tuple[list[StoredEvent], int]:
        """Matching events after revision `after`, and the revision the page covers."""
        return await self._read(lambda sql: reads.events_page(sql, after, limit, filters))

    async def revisions(self) -> tuple[int, int]:
        """(oldest, newest) stored revision; (0, 0) when empty."""
        return await self._read(lambda sql: (reads.oldest_revision(sql), reads.head_revision(sql)))

    def metrics_text(self, render: Callable[[MetricRows], str]) -> str:
        """The metric projection as `render` writes it, on the calling thread.

        Cached while the head revision is unchanged (a scrape then costs one
        indexed lookup). Raises Unavailable when the database cannot be read.
        """

        def run() -> str:
            sql = self.database.sql
            cached = self._metrics.get("", reads.head_revision(sql))
            if cached is not None:
                return cached
            with self._snapshot():
                rows = reads.metric_rows(sql)
            text = render(rows)
            self._metrics.put("", text, rows.revision)
            return text

        with self.database.db.connection_context():
            return self.database.call(run)

    @property
    def cached_answers(self) -> int:
        """How many encoded read answers the cache holds (for tests and benchmarks)."""
        return len(self._answers)

    # Governance --------------------------------------------------------------

    async def _govern(self, change: Callable[[Sql], T]) -> T:
        """A governance write in its own transaction, holding the event append lock.

        Serialized with every event append and every other governance write on
        all replicas, so approval decisions never race and audit ids become
        visible in commit order. `change` raising rolls everything back.
        """

        def run() -> T:
            with self.database.write_transaction():
                self.database.lock_appends()
                result = change(self.database.sql)
                if self.database.is_postgres:  # other replicas notify governance events too
                    self.database.sql.run("SELECT pg_notify(?, ?)", (CHANNEL, "audit"))
                return result

        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._readers, self.database.call, run)
        self._audited()
        return result

    async def request_approval(
        self,
        *,
        product: str,
        version: str,
        environment: str,
        reason: str,
        principal: str,
        policy: ApprovalPolicy,
        now: int,
    ) -> tuple[Approval, bool]:
        """The open request for the triple, or a new one; and whether it was created."""
        return await self._govern(
            lambda sql: governance.request_approval(
                sql,
                product=product,
                version=version,
                environment=environment,
                reason=reason,
                principal=principal,
                policy=policy,
                now=now,
            )
        )

    async def decide_approval(
        self, approval_id: str, principal: str, decision: str, comment: str, now: int
    ) -> Approval:
        """Record one principal's decision (audited); the request's state follows."""
        return await self._govern(
            lambda sql: governance.decide(sql, approval_id, principal, decision, comment, now)
        )

    async def get_approval(self, approval_id: str) -> Approval | None:
        return await self._read(lambda sql: governance.get_approval(sql, approval_id))

    async def list_approvals(
        self,
        *,
        product: str,
        environment: str,
        states: Sequence[str],
        after: tuple[int, str] | None,
        limit: int,
        now: int,
    ) -> tuple[list[Approval], tuple[int, str] | None]:
        """Newest first, keyset-paged on (create_time, id)."""
        return await self._read(
            lambda sql: governance.list_approvals(
                sql,
                product=product,
                environment=environment,
                states=states,
                after=after,
                limit=limit,
                now=now,
            )
        )

    async def list_audit(
        self,
        *,
        since: int | None,
        until: int | None,
        principal: str,
        kinds: Sequence[str],
        after_id: int,
        limit: int,
    ) -> tuple[list[AuditEntry], int]:
        """Audit entries in id order after `after_id`; the id to continue from (0 = end)."""
        return await self._read(
            lambda sql: governance.list_audit(
                sql,
                since=since,
                until=until,
                principal=principal,
                kinds=kinds,
                after_id=after_id,
                limit=limit,
            )
        )

    async def audit(self, now: int, kind: str, details: dict[str, Any]) -> None:
        """Append one audit entry of its own (e.g. rules reloaded)."""
        await self._govern(lambda sql: governance.insert_audit(sql, now, kind, details=details))

    async def expire_approvals(self, now: int) -> int:
        """Mark open requests past their expire time EXPIRED (audited); return how many."""
        return await self._govern(lambda sql: governance.expire_due(sql, now))

    async def check_rules(self, rules: RuleSet, target: Target, now: int) -> Verdict:
        """What RecordEvent would decide for `target` now (a read; nothing is written)."""

        def question(sql: Sql) -> Verdict:
            create_time = now
            if target.deployment_id:
                row = sql.row(
                    "SELECT create_time FROM deployment WHERE id = ?", (target.deployment_id,)
                )
                create_time = row[0] if row else now
            return rules.evaluate(target, governance.SqlFacts(sql, now, create_time), now)

        return await self._read(question)

    def pending_approvals(self, now: int) -> tuple[int, int | None]:
        """Pending (unexpired) requests and the oldest one's create time, on this thread.

        For the metrics collector at scrape time; raises Unavailable when the
        database cannot be read.
        """
        with self.database.db.connection_context():
            return self.database.call(lambda: governance.pending_summary(self.database.sql, now))

    def ping(self) -> asyncio.Future[bool]:
        """Whether a trivial read succeeds: a future, so a health check spawns no task."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._readers, self.database.ping)

    def probe_write(self) -> asyncio.Future[bool]:
        """Whether a write succeeds now (clears the not-writable state when it does)."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._readers, self.database.probe_write)

    @property
    def write_problem(self) -> str:
        """Why writes fail ('disk full', 'database is read-only'); empty when they work."""
        return self.database.write_problem

    async def _read(self, question: Callable[[Sql], T]) -> T:
        """Answer `question` on a reader thread, inside one consistent snapshot."""

        def run() -> T:
            with self._snapshot():
                return question(self.database.sql)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.database.call, run)

    async def _read_cached(
        self, key: Hashable, question: Callable[[Sql], tuple[bytes, int]]
    ) -> bytes:
        """An encoded answer: from the cache while the head revision is unchanged.

        `question` runs in a snapshot on a reader thread and returns the encoded
        answer and the revision it was read at.
        """

        def run() -> bytes:
            hit = self._answers.get(key, reads.head_revision(self.database.sql))
            if hit is not None:
                return hit
            with self._snapshot():
                answer, revision = question(self.database.sql)
            self._answers.put(key, answer, revision)
            return answer

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self.database.call, run)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        with self.database.read_transaction():
            yield
