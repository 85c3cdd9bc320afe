"""Opening the database named by a URL, and the few places SQLite and PostgreSQL differ."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import peewee as pw
from playhouse import db_url

from versioner_grpc.domain.errors import Unavailable
from versioner_grpc.store.schema import Models, define_models, migrate
from versioner_grpc.store.sql import Sql

log = logging.getLogger(__name__)
T = TypeVar("T")

# pg_advisory_xact_lock key for appending events: revisions become visible in
# commit order because appends are serialized across every replica.
APPEND_LOCK_KEY = 0x76657273  # "vers"
MIGRATE_LOCK_KEY = 0x76657274
CONNECTION_ERRORS = (pw.OperationalError, pw.InterfaceError)


class Database:
    """One database: its Peewee handle, its models, and dialect-specific helpers."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "NORMAL") -> None:
        self.url = url
        self.db = open_database(url, sqlite_synchronous=sqlite_synchronous)
        self.is_postgres = isinstance(self.db, pw.PostgresqlDatabase)
        self.connection_errors = CONNECTION_ERRORS
        self.models: Models = define_models(self.db)
        self.sql = Sql(self.db)

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; safe when several replicas start at once."""
        return self.call(lambda: migrate(self.models, lambda: self._lock(MIGRATE_LOCK_KEY)))

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

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on this thread's connection; connection failures become Unavailable."""
        try:
            self.db.connect(reuse_if_open=True)
            return fn()
        except CONNECTION_ERRORS as exc:
            self.reset_connection()
            raise Unavailable(f"database unavailable: {str(exc).strip()}") from exc

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


def open_database(url: str, *, sqlite_synchronous: str = "NORMAL") -> pw.Database:
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
                "busy_timeout": 10_000,
                "cache_size": -64_000,
            },
            check_same_thread=False,
            **params,
        )
    if scheme in ("postgresql", "postgres"):
        return pw.PostgresqlDatabase(
            database or "postgres",
            **{"connect_timeout": 5, "application_name": "versioner", **params},
        )
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://...")
