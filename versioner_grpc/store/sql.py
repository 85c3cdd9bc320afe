"""Hand-written SQL for the hot paths, run through Peewee's connection.

Peewee builds and compiles a query object on every call, which costs more than
SQLite takes to run it; the event transaction and the frequent reads instead use
fixed SQL text, written once with `?` placeholders (turned into `%s` for
psycopg2). The tables are still defined, created and migrated by Peewee models
(schema.py); the SQL here names the same tables and columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import peewee as pw

DEPLOYMENT_FIELDS = (
    "id", "product", "version", "environment", "environment_type", "status", "deployed_by",
    "scm_branch", "scm_sha", "build_url", "metadata", "create_time", "update_time",
    "start_time", "end_time", "previous_version", "is_rollback", "scm_commit_time",
    "approval_id", "override_reason", "rule_violations",
)  # fmt: skip
"""The deployment table's columns as codec.deployment_tuple orders them (a test
checks them against the Peewee model); the stored encoding is written beside them."""
DEPLOYMENT_COLUMNS = ", ".join(DEPLOYMENT_FIELDS)


def placeholders(count: int) -> str:
    """`?, ?, ...` for `count` parameters, so no statement counts them by hand."""
    return ", ".join("?" * count)


Row = tuple[Any, ...]


class Sql:
    """Runs fixed SQL text on the calling thread's Peewee connection."""

    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self.postgres = isinstance(db, pw.PostgresqlDatabase)
        self.greatest = "GREATEST" if self.postgres else "MAX"

    def _text(self, text: str) -> str:
        return _pg(text) if self.postgres else text

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[Row]:
        found: list[Row] = self.db.execute_sql(self._text(text), params).fetchall()
        return found

    def row(self, text: str, params: Sequence[Any] = ()) -> Row | None:
        found: Row | None = self.db.execute_sql(self._text(text), params).fetchone()
        return found

    def value(self, text: str, params: Sequence[Any] = ()) -> Any:
        found = self.row(text, params)
        return found[0] if found else None

    def run(self, text: str, params: Sequence[Any] = ()) -> int:
        count: int = self.db.execute_sql(self._text(text), params).rowcount
        return count


@lru_cache(maxsize=512)
def _pg(text: str) -> str:
    return text.replace("%", "%%").replace("?", "%s")
