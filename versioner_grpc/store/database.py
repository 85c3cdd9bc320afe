"""Opening the database named by a URL, and the few places SQLite and PostgreSQL differ."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import peewee as pw
from playhouse import db_url

from versioner_grpc.domain.errors import Unavailable
from versioner_grpc.logs import fields
from versioner_grpc.store.schema import Models, define_models, migrate
from versioner_grpc.store.sql import Sql

log = logging.getLogger(__name__)
T = TypeVar("T")

# pg_advisory_xact_lock key for appending events: revisions become visible in
# commit order because appends are serialized across every replica.
APPEND_LOCK_KEY = 0x76657273  # "vers"
MIGRATE_LOCK_KEY = 0x76657274
WATCHDOG_PERIOD = 0.1  # seconds between checks for calls past their deadline
MIN_FREE_BYTES = 256 * 1024  # SQLite is writable again with this much room for a batch
CONNECTION_ERRORS = (pw.OperationalError, pw.InterfaceError)
# What the database says when it cannot store anything, and what we call it.
# The driver's own words stay in the message; the first name found wins.
_WRITE_PROBLEMS = (
    ("database or disk is full", "disk full"),
    ("no space left on device", "disk full"),
    ("disk full", "disk full"),
    ("readonly database", "database is read-only"),
    ("read-only transaction", "database is read-only"),
    ("disk i/o error", "disk I/O error"),
)


def write_problem(exc: BaseException) -> str:
    """'disk full', 'database is read-only', ... when `exc` (or what caused it) says so.

    SQLite reports a full disk and then, as the transaction unwinds, "cannot
    rollback - no transaction is active": the first error is the one that matters.
    """
    seen: BaseException | None = exc
    for _ in range(10):  # exceptions may chain in a loop; never follow one forever
        if seen is None:
            break
        text = str(seen).lower()
        for words, name in _WRITE_PROBLEMS:
            if words in text:
                return name
        seen = seen.__cause__ or seen.__context__
    return ""


@dataclass(eq=False)
class _Operation:
    """One database call in progress on some thread, watched for its deadline."""

    deadline: float
    conn: Any = None
    timed_out: bool = False


class Database:
    """One database: its Peewee handle, its models, and dialect-specific helpers.

    Every call is bounded: a watchdog interrupts a call that has not finished
    within `timeout` seconds (a hung database, a frozen network), which then
    fails as Unavailable instead of waiting for the client's deadline.
    """

    def __init__(
        self, url: str, *, sqlite_synchronous: str = "NORMAL", timeout: float = 5.0
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.db = open_database(url, sqlite_synchronous=sqlite_synchronous, timeout=timeout)
        self.is_postgres = isinstance(self.db, pw.PostgresqlDatabase)
        self.connection_errors = CONNECTION_ERRORS
        self.models: Models = define_models(self.db)
        self.sql = Sql(self.db)
        self._operations: set[_Operation] = set()
        self._ops_lock = threading.Lock()
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        # Writability, as the last write (or write probe) found it.
        self.write_problem = ""
        self._writable_lock = threading.Lock()

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; safe when several replicas start at once.

        Unbounded: a migration may legitimately take long on a big table.
        """

        def run() -> list[int]:
            if self.is_postgres:
                self.db.execute_sql("SET statement_timeout = 0")
            try:
                return migrate(self.models, lambda: self._lock(MIGRATE_LOCK_KEY))
            finally:
                if self.is_postgres:
                    self.db.execute_sql("RESET statement_timeout")

        return self.call(run, timeout=0)

    def lock_appends(self) -> None:
        """Serialize event appends across replicas, until the transaction ends."""
        self._lock(APPEND_LOCK_KEY)

    def _lock(self, key: int) -> None:
        if self.is_postgres:
            self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (key,))

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[None]:
        """A transaction that takes the write lock up front (no deadlocks on upgrade)."""
        if self.is_postgres:
            with self.db.atomic():
                yield
        else:
            with self.db.atomic(lock_type="IMMEDIATE"):
                yield

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[None]:
        """A read-only transaction over one consistent snapshot."""
        with self.db.atomic():
            if self.is_postgres:
                self.db.execute_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run `fn` on this thread's connection; connection failures become Unavailable.

        `fn` gets `timeout` seconds (default: the database's; 0: no limit), after
        which its connection is interrupted and the call fails as Unavailable.
        """
        limit = self.timeout if timeout is None else timeout
        operation = _Operation(time.monotonic() + limit) if limit > 0 else None
        try:
            self.db.connect(reuse_if_open=True)
            if operation is not None:
                operation.conn = self.db.connection()
                self._watch(operation)
            result = fn()
            if operation is not None and operation.timed_out:
                self.reset_connection()  # answered as it was interrupted: drop the socket
            return result
        except (*CONNECTION_ERRORS, pw.InternalError) as exc:
            timed_out = operation is not None and operation.timed_out
            problem = write_problem(exc)
            if isinstance(exc, pw.InternalError) and not problem:
                raise  # not the database's state: a bug, INTERNAL
            self.reset_connection()
            if timed_out:
                raise Unavailable(
                    f"database unavailable: no answer within {limit:g}s (interrupted)"
                ) from exc
            detail = str(exc).strip() or type(exc).__name__
            if problem:
                raise Unavailable(f"database unavailable: {problem} ({detail})") from exc
            raise Unavailable(f"database unavailable: {detail}") from exc
        finally:
            if operation is not None:
                with self._ops_lock:
                    self._operations.discard(operation)

    def _watch(self, operation: _Operation) -> None:
        with self._ops_lock:
            self._operations.add(operation)
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._patrol, name="versioner-db-watchdog", daemon=True
                )
                self._watchdog.start()

    def _patrol(self) -> None:
        """Interrupt every call past its deadline (the watchdog thread)."""
        while not self._closed.wait(WATCHDOG_PERIOD):
            now = time.monotonic()
            with self._ops_lock:  # held: a finished call cannot leave (and reuse its conn)
                late = [op for op in self._operations if op.deadline < now and not op.timed_out]
                for op in late:
                    op.timed_out = True
                    self._interrupt(op.conn)
            for _ in late:
                log.warning(
                    "database call interrupted: no answer within its time limit",
                    extra=fields(event="database_timeout"),
                )

    def _interrupt(self, conn: Any) -> None:
        """Make a blocked call on `conn` return with an error (from another thread)."""
        with contextlib.suppress(Exception):
            if self.is_postgres:
                # Shutting the socket down wakes the blocked read at once; the
                # transaction is rolled back by the server (it never saw COMMIT,
                # or saw it and answered: then event_id replays tell).
                sock = socket.socket(fileno=os.dup(conn.fileno()))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()
            else:
                conn.interrupt()

    @property
    def stalled(self) -> bool:
        """True while some call is past its deadline and not yet interrupted away."""
        now = time.monotonic()
        with self._ops_lock:
            return any(op.deadline < now for op in self._operations)

    def writes_failed(self, problem: str) -> None:
        """A write failed for `problem` ('disk full', ...): logged once per change."""
        with self._writable_lock:
            if problem == self.write_problem:
                return
            self.write_problem = problem
        log.error(
            "database not writable: %s",
            problem,
            extra=fields(event="database_writable", writable=False, problem=problem),
        )

    def writes_succeeded(self) -> None:
        with self._writable_lock:
            if not self.write_problem:
                return
            problem, self.write_problem = self.write_problem, ""
        log.warning(
            "database writable again (was: %s)",
            problem,
            extra=fields(event="database_writable", writable=True, problem=""),
        )

    def probe_write(self) -> bool:
        """Is the store writable again? A write that changes nothing must succeed, and
        for SQLite the filesystem must have room for a batch: a tiny write may fit in
        space the WAL already holds while every real event still fails."""
        if not self.is_postgres:
            directory = os.path.dirname(os.path.abspath(self.db.database))
            with contextlib.suppress(OSError):
                stat = os.statvfs(directory)
                if stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES:
                    return False

        def run() -> None:
            with self.write_transaction():
                self.db.execute_sql(
                    "UPDATE schema_migration SET applied_at = applied_at "
                    "WHERE version = (SELECT MAX(version) FROM schema_migration)"
                )

        try:
            self.call(run)
        except Unavailable as exc:
            problem = write_problem(exc)
            if problem:
                self.writes_failed(problem)
            return False
        self.writes_succeeded()
        return True

    def reset_connection(self) -> None:
        """Drop this thread's connection (it may be broken); the next call reconnects."""
        # close() forgets the connection even when closing it fails.
        with contextlib.suppress(Exception):
            self.db.close()

    def ping(self) -> bool:
        """True when a trivial query succeeds."""
        try:
            self.call(lambda: self.db.execute_sql("SELECT 1").fetchone())
            return True
        except Unavailable:
            return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()

    def shutdown(self) -> None:
        """Close this thread's connection and stop the watchdog."""
        self._closed.set()
        self.close()


def open_database(
    url: str, *, sqlite_synchronous: str = "NORMAL", timeout: float = 5.0
) -> pw.Database:
    """`sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite:///:memory:`,
    `postgresql://user:password@host:port/db` (parsed by playhouse.db_url)."""
    scheme = urlsplit(url).scheme
    params = db_url.parse(url, unquote_password=True, unquote_user=True)
    database = unquote(params.pop("database", ""))
    if scheme == "sqlite":
        if not urlsplit(url).path.lstrip("/") or urlsplit(url).netloc:
            raise ValueError(f"no file in database URL {url!r}: use sqlite:///path")
        if sqlite_synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("sqlite synchronous must be NORMAL or FULL")
        return pw.SqliteDatabase(
            database,
            pragmas={
                "journal_mode": "wal",
                # NORMAL in WAL mode: a commit survives a process crash (kill -9);
                # FULL also survives power loss.
                "synchronous": sqlite_synchronous.upper(),
                "foreign_keys": 1,
                # Waiting for another writer's lock is bounded like any call.
                "busy_timeout": int(timeout * 1000) if timeout > 0 else 10_000,
                "cache_size": -64_000,
            },
            check_same_thread=False,
            **params,
        )
    if scheme in ("postgresql", "postgres"):
        return pw.PostgresqlDatabase(
            database or "postgres",
            **{
                # libpq counts whole seconds, at least 2.
                "connect_timeout": max(2, math.ceil(timeout)) if timeout > 0 else 5,
                "application_name": "versioner",
                # The server cancels a statement running longer than a call may take,
                # and TCP keepalives notice a peer that vanished.
                "options": f"-c statement_timeout={int(timeout * 1000)}" if timeout > 0 else None,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 3,
                "keepalives_count": 3,
                **params,
            },
        )
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")
