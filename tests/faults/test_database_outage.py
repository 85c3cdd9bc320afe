"""A database that is locked, hangs, or goes away: writes fail fast with UNAVAILABLE,
health follows, nothing a refused call sent is applied later, and it all recovers.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from versioner.v1 import deployment_service_pb2 as pb

from tests.conftest import start_server
from tests.faults.common import (
    NOT_SERVING,
    SERVING,
    code_of,
    event,
    health,
    proxied,
    versions,
    wait_until,
)
from tests.faults.proxy import FaultProxy
from versioner_grpc.store.database import APPEND_LOCK_KEY


class WriteLock:
    """Another client holding the database's write lock (the append lock on PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.sqlite: sqlite3.Connection | None
        self.postgres: Any
        if url.startswith("sqlite"):
            self.sqlite = sqlite3.connect(urlsplit(url).path[1:], isolation_level=None)
            self.sqlite.execute("BEGIN IMMEDIATE")
            self.postgres = None
        else:
            import psycopg2

            self.sqlite = None
            self.postgres = psycopg2.connect(url)
            self.postgres.autocommit = True
            self.postgres.cursor().execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK_KEY,))

    def release(self) -> None:
        if self.sqlite is not None:
            self.sqlite.execute("COMMIT")
            self.sqlite.close()
        if self.postgres is not None:
            self.postgres.close()


def test_a_write_blocked_by_a_lock_fails_unavailable_before_the_callers_deadline(config):
    running = start_server(config, database_timeout=1.0)
    try:
        stub = running.stub
        stub.RecordEvent(event("1"), timeout=30)
        lock = WriteLock(config.database_url)
        try:
            with pytest.raises(grpc.RpcError) as info:
                stub.RecordEvent(event("blocked"), timeout=60)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        finally:
            lock.release()
        assert not stub.RecordEvent(event("2"), timeout=30).duplicate
        assert versions(stub) == ["1", "2"], "the refused write left nothing behind"
    finally:
        running.stop()


def test_a_write_whose_deadline_passed_before_its_batch_began_is_not_applied(config):
    running = start_server(config, database_timeout=20.0)
    try:
        stub = running.stub
        writer = running.server.store.writer
        lock = WriteLock(config.database_url)
        with ThreadPoolExecutor(1) as pool:
            try:
                first = pool.submit(stub.RecordEvent, event("first"), timeout=60)
                wait_until(lambda: writer.applying == 1, what="the first batch to be waiting")
                with pytest.raises(grpc.RpcError) as info:
                    stub.RecordEvent(event("given-up"), timeout=0.5)
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            finally:
                lock.release()
            assert not first.result(60).duplicate
        # The queue is FIFO: once this one is answered, "given-up" has been handled.
        stub.RecordEvent(event("after"), timeout=30)
        assert versions(stub) == ["after", "first"]
    finally:
        running.stop()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_frozen_postgresql_fails_fast_turns_health_and_applies_nothing_late(config):
    proxy, url = proxied(config.database_url)
    running = start_server(config, database_url=url, database_timeout=1.0)
    try:
        stub = running.stub
        stub.RecordEvent(event("1"), timeout=30)
        assert health(running.channel) == SERVING
        proxy.freeze()
        with pytest.raises(grpc.RpcError) as info:
            stub.RecordEvent(event("frozen", event_id="frozen-1"), timeout=60)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        read = code_of(lambda: stub.GetCurrent(pb.GetCurrentRequest(), timeout=60))
        assert read == grpc.StatusCode.UNAVAILABLE
        wait_until(lambda: health(running.channel) == NOT_SERVING, what="NOT_SERVING")
        proxy.thaw()
        wait_until(lambda: health(running.channel) == SERVING, what="SERVING after the thaw")
        assert versions(stub) == ["1"], "a write refused during the freeze was applied later"
        retry = stub.RecordEvent(event("frozen", event_id="frozen-1"), timeout=30)
        assert not retry.duplicate
        assert versions(stub) == ["1", "frozen"]
    finally:
        running.stop()
        proxy.stop()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_postgresql_stop_and_start_turns_health_and_watchers_miss_nothing(config):
    proxy, url = proxied(config.database_url)
    running = start_server(config, database_url=url, database_timeout=2.0)
    try:
        stub = running.stub
        stub.RecordEvent(event("1"), timeout=30)
        stream = stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=0), timeout=120)
        seen: list[str] = []
        got_two = threading.Event()

        def watch() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled at the end
                for message in stream:
                    if message.HasField("event"):
                        seen.append(message.event.deployment.version)
                        if len(seen) == 2:
                            got_two.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        wait_until(lambda: seen == ["1"], what="the watcher to see the first event")
        proxy.stop()
        wait_until(lambda: health(running.channel) == NOT_SERVING, what="NOT_SERVING")
        refused = code_of(lambda: stub.RecordEvent(event("2"), timeout=60))
        assert refused == grpc.StatusCode.UNAVAILABLE
        proxy = FaultProxy(proxy.upstream, port=proxy.port)
        wait_until(lambda: health(running.channel) == SERVING, what="SERVING once back")
        stub.RecordEvent(event("3"), timeout=30)
        wait_until(got_two.is_set, what="the watcher to see the event after the restart")
        assert seen == ["1", "3"]
        stream.cancel()
    finally:
        running.stop()
        proxy.stop()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_slow_postgresql_that_answers_within_the_timeout_keeps_working(config):
    """Slow is not hung: every call still succeeds, health stays SERVING."""
    proxy, url = proxied(config.database_url)
    running = start_server(config, database_url=url, database_timeout=5.0)
    try:
        stub = running.stub
        stub.RecordEvent(event("1"), timeout=30)
        proxy.slow(0.02)  # each chunk, each way
        for version in ("2", "3", "4"):
            assert not stub.RecordEvent(event(version), timeout=60).duplicate
        assert versions(stub) == ["1", "2", "3", "4"]
        assert health(running.channel) == SERVING
        proxy.slow(0)
    finally:
        running.stop()
        proxy.stop()
