"""The server as a process: `python -m versioner_grpc`, its flags, env vars, signals,
durability across kill -9, health, reflection and structured logs.

Each test runs real server processes on port 0 and reads their JSON log lines
from stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from tests.conftest import TEST_ENV
from tests.faults.proxy import FaultProxy as TcpProxy

POSTGRES_URL = os.environ.get("VERSIONER_TEST_POSTGRES_URL", "")
SERVICE = "versioner.v1.DeploymentService"
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
STARTED = pb.DEPLOYMENT_STATUS_STARTED


# --------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], object], timeout: float = 20, what: str = "") -> object:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any VERSIONER_* setting (but TEST_ENV), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERSIONER_")}
    env.update(TEST_ENV)
    env.update(extra)
    return env


class ServerProcess:
    """`python -m versioner_grpc` with its stderr JSON lines collected by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "versioner_grpc", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=clean_env() if env is None else env,
            cwd=cwd,
            text=True,
        )
        self.lines: list[str] = []
        self.records: list[dict] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.address = ""
        self.channel: grpc.Channel | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        self.records.append(record)

    def logs(self) -> list[dict]:
        with self._lock:
            return list(self.records)

    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def find(self, predicate: Callable[[dict], bool]) -> list[dict]:
        return [r for r in self.logs() if predicate(r)]

    def wait_serving(self, timeout: float = 30) -> str:
        def serving():
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.stderr()}")
            found = self.find(lambda r: r.get("event") == "serving")
            return found[0] if found else None

        record = wait_until(serving, timeout, "the 'serving' log line")
        self.address = record["grpc_address"]
        self.channel = grpc.insecure_channel(self.address)
        return self.address

    @property
    def stub(self) -> pb_grpc.DeploymentServiceStub:
        assert self.channel is not None
        return pb_grpc.DeploymentServiceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        assert self.channel is not None
        return health_pb2_grpc.HealthStub(self.channel)

    def close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self) -> None:
        self.close_channel()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture
