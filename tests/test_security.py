"""Security and operations (issue 6), one test per rule, against real servers.

Scoped bearer tokens from a hashed auth file, `recorded_by`, `token create`,
SIGHUP revocation, TLS and mutual TLS with certificates made by the test,
refusal to listen beyond loopback without auth, message and metadata limits,
and logs that never contain a token.

The in-process servers run on SQLite and PostgreSQL (the `config` fixture);
the process-level tests run `python -m versioner_grpc` on a temp SQLite file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc
from versioner_client import Unavailable as ClientUnavailable
from versioner_client import VersionerClient

from tests.certs import Pki, make_ca, make_pki
from tests.conftest import TEST_ENV, RunningServer, start_server
from tests.processes import ServerProcess

READ = "deployments:read"
WRITE = "deployments:write"
SERVICE = "versioner.v1.DeploymentService"
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
TIMEOUT = 10  # seconds per RPC: a hung call fails the test instead of hanging it


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def config(config):
    """The shared config without the metrics HTTP server (not needed here)."""
    return replace(config, metrics_listen="off")


def new_token() -> str:
    return "vrs_" + secrets.token_urlsafe(32)


def write_auth_file(path: Path, tokens: dict[str, tuple[str, list[str]]]) -> Path:
    """Write an auth file the way the issue documents it: name, SHA-256 hex, scopes.

    `tokens` maps a name to (token, scopes).
    """
    tables = []
    for name, (token, scopes) in tokens.items():
        digest = hashlib.sha256(token.encode()).hexdigest()
        quoted = ", ".join(f'"{s}"' for s in scopes)
        tables.append(f'[[token]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = [{quoted}]\n')
    path.write_text("\n".join(tables))
    return path


class Tokens:
    """The tokens of one test's auth file."""

    def __init__(self, directory: Path) -> None:
        self.reader, self.writer, self.admin = new_token(), new_token(), new_token()
        self.table = {
            "ci-reader": (self.reader, [READ]),
            "ci-writer": (self.writer, [WRITE]),
            "admin": (self.admin, [READ, WRITE]),
        }
        self.path = write_auth_file(directory / "tokens.toml", self.table)


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(tmp_path)


@pytest.fixture
def secured(config, tokens: Tokens) -> Iterator[RunningServer]:
    """A server with authentication on."""
    running = start_server(config, auth_file=str(tokens.path))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def open_server(config) -> Iterator[RunningServer]:
    """A server with authentication off."""
    running = start_server(config)
    try:
        yield running
    finally:
        running.stop()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def request(**fields) -> pb.RecordEventRequest:
    values = dict(product_name="svc", version="1.0.0", environment_name="production")
    values.update(fields)
    return pb.RecordEventRequest(status=COMPLETED, **values)


def record(stub, token: str | None, **fields) -> pb.RecordEventResponse:
    metadata = bearer(token) if token else ()
    return stub.RecordEvent(request(**fields), metadata=metadata, timeout=TIMEOUT)


def watch_first_event(stub, token: str | None, after_revision: int = 0) -> pb.Event:
    """The first event of a watch from `after_revision` (progress messages skipped)."""
    metadata = bearer(token) if token else ()
    call = stub.WatchDeployments(
        pb.WatchDeploymentsRequest(after_revision=after_revision),
        metadata=metadata,
        timeout=TIMEOUT,
    )
    try:
        for message in call:
            if message.WhichOneof("kind") == "event":
                return message.event
        raise AssertionError("the watch ended without an event")
    finally:
        call.cancel()


def watch_error(stub, metadata) -> grpc.RpcError:
    """The error a watch ends with; fails if it yields anything first."""
    call = stub.WatchDeployments(
        pb.WatchDeploymentsRequest(after_revision=0), metadata=metadata, timeout=TIMEOUT
    )
    with pytest.raises(grpc.RpcError) as info:
        for message in call:
            raise AssertionError(f"the watch yielded {message} instead of failing")
    return info.value


