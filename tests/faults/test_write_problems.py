"""What a failed write is called: the driver's real errors, named for the operator."""

from __future__ import annotations

import sqlite3

import pytest

from versioner_grpc.store.database import write_problem


def test_a_read_only_sqlite_database_is_named_read_only(tmp_path):
    path = tmp_path / "ro.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as info:
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    assert write_problem(info.value) == "database is read-only"


def test_the_first_error_counts_when_the_rollback_fails_after_it():
    """SQLite answers a full disk, then 'cannot rollback' as the transaction unwinds."""
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")  # noqa: B904
    except sqlite3.OperationalError as exc:
        assert write_problem(exc) == "disk full"


def test_postgresql_words_are_named_too():
    assert write_problem(OSError("could not extend file: No space left on device")) == "disk full"
    text = "cannot execute INSERT in a read-only transaction"
    assert write_problem(RuntimeError(text)) == "database is read-only"
    assert write_problem(RuntimeError("connection refused")) == ""


def test_a_cyclic_exception_chain_ends():
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert write_problem(a) == ""
