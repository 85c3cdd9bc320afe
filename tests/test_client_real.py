"""The Python client's resume, error and auth rules, against real servers."""

from __future__ import annotations

import time

import pytest
from versioner_client import PreconditionFailed, VersionerClient
from versioner_client.errors import Unauthenticated

from tests.conftest import start_server
from versioner_grpc import auth


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_watch_resumes_after_a_slow_consumer_cut_off_without_gaps(config):
    running = start_server(config, watch_buffer=3)
    try:
        with VersionerClient(running.address) as client:
            for i in range(300):
                client.record("svc", str(i), "prod", "success", metadata={"pad": "x" * 20_000})
            received = []
            for event in client.watch(after_revision=0):
                received.append(event.revision)
                if len(received) == 1:
                    time.sleep(1.0)  # fall behind: the server cuts this stream off
                if len(received) == 300:
                    break
            assert received == list(range(1, 301))
    finally:
        running.stop()


def test_watch_from_a_compacted_revision_raises_the_reason(server):
    with VersionerClient(server.address, retries=0) as client:
        for i in range(3):
            client.record("svc", str(i), "prod", "success")
        server.run(server.server.store.compact(older_than=2**62))
        with pytest.raises(PreconditionFailed) as caught:
            next(iter(client.watch(after_revision=0)))
        assert caught.value.reason == "REVISION_COMPACTED"


def test_closing_the_watch_generator_ends_the_stream_on_the_server(server):
    with VersionerClient(server.address) as client:
        client.record("svc", "1", "prod", "success")
        stream = client.watch(after_revision=0)
        assert next(stream).revision == 1
        _wait(lambda: server.server.watch.watchers == 1)
        stream.close()
        _wait(lambda: server.server.watch.watchers == 0)


def test_the_token_is_sent_as_a_bearer_header(config, tmp_path):
    tokens = tmp_path / "tokens.toml"
    secret = auth.create_token(tokens, "ci", [auth.WRITE, auth.READ])
    running = start_server(config, auth_file=str(tokens))
    try:
        with VersionerClient(running.address, token=secret) as client:
            response = client.record("svc", "1", "prod", "success")
            assert response.event.recorded_by == "ci"
        with (
            VersionerClient(running.address, token="vrs_wrong", retries=0) as client,
            pytest.raises(Unauthenticated),
        ):
            client.record("svc", "2", "prod", "success")
    finally:
        running.stop()