def read_calls(stub) -> dict[str, Callable]:
    """Each read RPC as a call taking metadata; a watch is drained to its first error."""
    return {
        "GetCurrent": lambda md: stub.GetCurrent(
            pb.GetCurrentRequest(), metadata=md, timeout=TIMEOUT
        ),
        "ListHistory": lambda md: stub.ListHistory(
            pb.ListHistoryRequest(), metadata=md, timeout=TIMEOUT
        ),
    }


def code_of(call: Callable, metadata) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(metadata)
    return info.value.code()


def struct(value: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def assert_nothing_written(stub, token: str | None) -> None:
    """An authorized read shows an empty store: no deployment, revision 0."""
    metadata = bearer(token) if token else ()
    history = stub.ListHistory(pb.ListHistoryRequest(), metadata=metadata, timeout=TIMEOUT)
    assert list(history.deployments) == []
    assert history.revision == 0
    current = stub.GetCurrent(pb.GetCurrentRequest(), metadata=metadata, timeout=TIMEOUT)
    assert list(current.states) == []


def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def server_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--database-url",
        f"sqlite:///{tmp_path}/versioner.db",
        *extra,
    ]


def clean_env() -> dict[str, str]:
    """The environment without VERSIONER_* settings that would change what runs (but TEST_ENV)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VERSIONER_")} | TEST_ENV


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    """Server processes started by a test; all stopped at the end."""
    started: list[ServerProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.stop(signal.SIGKILL)


def start_process(processes: list[ServerProcess], *args: str) -> ServerProcess:
    process = ServerProcess(*args, env={"VERSIONER_AUTH_FILE": ""})
    processes.append(process)
    return process


def call_code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


# --------------------------------------------------------------------------- authentication


def test_a_missing_token_is_unauthenticated(secured):
    stub = secured.stub
    assert code_of(lambda md: record(stub, None), ()) == grpc.StatusCode.UNAUTHENTICATED
    for name, call in read_calls(stub).items():
        assert code_of(call, ()) == grpc.StatusCode.UNAUTHENTICATED, name
    assert watch_error(stub, ()).code() == grpc.StatusCode.UNAUTHENTICATED
    # An authorization header that carries no bearer token is no token either.
    for header in ("", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz"):
        md = (("authorization", header),)
        got = code_of(lambda m: stub.GetCurrent(pb.GetCurrentRequest(), metadata=m), md)
        assert got == grpc.StatusCode.UNAUTHENTICATED, header


def test_an_unknown_token_is_unauthenticated(secured, tokens):
    stub = secured.stub
    unknown = new_token()
    md = bearer(unknown)
    assert code_of(lambda m: record(stub, unknown), md) == grpc.StatusCode.UNAUTHENTICATED
    for name, call in read_calls(stub).items():
        assert code_of(call, md) == grpc.StatusCode.UNAUTHENTICATED, name
    assert watch_error(stub, md).code() == grpc.StatusCode.UNAUTHENTICATED
    # The stored hash is not a token, nor is a prefix of a real one.
    digest = hashlib.sha256(tokens.admin.encode()).hexdigest()
    for fake in (digest, tokens.admin[:-1], tokens.admin + "x"):
        assert code_of(lambda m, f=fake: record(stub, f), ()) == grpc.StatusCode.UNAUTHENTICATED


def test_a_read_only_token_on_record_event_is_permission_denied(secured, tokens):
    with pytest.raises(grpc.RpcError) as info:
        record(secured.stub, tokens.reader)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()


def test_a_write_only_token_on_reads_is_permission_denied(secured, tokens):
    stub = secured.stub
    record(stub, tokens.writer)  # something to read, so an empty answer cannot pass
    md = bearer(tokens.writer)
    for name, call in read_calls(stub).items():
        assert code_of(call, md) == grpc.StatusCode.PERMISSION_DENIED, name
    assert watch_error(stub, md).code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_read_token_can_watch_deployments(secured, tokens):
    recorded = record(secured.stub, tokens.writer, version="2.0.0").event
    event = watch_first_event(secured.stub, tokens.reader, after_revision=0)
    assert event.revision == recorded.revision
    assert event.deployment.version == "2.0.0"
    # And the other reads.
    history = secured.stub.ListHistory(
        pb.ListHistoryRequest(), metadata=bearer(tokens.reader), timeout=TIMEOUT
    )
    assert [d.version for d in history.deployments] == ["2.0.0"]


def test_a_write_token_can_record_event(secured, tokens):
    response = record(secured.stub, tokens.writer, version="3.1.4")
    assert response.event.revision > 0
    assert not response.duplicate
    history = secured.stub.ListHistory(
        pb.ListHistoryRequest(), metadata=bearer(tokens.admin), timeout=TIMEOUT
    )
    assert [d.version for d in history.deployments] == ["3.1.4"]


def test_health_and_reflection_are_open_without_a_token(secured):
    health = health_pb2_grpc.HealthStub(secured.channel)
    for service in ("", SERVICE):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    # Auth is really on: the same channel without a token is turned away.
    assert code_of(lambda m: record(secured.stub, None), ()) == grpc.StatusCode.UNAUTHENTICATED


def test_a_rejected_call_writes_nothing(secured, tokens):
    stub = secured.stub
    for token in (None, new_token(), tokens.reader):
        with pytest.raises(grpc.RpcError) as info:
            record(stub, token, event_id=f"e-{secrets.token_hex(4)}")
        assert info.value.code() in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        )
    assert_nothing_written(stub, tokens.reader)
    # The rejected event_id was not remembered either: the writer records it fresh.
    response = record(stub, tokens.writer, event_id="e-fresh")
    assert not response.duplicate
    assert response.event.revision > 0


def test_permission_is_checked_before_the_request_is_looked_at(secured, tokens):
    """An invalid request from a caller without the right is refused for the right,
    not validated: the answer leaks nothing about the request or the store."""
    stub = secured.stub
    invalid = pb.RecordEventRequest()  # no product, version, environment or status
    for token, expected in (
        (None, grpc.StatusCode.UNAUTHENTICATED),
        (new_token(), grpc.StatusCode.UNAUTHENTICATED),
        (tokens.reader, grpc.StatusCode.PERMISSION_DENIED),
    ):
        md = bearer(token) if token else ()
        got = code_of(lambda m: stub.RecordEvent(invalid, metadata=m, timeout=TIMEOUT), md)
        assert got == expected
    bad_page = pb.ListHistoryRequest(page_token="not-a-page-token", page_size=-1)
    got = code_of(
        lambda m: stub.ListHistory(bad_page, metadata=m, timeout=TIMEOUT), bearer(tokens.writer)
    )
    assert got == grpc.StatusCode.PERMISSION_DENIED
    # With the right scope the same request is judged on its content.
    got = code_of(
        lambda m: stub.RecordEvent(invalid, metadata=m, timeout=TIMEOUT), bearer(tokens.writer)
    )
    assert got == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- recorded_by


def test_recorded_by_is_the_token_name(secured, tokens):
    response = record(secured.stub, tokens.writer, deployed_by="alice")
    assert response.event.recorded_by == "ci-writer"
    assert response.event.deployment.deployed_by == "alice"
    watched = watch_first_event(secured.stub, tokens.reader, after_revision=0)
    assert watched.revision == response.event.revision
    assert watched.recorded_by == "ci-writer"
    assert watched.deployment.deployed_by == "alice"
    # A token with both scopes records under its own name.
    second = record(secured.stub, tokens.admin, version="1.0.1", deployed_by="alice")
    assert second.event.recorded_by == "admin"
    # A replay returns the stored event, with the name it was stored under.
    replay = record(secured.stub, tokens.admin, event_id="once", version="1.0.2")
    again = record(secured.stub, tokens.admin, event_id="once", version="1.0.2")
    assert again.duplicate
    assert again.event.recorded_by == replay.event.recorded_by == "admin"


def _with_unknown_string_field(message: pb.RecordEventRequest, number: int, text: str) -> bytes:
    """`message` serialized with an extra length-delimited field the schema does not know."""
    payload = text.encode()
    assert number < 16 and len(payload) < 128
    return message.SerializeToString() + bytes([(number << 3) | 2, len(payload)]) + payload


def test_recorded_by_cannot_be_forged_by_the_client(secured, tokens):
    stub = secured.stub
    forged_metadata = (
        *bearer(tokens.writer),
        ("x-recorded-by", "admin"),
        ("recorded-by", "admin"),
        ("x-principal", "admin"),
        ("x-forwarded-user", "admin"),
    )
    forged = request(deployed_by="admin", extra_metadata=struct({"recorded_by": "admin"}))
    response = stub.RecordEvent(forged, metadata=forged_metadata, timeout=TIMEOUT)
    assert response.event.recorded_by == "ci-writer"
    # deployed_by stays what the client claimed, and is a separate field.
    assert response.event.deployment.deployed_by == "admin"
    assert dict(response.event.deployment.extra_metadata) == {"recorded_by": "admin"}

    # A raw request carrying an unknown field (where a recorded_by might be
    # smuggled) is ignored the same way.
    record_raw = secured.channel.unary_unary(
        f"/{SERVICE}/RecordEvent",
        request_serializer=lambda b: b,
        response_deserializer=pb.RecordEventResponse.FromString,
    )
    smuggled = _with_unknown_string_field(request(version="9.9.9", deployed_by="x"), 15, "admin")
    response = record_raw(smuggled, metadata=bearer(tokens.writer), timeout=TIMEOUT)
    assert response.event.deployment.version == "9.9.9"
    assert response.event.recorded_by == "ci-writer"

    # Every stored event, seen through a watch, carries the writer's name.
    events = []
    call = stub.WatchDeployments(
        pb.WatchDeploymentsRequest(after_revision=0), metadata=bearer(tokens.reader), timeout=10
    )
    for message in call:
        if message.WhichOneof("kind") == "event":
            events.append(message.event)
        if len(events) == 2:
            break
    call.cancel()
    assert [e.recorded_by for e in events] == ["ci-writer", "ci-writer"]


def test_concurrent_writers_each_get_their_own_recorded_by(secured, tokens):
    """The principal belongs to its call: concurrent calls never see each other's name."""
    writers = {"ci-writer": tokens.writer, "admin": tokens.admin}
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def write(name: str, token: str) -> None:
        try:
            for i in range(15):
                product = f"svc-{name}"
                event = record(secured.stub, token, product_name=product, version=f"{i}").event
                results.append((name, event.recorded_by))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=item) for item in writers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(results) == 30
    assert all(name == recorded_by for name, recorded_by in results), results


