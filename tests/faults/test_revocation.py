"""Revoking a token ends the streams it opened, not just its next calls."""

from __future__ import annotations

import hashlib
import secrets
import signal
from pathlib import Path

import grpc
import pytest
from versioner.v1 import deployment_service_pb2 as pb

from tests.conftest import start_server
from tests.processes import ServerProcess

READ, WRITE = "deployments:read", "deployments:write"
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED


def write_auth_file(path: Path, tokens: dict[str, tuple[str, list[str]]]) -> None:
    tables = []
    for name, (token, scopes) in tokens.items():
        digest = hashlib.sha256(token.encode()).hexdigest()
        quoted = ", ".join(f'"{s}"' for s in scopes)
        tables.append(f'[[token]]\nname = "{name}"\nsha256 = "{digest}"\nscopes = [{quoted}]\n')
    path.write_text("\n".join(tables))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def record(stub, token: str, version: str) -> None:
    request = pb.RecordEventRequest(
        product_name="svc", version=version, environment_name="prod", status=COMPLETED
    )
    stub.RecordEvent(request, metadata=bearer(token), timeout=10)


def first_event(stream) -> pb.WatchDeploymentsResponse:
    for message in stream:
        if message.HasField("event"):
            return message
    raise AssertionError("stream ended before an event")


def ending(stream) -> tuple[grpc.StatusCode, list[str]]:
    """Read until the stream ends; its code and the versions of events seen meanwhile."""
    versions = []
    try:
        for message in stream:
            if message.HasField("event"):
                versions.append(message.event.deployment.version)
    except grpc.RpcError as err:
        return err.code(), versions
    return grpc.StatusCode.OK, versions


@pytest.fixture
def tokens(tmp_path):
    names = {name: "vrs_" + secrets.token_urlsafe(16) for name in ("writer", "leaked", "kept")}
    path = tmp_path / "tokens.toml"
    write_auth_file(
        path,
        {
            "writer": (names["writer"], [WRITE]),
            "leaked": (names["leaked"], [READ]),
            "kept": (names["kept"], [READ]),
        },
    )
    return path, names


@pytest.mark.parametrize(
    "change, code",
    [
        ("remove", grpc.StatusCode.UNAUTHENTICATED),
        ("drop scope", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_reload_ends_streams_of_revoked_tokens_and_keeps_the_others(config, tokens, change, code):
    path, names = tokens
    running = start_server(config, auth_file=str(path))
    try:
        stub = running.stub
        record(stub, names["writer"], "1")
        request = pb.WatchDeploymentsRequest(after_revision=0)
        leaked = stub.WatchDeployments(request, metadata=bearer(names["leaked"]), timeout=30)
        kept = stub.WatchDeployments(request, metadata=bearer(names["kept"]), timeout=30)
        assert first_event(leaked).event.deployment.version == "1"
        assert first_event(kept).event.deployment.version == "1"

        remaining = {"writer": (names["writer"], [WRITE]), "kept": (names["kept"], [READ])}
        if change == "drop scope":
            remaining["leaked"] = (names["leaked"], [WRITE])
        write_auth_file(path, remaining)
        running.loop.call_soon_threadsafe(running.server.reload_tokens)  # what SIGHUP does
        got, seen = ending(leaked)
        assert got == code, got
        assert running.server.tokens is not None
        record(stub, names["writer"], "2")
        assert seen == [], "a revoked stream delivered events after the reload"
        assert first_event(kept).event.deployment.version == "2", "the kept stream goes on"
        kept.cancel()
    finally:
        running.stop()


def test_sighup_ends_a_watch_opened_by_a_token_removed_from_the_file(database_url, tokens):
    """The same through the real signal, on a server process."""
    path, names = tokens
    server = ServerProcess(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--database-url",
        database_url,
        "--auth-file",
        str(path),
        "--progress-interval",
        "0.5",
    )
    try:
        stub = server.stub
        record(stub, names["writer"], "1")
        stream = stub.WatchDeployments(
            pb.WatchDeploymentsRequest(after_revision=0),
            metadata=bearer(names["leaked"]),
            timeout=30,
        )
        assert first_event(stream).event.deployment.version == "1"
        write_auth_file(path, {"writer": (names["writer"], [WRITE])})
        server.proc.send_signal(signal.SIGHUP)
        got, _ = ending(stream)
        assert got == grpc.StatusCode.UNAUTHENTICATED, got
        assert server.proc.poll() is None, "SIGHUP must not stop the server"
    finally:
        assert server.stop() == 0