def spawn(tmp_path) -> Iterator[Callable[..., ServerProcess]]:
    """Start server processes (cwd: a temp dir); all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        process = ServerProcess(*args, env=env, cwd=tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def sqlite_args(path: Path, *more: str) -> list[str]:
    return [
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--database-url",
        f"sqlite:///{path}",
        *more,
    ]


def record(stub, **fields) -> pb.RecordEventResponse:
    values = dict(product_name="my-service", version="1.0", environment_name="production")
    values.update(fields)
    values.setdefault("status", COMPLETED)
    return stub.RecordEvent(pb.RecordEventRequest(**values), timeout=10)


# --------------------------------------------------------------------------- command line


def test_help_documents_every_option_and_its_environment_variable(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "versioner_grpc", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for option in ("--listen", "--metrics-listen", "--database-url"):
        assert option in text, option
    for var in ("VERSIONER_LISTEN", "VERSIONER_METRICS_LISTEN", "VERSIONER_DATABASE_URL"):
        assert var in text, var
    assert "sqlite:///" in text and "postgresql://" in text
    assert not list(tmp_path.iterdir()), "--help must not create a database"


def test_environment_variables_are_honoured(spawn, tmp_path):
    grpc_port, metrics_port = free_port(), free_port()
    db = tmp_path / "from-env.db"
    server = spawn(
        env=clean_env(
            VERSIONER_LISTEN=f"127.0.0.1:{grpc_port}",
            VERSIONER_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
            VERSIONER_DATABASE_URL=f"sqlite:///{db}",
        )
    )
    assert server.wait_serving() == f"127.0.0.1:{grpc_port}"
    assert not record(server.stub).duplicate
    assert db.exists()
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert b"grpc_server_handled_total" in r.read()
    assert not (tmp_path / "versioner.db").exists(), "the default database must not be used"


def test_flags_win_over_environment_variables(spawn, tmp_path):
    env_port = free_port()
    server = spawn(
        *sqlite_args(tmp_path / "flag.db"),
        env=clean_env(
            VERSIONER_LISTEN=f"127.0.0.1:{env_port}",
            VERSIONER_DATABASE_URL=f"sqlite:///{tmp_path}/env.db",
        ),
    )
    address = server.wait_serving()
    assert address != f"127.0.0.1:{env_port}"
    record(server.stub)
    assert (tmp_path / "flag.db").exists()
    assert not (tmp_path / "env.db").exists()


def test_bad_database_url_fails_to_start_with_a_message(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "versioner_grpc",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--database-url",
            "mysql://nope/db",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "database" in out.stderr.lower() or "mysql" in out.stderr


# --------------------------------------------------------------------------- durability


def test_acknowledged_events_survive_kill_9(spawn, tmp_path):
    db = tmp_path / "durable.db"
    server = spawn(*sqlite_args(db))
    server.wait_serving()
    stub = server.stub
    requests = []
    for i in range(30):
        common = dict(
            product_name="svc",
            version=f"1.{i}",
            environment_name="production",
            deployment_id=f"d-{i}",
        )
        requests.append(pb.RecordEventRequest(**common, status=STARTED, event_id=f"s-{i}"))
        requests.append(pb.RecordEventRequest(**common, status=COMPLETED, event_id=f"c-{i}"))
    for i in range(20):
        requests.append(
            pb.RecordEventRequest(
                product_name="ci",
                version="2.0",
                environment_name="staging",
                status=COMPLETED,
                event_id=f"ci-{i}",
            )
        )
    acknowledged: dict[str, pb.RecordEventResponse] = {}
    # STARTED before COMPLETED for each deployment; everything else concurrent.
    with ThreadPoolExecutor(8) as pool:
        for batch in (requests[0::2], requests[1::2]):
            for request, response in zip(
                batch, pool.map(lambda r: stub.RecordEvent(r, timeout=10), batch), strict=True
            ):
                acknowledged[request.event_id] = response
    head = stub.GetCurrent(pb.GetCurrentRequest()).revision
    assert head == max(r.event.revision for r in acknowledged.values())

    server.close_channel()
    server.proc.kill()  # SIGKILL: no shutdown, no flush
    assert server.proc.wait(10) == -signal.SIGKILL

    again = spawn(*sqlite_args(db))
    again.wait_serving()
    stub = again.stub
    assert stub.GetCurrent(pb.GetCurrentRequest()).revision == head
    stored = {d.id: d for d in stub.ListHistory(pb.ListHistoryRequest(page_size=1000)).deployments}
    for event_id, response in acknowledged.items():
        d = response.event.deployment
        assert d.id in stored, f"acknowledged {event_id} lost"
    for i in range(30):
        assert stored[f"d-{i}"].status == COMPLETED
        assert stored[f"d-{i}"].HasField("start_time")
    assert sum(1 for d in stored.values() if d.product_name == "ci") == 20
    for request in requests:
        replay = stub.RecordEvent(request, timeout=10)
        assert replay.duplicate, request.event_id
        assert replay.event.revision == acknowledged[request.event_id].event.revision
    assert stub.GetCurrent(pb.GetCurrentRequest()).revision == head


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_stop_cleanly_and_exit_zero(spawn, tmp_path, sig):
    server = spawn(*sqlite_args(tmp_path / "sig.db"))
    server.wait_serving()
    record(server.stub)
    server.proc.send_signal(sig)
    assert server.proc.wait(20) == 0, server.stderr()
    server._reader.join(5)
    assert server.find(lambda r: r.get("event") == "stopped"), server.stderr()


# --------------------------------------------------------------------------- standard services


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[ServerProcess]:
    """One server process shared by the health, reflection and log tests."""
    tmp = tmp_path_factory.mktemp("running")
    server = ServerProcess(*sqlite_args(tmp / "shared.db"), cwd=tmp)
    try:
        server.wait_serving()
        yield server
    finally:
        server.stop()


def test_health_check_is_serving(running):
    for service in ("", SERVICE):
        answer = running.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_deployment_service(running):
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    answers = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert len(answers) == 2
    names = {s.name for s in answers[0].list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    files = answers[1].file_descriptor_response.file_descriptor_proto
    assert files, "the service's descriptor must be served (grpcurl needs no proto files)"


def test_one_json_log_line_per_call_with_method_code_and_duration(running):
    stub = running.stub
    marker = f"marker-{uuid.uuid4().hex}"
    before = len(running.find(lambda r: r.get("event") == "rpc"))
    record(stub, product_name=marker)
    record(stub, product_name=marker)
    with pytest.raises(grpc.RpcError) as info:
        record(stub, product_name="")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stub.GetCurrent(pb.GetCurrentRequest(product_name=marker), timeout=10)

    def rpc_lines():
        lines = running.find(lambda r: r.get("event") == "rpc")[before:]
        return lines if len(lines) >= 4 else None

    lines = wait_until(rpc_lines, 10, "4 rpc log lines")
    assert len(lines) == 4, lines
    record_method = f"/{SERVICE}/RecordEvent"
    assert [(r["method"], r["code"]) for r in lines] == [
        (record_method, "OK"),
        (record_method, "OK"),
        (record_method, "INVALID_ARGUMENT"),
        (f"/{SERVICE}/GetCurrent", "OK"),
    ]
    for r in lines:
        assert isinstance(r["duration_ms"], int | float) and r["duration_ms"] >= 0


# --------------------------------------------------------------------------- PostgreSQL outage


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database of its own (URL), dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL not configured: set VERSIONER_TEST_POSTGRES_URL")
    import psycopg2

    name = f"versioner_outage_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_URL)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(POSTGRES_URL)._replace(path="/" + name))
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def health_status(server: ServerProcess) -> int:
    try:
        return server.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
    except grpc.RpcError:
        return -1


def test_health_follows_postgresql_reachability(spawn, postgres_database):
    parts = urlsplit(postgres_database)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    try:
        server = spawn(
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--database-url",
            via_proxy,
            "--health-interval",
            "0.2",
        )
        server.wait_serving()
        stub = server.stub
        assert health_status(server) == health_pb2.HealthCheckResponse.SERVING
        assert not record(stub, version="1.0").duplicate

        proxy.stop()
        wait_until(
            lambda: health_status(server) == health_pb2.HealthCheckResponse.NOT_SERVING,
            10,
            "NOT_SERVING while PostgreSQL is unreachable",
        )
        with pytest.raises(grpc.RpcError) as info:
            record(stub, version="1.1")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()

        proxy = TcpProxy(proxy.upstream, port=proxy.port)
        wait_until(
            lambda: health_status(server) == health_pb2.HealthCheckResponse.SERVING,
            15,
            "SERVING again once PostgreSQL is back",
        )
        back = record(stub, version="1.2")
        assert not back.duplicate
        history = stub.ListHistory(pb.ListHistoryRequest(), timeout=10).deployments
        assert [d.version for d in history] == ["1.2", "1.0"], "the refused event wrote nothing"
    finally:
        proxy.stop()