def test_recorded_by_is_empty_without_auth(open_server):
    metadata = (*bearer(new_token()), ("x-recorded-by", "mallory"))
    response = open_server.stub.RecordEvent(
        request(deployed_by="alice"), metadata=metadata, timeout=TIMEOUT
    )
    assert response.event.recorded_by == ""
    assert response.event.deployment.deployed_by == "alice"
    watched = watch_first_event(open_server.stub, None, after_revision=0)
    assert watched.recorded_by == ""


# --------------------------------------------------------------------------- token create


def token_create(auth_file: Path, name: str, *scopes: str) -> subprocess.CompletedProcess:
    scope_args = [arg for scope in scopes for arg in ("--scope", scope)]
    return subprocess.run(
        [sys.executable, "-m", "versioner_grpc", "token", "create", "--name", name,
         *scope_args, "--auth-file", str(auth_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )  # fmt: skip


def test_token_create_prints_the_token_once_and_stores_only_its_hash(tmp_path):
    auth_file = tmp_path / "tokens.toml"
    result = token_create(auth_file, "ci", WRITE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    token = lines[0].strip()
    assert len(token) >= 32
    assert result.stdout.count(token) == 1
    assert token not in result.stderr
    stored = auth_file.read_text()
    assert token not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored
    assert '"ci"' in stored and WRITE in stored
    # A second token gets a different value and its own table.
    other = token_create(auth_file, "deployer", READ, WRITE)
    assert other.returncode == 0, other.stderr
    second = other.stdout.strip()
    assert second != token
    stored = auth_file.read_text()
    assert token not in stored and second not in stored
    assert hashlib.sha256(second.encode()).hexdigest() in stored
    assert hashlib.sha256(token.encode()).hexdigest() in stored


def test_token_create_refuses_a_name_that_exists(tmp_path):
    auth_file = tmp_path / "tokens.toml"
    first = token_create(auth_file, "ci", WRITE)
    assert first.returncode == 0, first.stderr
    before = auth_file.read_text()
    again = token_create(auth_file, "ci", READ)
    assert again.returncode == 1
    assert again.stdout.strip() == ""  # no token was issued
    assert "ci" in again.stderr
    assert auth_file.read_text() == before


def test_a_created_token_works_against_the_server(config, tmp_path):
    auth_file = tmp_path / "tokens.toml"
    made = {}
    for name, scope in (("ci", WRITE), ("dashboard", READ)):
        result = token_create(auth_file, name, scope)
        assert result.returncode == 0, result.stderr
        made[name] = result.stdout.strip()
    running = start_server(config, auth_file=str(auth_file))
    try:
        response = record(running.stub, made["ci"], deployed_by="alice")
        assert response.event.recorded_by == "ci"
        history = running.stub.ListHistory(
            pb.ListHistoryRequest(), metadata=bearer(made["dashboard"]), timeout=TIMEOUT
        )
        assert [d.deployed_by for d in history.deployments] == ["alice"]
        # The scopes given at creation are the scopes the server enforces.
        with pytest.raises(grpc.RpcError) as info:
            record(running.stub, made["dashboard"])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        got = call_code(
            lambda: running.stub.GetCurrent(
                pb.GetCurrentRequest(), metadata=bearer(made["ci"]), timeout=TIMEOUT
            )
        )
        assert got == grpc.StatusCode.PERMISSION_DENIED
    finally:
        running.stop()


# --------------------------------------------------------------------------- SIGHUP


def test_sighup_revokes_a_removed_token(tmp_path, processes):
    keeper, leaked = new_token(), new_token()
    auth_file = write_auth_file(
        tmp_path / "tokens.toml",
        {"keeper": (keeper, [READ, WRITE]), "leaked": (leaked, [READ, WRITE])},
    )
    server = start_process(processes, *server_args(tmp_path, "--auth-file", str(auth_file)))
    assert record(server.stub, leaked).event.recorded_by == "leaked"

    write_auth_file(auth_file, {"keeper": (keeper, [READ, WRITE])})
    server.proc.send_signal(signal.SIGHUP)

    def leaked_is_refused() -> bool:
        code = call_code(lambda: record(server.stub, leaked, version="after"))
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED), code
        return code == grpc.StatusCode.UNAUTHENTICATED

    eventually(leaked_is_refused, what="the removed token to be refused")
    assert server.proc.poll() is None, "SIGHUP must not stop the server"
    assert record(server.stub, keeper, version="kept").event.recorded_by == "keeper"
    assert server.stop() == 0


def test_sighup_loads_a_new_token(tmp_path, processes):
    first, added = new_token(), new_token()
    auth_file = write_auth_file(tmp_path / "tokens.toml", {"first": (first, [WRITE])})
    server = start_process(processes, *server_args(tmp_path, "--auth-file", str(auth_file)))
    assert call_code(lambda: record(server.stub, added)) == grpc.StatusCode.UNAUTHENTICATED
    write_auth_file(auth_file, {"first": (first, [WRITE]), "added": (added, [WRITE])})
    server.proc.send_signal(signal.SIGHUP)
    eventually(
        lambda: call_code(lambda: record(server.stub, added)) == grpc.StatusCode.OK,
        what="the added token to be accepted",
    )
    assert server.stop() == 0


def test_a_broken_auth_file_on_sighup_keeps_the_old_tokens(tmp_path, processes):
    token = new_token()
    auth_file = write_auth_file(tmp_path / "tokens.toml", {"ci": (token, [READ, WRITE])})
    server = start_process(processes, *server_args(tmp_path, "--auth-file", str(auth_file)))
    record(server.stub, token)
    for broken in (
        "this is [[ not toml",
        '[[token]]\nname = "ci"\nsha256 = "not-a-hash"\nscopes = ["deployments:write"]\n',
    ):
        errors_before = len([e for e in server.lines if e.get("level") == "error"])
        auth_file.write_text(broken)
        server.proc.send_signal(signal.SIGHUP)
        eventually(
            lambda n=errors_before: len([e for e in server.lines if e.get("level") == "error"]) > n,
            what="an error log line about the broken auth file",
        )
        assert server.proc.poll() is None, "a broken auth file must not stop the server"
        response = record(server.stub, token, version=f"v{errors_before}")
        assert response.event.recorded_by == "ci"
    error_lines = [e for e in server.lines if e.get("level") == "error"]
    assert all(token not in json.dumps(e) for e in error_lines)
    assert server.stop() == 0


# --------------------------------------------------------------------------- TLS


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def tls_channel(address: str, pki: Pki, client_cert: bool = False) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.read("ca_cert"),
        private_key=pki.read("client_key") if client_cert else None,
        certificate_chain=pki.read("client_cert") if client_cert else None,
    )
    return grpc.secure_channel(address, credentials)


def round_trip(channel: grpc.Channel, token: str | None = None, version: str = "1.0.0") -> None:
    """Record through `channel` and read it back."""
    stub = pb_grpc.DeploymentServiceStub(channel)
    response = record(stub, token, version=version)
    assert response.event.deployment.version == version
    history = stub.ListHistory(
        pb.ListHistoryRequest(version=version),
        metadata=bearer(token) if token else (),
        timeout=TIMEOUT,
    )
    assert [d.version for d in history.deployments] == [version]


def fails_to_connect(channel: grpc.Channel) -> grpc.StatusCode:
    """The code of a call that cannot get through (a short deadline: it must not hang)."""
    stub = pb_grpc.DeploymentServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.GetCurrent(pb.GetCurrentRequest(), timeout=5)
    return info.value.code()


def test_tls_round_trip(config, pki, tmp_path):
    running = start_server(config, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    try:
        with tls_channel(running.address, pki) as channel:
            round_trip(channel)
        with grpc.insecure_channel(running.address) as plaintext:
            assert fails_to_connect(plaintext) == grpc.StatusCode.UNAVAILABLE
        # A client that trusts another CA does not accept the server.
        other_ca, _ = make_ca(tmp_path, "other-ca")
        credentials = grpc.ssl_channel_credentials(root_certificates=other_ca.read_bytes())
        with grpc.secure_channel(running.address, credentials) as untrusting:
            assert fails_to_connect(untrusting) == grpc.StatusCode.UNAVAILABLE
        # Nothing arrived through the failed channels.
        with tls_channel(running.address, pki) as channel:
            stub = pb_grpc.DeploymentServiceStub(channel)
            history = stub.ListHistory(pb.ListHistoryRequest(), timeout=TIMEOUT)
            assert len(history.deployments) == 1
    finally:
        running.stop()


def test_mutual_tls_requires_a_client_certificate_signed_by_the_ca(config, pki, tmp_path):
    running = start_server(
        config,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca_cert),
    )
    try:
        with tls_channel(running.address, pki, client_cert=False) as anonymous:
            assert fails_to_connect(anonymous) == grpc.StatusCode.UNAVAILABLE
        # A certificate from another CA is refused too.
        other = make_pki(tmp_path / "other")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.read("ca_cert"),
            private_key=other.read("client_key"),
            certificate_chain=other.read("client_cert"),
        )
        with grpc.secure_channel(running.address, credentials) as stranger:
            assert fails_to_connect(stranger) == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(running.address) as plaintext:
            assert fails_to_connect(plaintext) == grpc.StatusCode.UNAVAILABLE
        with tls_channel(running.address, pki, client_cert=True) as channel:
            round_trip(channel)
    finally:
        running.stop()


