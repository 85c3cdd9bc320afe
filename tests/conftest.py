"""Fixtures: real Versioner servers on port 0, over a temp SQLite file and PostgreSQL.

Every test that takes `server` runs once per backend: SQLite always, PostgreSQL
when VERSIONER_TEST_POSTGRES_URL is set (a fresh database is created for the run
and emptied before each test).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import grpc
import peewee as pw
import pytest
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from versioner_grpc.config import Config
from versioner_grpc.server import Server

POSTGRES_URL = os.environ.get("VERSIONER_TEST_POSTGRES_URL", "")
# Servers started as processes by the tests pick a free HTTP port, never the
# default 8080 that parallel runs would fight over. Tests that strip VERSIONER_*
# from a child's environment put TEST_ENV back.
TEST_ENV = {"VERSIONER_HTTP_LISTEN": "127.0.0.1:0"}
for _name, _value in TEST_ENV.items():
    os.environ.setdefault(_name, _value)
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class RunningServer:
    """A Server on its own event loop thread, with a channel and stub to call it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Server(config)
        self.run(self.server.start())
        self.address = f"127.0.0.1:{self.server.grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        scheme = "https" if config.tls_cert else "http"
        self.http_url = f"{scheme}://127.0.0.1:{self.server.http_port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.DeploymentServiceStub(self.channel)

    def run(self, coro, timeout: float = 30):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        self.run(self.server.stop(grace))
        self.channel.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _admin_url(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped at the end."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL not configured: set VERSIONER_TEST_POSTGRES_URL")
    name = f"versioner_test_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(POSTGRES_URL)
    admin = pw.PostgresqlDatabase(
        "postgres",
        user=parts.username,
        password=parts.password,
        host=parts.hostname,
        port=parts.port or 5432,
    )
    admin.connect()
    admin.connection().autocommit = True
    admin.execute_sql(f'CREATE DATABASE "{name}"')
    try:
        yield _admin_url(POSTGRES_URL, name)
    finally:
        admin.execute_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        admin.execute_sql(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def empty_postgres(url: str) -> None:
    """Drop every table, so each test starts from an empty, freshly migrated schema."""
    parts = urlsplit(url)
    db = pw.PostgresqlDatabase(
        parts.path.lstrip("/"),
        user=parts.username,
        password=parts.password,
        host=parts.hostname,
        port=parts.port or 5432,
    )
    with db:
        db.execute_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database: a temp SQLite file, or the run's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/versioner.db"
    url = request.getfixturevalue("postgres_url")
    empty_postgres(url)
    return url


@pytest.fixture
def config(database_url: str) -> Config:
    return Config(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        database_url=database_url,
        health_interval=0.2,
        progress_interval=0.5,
        poll_interval=0.5,
    )


@pytest.fixture
def server(config: Config) -> Iterator[RunningServer]:
    running = RunningServer(config)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def stub(server: RunningServer) -> pb_grpc.DeploymentServiceStub:
    return server.stub


def start_server(config: Config, **changes) -> RunningServer:
    """Start another server (e.g. a second replica, or a restart) with some settings changed."""
    return RunningServer(replace(config, **changes))


# Property-based fuzzing (tests/faults/test_fuzz.py): profiles `ci` and `long`.
import tests.faults.hypothesis_profiles  # noqa: E402, F401