def test_python_client_works_over_tls_and_mutual_tls(config, pki, tokens):
    tls = start_server(
        config,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        auth_file=str(tokens.path),
    )
    try:
        with VersionerClient(
            tls.address, token=tokens.admin, root_certificates=pki.ca_cert, retries=0
        ) as client:
            response = client.record("svc", "1.0.0", "production", "success")
            assert response.event.recorded_by == "admin"
            assert [d.version for d in client.history("svc")] == ["1.0.0"]
        # PEM bytes work as well as paths.
        with VersionerClient(
            tls.address, token=tokens.reader, root_certificates=pki.read("ca_cert"), retries=0
        ) as client:
            assert len(client.current("svc").states) == 1
    finally:
        tls.stop()

    mutual = start_server(
        config,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca_cert),
    )
    try:
        with VersionerClient(
            mutual.address,
            root_certificates=pki.ca_cert,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            retries=0,
        ) as client:
            client.record("svc", "2.0.0", "staging", "success")
            assert [d.version for d in client.history("svc", "staging")] == ["2.0.0"]
        with (
            VersionerClient(
                mutual.address, root_certificates=pki.ca_cert, retries=0, timeout=5
            ) as client,
            pytest.raises(ClientUnavailable),
        ):
            client.current()
        # The `versioner` CLI too.
        result = subprocess.run(
            [sys.executable, "-m", "versioner_client", "record",
             "--address", mutual.address, "--ca-cert", str(pki.ca_cert),
             "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key),
             "--retries", "0", "--product", "svc", "--version", "3.0.0",
             "--env", "staging", "--status", "success", "--deployed-by", "cli"],
            capture_output=True, text=True, timeout=60, env=clean_env(),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        with VersionerClient(
            mutual.address,
            root_certificates=pki.ca_cert,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            retries=0,
        ) as client:
            assert {d.version for d in client.history("svc", "staging")} == {"2.0.0", "3.0.0"}
    finally:
        mutual.stop()


# --------------------------------------------------------------------------- secure defaults


def test_refuses_to_listen_beyond_loopback_without_an_auth_file(tmp_path):
    database = tmp_path / "x.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "versioner_grpc", "--listen", "0.0.0.0:0",
         "--metrics-listen", "off", "--database-url", f"sqlite:///{database}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=clean_env(),
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("the server started listening on 0.0.0.0 without auth") from None
    assert process.returncode != 0
    assert "--auth-file" in stderr, stderr
    assert "--insecure" in stderr, stderr
    assert not database.exists(), "a refused start must not create the database"
    assert list(tmp_path.iterdir()) == []


def test_insecure_allows_listening_beyond_loopback_with_a_warning(tmp_path, processes):
    server = start_process(
        processes,
        "--listen", "0.0.0.0:0", "--metrics-listen", "off",
        "--database-url", f"sqlite:///{tmp_path}/x.db", "--insecure",
    )  # fmt: skip
    warnings = [e for e in server.lines if e.get("level") == "warning"]
    assert warnings, server.lines
    assert any("insecure" in json.dumps(e).lower() for e in warnings), warnings
    port = server.address.rpartition(":")[2]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DeploymentServiceStub(channel)
        assert record(stub, None).event.recorded_by == ""
    assert server.stop() == 0


def test_an_auth_file_allows_listening_beyond_loopback(tmp_path, processes, tokens):
    server = start_process(
        processes,
        "--listen", "0.0.0.0:0", "--metrics-listen", "off",
        "--database-url", f"sqlite:///{tmp_path}/x.db", "--auth-file", str(tokens.path),
    )  # fmt: skip
    port = server.address.rpartition(":")[2]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DeploymentServiceStub(channel)
        assert call_code(lambda: record(stub, None)) == grpc.StatusCode.UNAUTHENTICATED
        assert record(stub, tokens.writer).event.recorded_by == "ci-writer"
    assert server.stop() == 0


# --------------------------------------------------------------------------- limits


def test_an_oversized_message_is_resource_exhausted_and_writes_nothing(config, tokens):
    running = start_server(config, auth_file=str(tokens.path), max_message_bytes=64 * 1024)
    try:
        big = request(extra_metadata=struct({"blob": "x" * (200 * 1024)}))
        assert big.ByteSize() > 200 * 1024
        with pytest.raises(grpc.RpcError) as info:
            running.stub.RecordEvent(big, metadata=bearer(tokens.writer), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        assert_nothing_written(running.stub, tokens.reader)
        # Below the limit the same server accepts the call.
        small = request(extra_metadata=struct({"blob": "x" * 1024}))
        running.stub.RecordEvent(small, metadata=bearer(tokens.writer), timeout=TIMEOUT)
    finally:
        running.stop()


def test_oversized_metadata_is_rejected_and_writes_nothing(config, tokens):
    """--max-metadata-bytes is the largest metadata accepted: every call beyond it is
    refused, not just some (gRPC's own limit alone is soft: it refuses calls between
    it and a hard limit at random)."""
    limit = 8 * 1024
    running = start_server(config, auth_file=str(tokens.path), max_metadata_bytes=limit)
    try:
        codes = []
        for i, size in enumerate([limit + 4 * 1024] * 20 + [64 * 1024]):
            padded = (*bearer(tokens.writer), ("x-padding", "p" * size))
            codes.append(
                call_code(
                    lambda md=padded, i=i: running.stub.RecordEvent(
                        request(event_id=f"big-{i}"), metadata=md, timeout=TIMEOUT
                    )
                )
            )
        # gRPC answers headers beyond the limit with RESOURCE_EXHAUSTED
        # ("received metadata size exceeds ... limit").
        assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert_nothing_written(running.stub, tokens.reader)
        # Ordinary headers are fine.
        modest = (*bearer(tokens.writer), ("x-padding", "p" * 1024))
        running.stub.RecordEvent(request(), metadata=modest, timeout=TIMEOUT)
    finally:
        running.stop()


# --------------------------------------------------------------------------- logs


def test_no_token_ever_appears_in_logs(tmp_path, tokens, processes):
    server = start_process(
        processes,
        *server_args(tmp_path, "--auth-file", str(tokens.path), "--log-level", "debug"),
    )
    stub = server.stub
    unknown = new_token()
    calls = [
        # (what it does, principal expected in the log, code expected)
        (lambda: record(stub, tokens.writer), "ci-writer", "OK"),
        (
            lambda: stub.GetCurrent(
                pb.GetCurrentRequest(), metadata=bearer(tokens.reader), timeout=TIMEOUT
            ),
            "ci-reader",
            "OK",
        ),
        (lambda: record(stub, unknown), None, "UNAUTHENTICATED"),
        (lambda: record(stub, tokens.reader), None, "PERMISSION_DENIED"),
        (lambda: record(stub, None), None, "UNAUTHENTICATED"),
        (
            lambda: stub.GetCurrent(
                pb.GetCurrentRequest(), metadata=bearer(tokens.writer), timeout=TIMEOUT
            ),
            None,
            "PERMISSION_DENIED",
        ),
    ]
    for i, (call, principal, code) in enumerate(calls):
        before = len(rpc_lines(server))
        assert call_code(call).name == code
        eventually(lambda b=before: len(rpc_lines(server)) > b, what=f"the log line of call {i}")
        line = rpc_lines(server)[before]
        for key in ("method", "code", "duration_ms", "peer", "principal"):
            assert key in line, (key, line)
        assert line["code"] == code, line
        assert line["method"].startswith(f"/{SERVICE}/"), line
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
        assert "127.0.0.1" in line["peer"], line
        if principal is not None:
            assert line["principal"] == principal, line

    assert server.stop() == 0
    server._serving.get(timeout=10)  # the reader reached the end of stderr
    captured = "\n".join(json.dumps(e) for e in server.lines)
    assert captured.count('"rpc"') >= len(calls)
    for secret in (tokens.reader, tokens.writer, tokens.admin, unknown):
        assert secret not in captured
        # Not even a long piece of it (e.g. a truncated or partly masked token).
        assert secret[4:24] not in captured


def rpc_lines(server: ServerProcess) -> list[dict]:
    return [e for e in list(server.lines) if e.get("event") == "rpc"]
