"""The HTTP/JSON API (DESIGN.md section 8) against real servers on SQLite and PostgreSQL.

Requests go over real sockets with httpx (and http.client where a client would
clean the path up first); the same server answers gRPC, so every test can check
what HTTP did through the other API.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from versioner.v1 import deployment_service_pb2 as pb

from tests.certs import make_pki
from tests.conftest import RunningServer, start_server
from tests.processes import ServerProcess
from tests.test_security import Tokens
from tests.test_server_process import TcpProxy, postgres_database, wait_until  # noqa: F401 (fixture)

TIMEOUT = 10.0  # per request: a hang fails the test instead of stalling it

# The seed's three examples, byte for byte as a user pastes them into curl.
SEED_SUCCESS = b"""{
  "product_name": "my-service",
  "version": "1.2.3",
  "environment_name": "production",
  "status": "success",
  "deployed_by": "john.doe",
  "scm_branch": "main",
  "scm_sha": "abc123def456",
  "build_url": "https://ci.example.com/builds/123",
  "extra_metadata": {
    "deployment_duration_seconds": 120
  }
}"""
SEED_STARTED = (
    b'{"product_name": "api-gateway", "version": "2.0.0", "environment_name": "staging", '
    b'"status": "started", "deployed_by": "jenkins", "scm_branch": "main", '
    b'"scm_sha": "a1b2c3d4e5f6", "build_url": "https://ci.example.com/job/api-gateway/42/"}'
)
SEED_FAILED = b"""{"product_name":"billing","version":"3.4.5","environment_name":"production",
"status":"failed","deployed_by":"alice","scm_branch":"release/3.4","scm_sha":"9f8e7d6c5b4a",
"build_url":"https://github.com/acme/billing/actions/runs/1234",
"extra_metadata":{"region":"eu-west-1","reason":"health check timeout"}}"""
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def config(config):
    return replace(config, metrics_listen="127.0.0.1:0")


@pytest.fixture
def api(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=TIMEOUT) as client:
        yield client


def post(api: httpx.Client, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return api.post("/deployment-events/", content=body, headers={**JSON, **headers})


def event(**fields: Any) -> dict[str, Any]:
    base = {"product_name": "web", "version": "1.0.0", "environment_name": "production"}
    return {**base, "status": "success", **fields}


def stored(server: RunningServer, token: str = "") -> tuple[int, int]:
    """(head revision, deployments) as gRPC sees them: proves whether anything was written."""
    auth = [("authorization", f"Bearer {token}")] if token else None
    current = server.stub.GetCurrent(pb.GetCurrentRequest(), timeout=TIMEOUT, metadata=auth)
    history = server.stub.ListHistory(
        pb.ListHistoryRequest(page_size=1000), timeout=TIMEOUT, metadata=auth
    )
    return current.revision, len(history.deployments)


# --------------------------------------------------------------------------- the seed's API


def test_seed_examples_are_accepted_and_answered_with_versioner_fields(server, api):
    done = post(api, SEED_SUCCESS)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["product_name"] == "my-service"
    assert body["version"] == "1.2.3"
    assert body["environment_name"] == "production"
    assert body["environment_type"] == "production"
    assert body["status"] == "completed"  # "success" comes back as the canonical word
    assert body["deployed_by"] == "john.doe"
    assert body["scm_branch"] == "main" and body["scm_sha"] == "abc123def456"
    assert body["build_url"] == "https://ci.example.com/builds/123"
    assert body["extra_metadata"] == {"deployment_duration_seconds": 120}
    assert body["completed_at"] == body["deployed_at"]
    assert body["revision"] == 1 and body["duplicate"] is False and body["id"]

    started = post(api, SEED_STARTED).json()
    assert started["status"] == "started"
    assert started["scm_branch"] == "main" and started["scm_sha"] == "a1b2c3d4e5f6"
    assert (
        started["build_url"]
        == started["deploy_url"]
        == ("https://ci.example.com/job/api-gateway/42/")
    )
    assert started["completed_at"] is None and started["environment_type"] == "staging"

    failed = post(api, SEED_FAILED).json()
    assert failed["status"] == "failed"
    assert failed["extra_metadata"] == {"region": "eu-west-1", "reason": "health check timeout"}
    assert failed["revision"] == 3


def test_post_without_the_trailing_slash_records_too(server, api):
    response = api.post("/deployment-events", json=event())
    assert response.status_code == 200, response.text
    assert stored(server) == (1, 1)


def test_status_aliases_come_back_as_canonical_words(api):
    words = {
        "pending": "pending",
        "in_progress": "started",
        "success": "completed",
        "completed": "completed",
        "cancelled": "aborted",
        "error": "failed",
        "DEPLOYMENT_STATUS_ABORTED": "aborted",
    }
    for i, (sent, canonical) in enumerate(words.items()):
        response = post(api, event(version=f"1.0.{i}", status=sent))
        assert response.status_code == 200, (sent, response.text)
        assert response.json()["status"] == canonical, sent


def test_deploy_url_is_an_alias_of_build_url(api):
    body = post(api, event(deploy_url="https://ci.example.com/7")).json()
    assert body["build_url"] == "https://ci.example.com/7"
    assert body["deploy_url"] == "https://ci.example.com/7"


def test_completed_at_is_the_event_time_of_a_terminal_status(api):
    body = post(api, event(completed_at="2026-01-02T03:04:05Z")).json()
    assert body["completed_at"] == "2026-01-02T03:04:05Z"
    assert body["event_time"] == "2026-01-02T03:04:05Z"


def test_client_fields_and_unknown_fields_are_kept_in_extra_metadata(api):
    sent = event(
        deployed_by_email="a@example.com",
        deployed_by_name="Alice",
        scm_repository="acme/web",
        source_system="github",
        build_number=42,
        invoke_id="inv-1",
        team="payments",
        extra_metadata={"region": "eu", "build_number": "explicit wins"},
    )
    body = post(api, sent).json()
    assert body["extra_metadata"] == {
        "deployed_by_email": "a@example.com",
        "deployed_by_name": "Alice",
        "scm_repository": "acme/web",
        "source_system": "github",
        "build_number": "explicit wins",
        "invoke_id": "inv-1",
        "_unknown.team": "payments",
        "region": "eu",
    }


def test_replayed_event_id_is_a_duplicate_that_writes_nothing(server, api):
    first = post(api, event(event_id="ci-run-1")).json()
    again = post(api, event(event_id="ci-run-1")).json()
    assert again["duplicate"] is True and again["id"] == first["id"]
    assert again["revision"] == first["revision"]
    assert stored(server) == (1, 1)


def test_started_then_success_is_one_deployment_with_a_duration(api):
    started = post(api, event(status="started", event_time="2026-01-01T00:00:00Z")).json()
    done = post(api, event(status="success", event_time="2026-01-01T00:01:30Z")).json()
    assert done["id"] == started["id"]
    assert done["duration_seconds"] == 90.0
    assert done["deployed_at"] == "2026-01-01T00:00:00Z"


# --------------------------------------------------------------------------- one implementation


def test_a_deployment_recorded_over_http_is_visible_over_grpc(server, api):
    body = post(api, event(scm_sha="abcdef12")).json()
    current = server.stub.GetCurrent(
        pb.GetCurrentRequest(product_name="web", environment_name="production"), timeout=TIMEOUT
    )
    assert current.states[0].current.id == body["id"]
    assert current.states[0].current.scm_sha == "abcdef12"
    assert current.states[0].current.status == pb.DEPLOYMENT_STATUS_COMPLETED


def test_a_deployment_recorded_over_grpc_is_visible_over_http(server, api):
    recorded = server.stub.RecordEvent(
        pb.RecordEventRequest(
            product_name="web",
            version="2.0.0",
            environment_name="staging",
            status=pb.DEPLOYMENT_STATUS_STARTED,
        ),
        timeout=TIMEOUT,
    )
    deployment_id = recorded.event.deployment.id
    one = api.get(f"/deployments/{deployment_id}")
    assert one.status_code == 200 and one.json()["status"] == "started"
    current = api.get("/deployments/current", params={"environment_name": "staging"}).json()
    assert current["revision"] == recorded.event.revision
    assert current["states"][0]["latest"]["id"] == deployment_id
    assert current["states"][0]["current"] is None


def test_grpc_rules_apply_over_http_version_sha_mismatch_is_409(server, api):
    assert post(api, event(scm_sha="aaaa1111")).status_code == 200
    refused = post(api, event(scm_sha="bbbb2222", environment_name="staging"))
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert detail["code"] == "VERSION_SHA_MISMATCH"
    assert detail["message"] and detail["error"] == "conflict"
    assert isinstance(detail["details"], dict)
    assert stored(server) == (1, 1)


def test_another_terminal_status_for_an_ended_deployment_is_409(api):
    first = post(api, event(deployment_id="d-1")).json()
    refused = post(api, event(deployment_id=first["id"], status="failed"))
    assert refused.status_code == 409
    assert refused.json()["detail"]["code"] == "INVALID_TRANSITION"


# --------------------------------------------------------------------------- reads


def test_history_filters_by_repeated_status_and_pages_with_a_cursor(api):
    for i, status in enumerate(["success", "failed", "aborted", "failed", "success"]):
        assert post(api, event(version=f"1.{i}", status=status)).status_code == 200
    page = api.get("/deployments/", params={"status": ["failed", "aborted"], "limit": 2}).json()
    assert [d["version"] for d in page["deployments"]] == ["1.3", "1.2"]
    assert page["next_cursor"]
    rest = api.get(
        "/deployments/",
        params={"status": ["failed", "aborted"], "limit": 2, "cursor": page["next_cursor"]},
    ).json()
    assert [d["version"] for d in rest["deployments"]] == ["1.1"]
    assert rest["next_cursor"] is None
    assert rest["revision"] == 5
    versions = api.get("/deployments/", params={"version": "1.4"}).json()["deployments"]
    assert [d["status"] for d in versions] == ["completed"]


def test_current_filters_by_product_and_environment(api):
    post(api, event(product_name="a", environment_name="production"))
    post(api, event(product_name="b", environment_name="production"))
    post(api, event(product_name="a", environment_name="staging", version="2.0"))
    states = api.get("/deployments/current", params={"product_name": "a"}).json()["states"]
    assert [(s["environment_name"], s["current"]["version"]) for s in states] == [
        ("production", "1.0.0"),
        ("staging", "2.0"),
    ]
    everything = api.get("/deployments/current").json()["states"]
    assert len(everything) == 3


def test_a_client_chosen_id_with_slashes_is_found_by_its_path(api):
    post(api, event(deployment_id="team/app@42", status="started"))
    found = api.get("/deployments/team/app@42")
    assert found.status_code == 200 and found.json()["id"] == "team/app@42"


def test_unknown_deployment_id_is_404_naming_the_field(api):
    missing = api.get("/deployments/no-such-id")
    assert missing.status_code == 404
    assert "deployment_id" in missing.json()["detail"]


def test_answers_match_the_models_the_openapi_document_shows(server, api):
    from versioner_grpc.rest import schemas

    recorded = post(api, SEED_STARTED).json()
    schemas.RecordedOut.model_validate(recorded, strict=True)
    post(api, event())
    current = api.get("/deployments/current").json()
    schemas.CurrentOut.model_validate(current, strict=True)
    assert any(s["current"] is None for s in current["states"])  # nulls are documented too
    schemas.HistoryOut.model_validate(api.get("/deployments/").json(), strict=True)
    one = api.get(f"/deployments/{recorded['id']}").json()
    schemas.DeploymentOut.model_validate(one, strict=True)
    with api.stream("GET", "/deployments/watch", params={"after_revision": 0}) as response:
        first = next(m for m in read_sse(response) if m.get("event") == "deployment")
    schemas.EventOut.model_validate(json.loads(first["data"]), strict=True)
    spec = api.get("/openapi.json").json()
    answer = spec["paths"]["/deployment-events/"]["post"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/RecordedOut")


def test_health_openapi_and_docs_need_no_token_and_serve_no_cdn(server, api):
    assert api.get("/health").json() == {"status": "serving"}
    spec = api.get("/openapi.json").json()
    validate(spec)  # a valid OpenAPI 3 document
    assert {"/deployment-events/", "/deployments/", "/deployments/current"} <= set(spec["paths"])
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
    asset = api.get("/docs/assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000


# --------------------------------------------------------------------------- bad input


TEN_MIB = b'{"product_name": "' + b"x" * (10 << 20) + b'"}'
BAD_BODIES: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("malformed JSON", b'{"product_name": ', JSON, 422, "body"),
    ("not an object", b'["web", "1.0.0"]', JSON, 422, "body"),
    ("wrong content type", json.dumps(event()).encode(), {"Content-Type": "text/plain"}, 415,
     "Content-Type"),
    ("no content type", json.dumps(event()).encode(), {}, 415, "Content-Type"),
    ("version is a number", json.dumps(event(version=1.2)).encode(), JSON, 422, "version"),
    ("metadata is a list", json.dumps(event(extra_metadata=[1])).encode(), JSON, 422,
     "extra_metadata"),
    ("unknown status word", json.dumps(event(status="shipped")).encode(), JSON, 422, "status"),
    ("NUL in product_name", json.dumps(event(product_name="we\x00b")).encode(), JSON, 422,
     "product_name"),
    ("control character in environment", json.dumps(event(environment_name="prod\x1b[0m"))
     .encode(), JSON, 422, "environment_name"),
    ("bad build_url", json.dumps(event(build_url="javascript:alert(1)")).encode(), JSON, 422,
     "build_url"),
    ("event_time in the future", json.dumps(event(event_time="2999-01-01T00:00:00Z")).encode(),
     JSON, 422, "event_time"),
    ("completed_at with started", json.dumps(event(status="started", completed_at=
     "2026-01-01T00:00:00Z")).encode(), JSON, 422, "completed_at"),
    ("missing product_name", b'{"version": "1", "environment_name": "p", "status": "success"}',
     JSON, 422, "product_name"),
    ("10 MiB body", TEN_MIB, JSON, 413, "body"),
    ("a number JSON cannot carry", b'{"product_name": "w", "version": "1", "environment_name": '
     b'"p", "status": "success", "build_number": 1e400}', JSON, 422, "build_number"),
    ("NaN in extra_metadata", b'{"product_name": "w", "version": "1", "environment_name": "p", '
     b'"status": "success", "extra_metadata": {"x": NaN}}', JSON, 422, "extra_metadata"),
    ("empty body", b"", JSON, 422, "body"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_event_bodies_get_the_right_4xx_naming_the_field_and_write_nothing(
    server, api, body, headers, status, field
):
    response = api.post("/deployment-events/", content=body, headers=headers)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if status == 422:
        assert any(field in err["loc"] for err in detail), detail
    else:
        assert field.lower() in detail.lower()
    assert stored(server) == (0, 0)


def test_nul_bytes_inside_extra_metadata_are_data_kept_exactly(server, api):
    sent = event(extra_metadata={"log": "a\x00b", "k\x00": "v"}, note="x\x00y")
    body = post(api, sent)
    assert body.status_code == 200, body.text
    again = api.get(f"/deployments/{body.json()['id']}").json()["extra_metadata"]
    assert again == {"log": "a\x00b", "k\x00": "v", "_unknown.note": "x\x00y"}


def nested(levels: int) -> dict[str, Any]:
    """extra_metadata with `levels` objects nested inside it."""
    value: Any = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return {"deep": value}


def test_extra_metadata_nested_16_levels_is_kept_and_17_is_422_over_http(server, api):
    kept = post(api, event(extra_metadata=nested(15)))  # 16 levels, extra_metadata included
    assert kept.status_code == 200, kept.text
    assert api.get(f"/deployments/{kept.json()['id']}").json()["extra_metadata"] == nested(15)
    for levels in (16, 40, 500):
        refused = post(api, event(version=f"v{levels}", extra_metadata=nested(levels)))
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "extra_metadata"]
    assert stored(server) == (1, 1)


def test_extra_metadata_nested_too_deep_is_invalid_argument_over_grpc(server):
    request = pb.RecordEventRequest(
        product_name="web",
        version="1",
        environment_name="prod",
        status=pb.DEPLOYMENT_STATUS_COMPLETED,
    )
    request.extra_metadata.update(nested(20))
    with pytest.raises(grpc.RpcError) as info:
        server.stub.RecordEvent(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "extra_metadata" in info.value.details()
    assert stored(server) == (0, 0)


def test_a_10_mib_body_without_content_length_is_413_too(server):
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * (1 << 20)

    with httpx.Client(base_url=server.http_url, timeout=TIMEOUT) as client:
        response = client.post("/deployment-events/", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert stored(server) == (0, 0)


BAD_QUERIES = [
    ("/deployments/?cursor=not-a-cursor", "cursor"),
    ("/deployments/?limit=0", "limit"),
    ("/deployments/?limit=100000", "limit"),
    ("/deployments/?status=shipped", "status"),
    ("/deployments/?product_name=a%00b", "product_name"),
    ("/deployments/?since=yesterday", "since"),
    ("/deployments/current?environment_name=%1B", "environment_name"),
    ("/deployments/watch?after_revision=-1", "after_revision"),
    ("/deployments/a%00b", "deployment_id"),
]


@pytest.mark.parametrize(("path", "field"), BAD_QUERIES)
def test_bad_query_parameters_are_422_naming_the_parameter(api, path, field):
    response = api.get(path)
    assert response.status_code == 422, response.text
    assert any(field in err["loc"] for err in response.json()["detail"])


def test_a_cursor_from_other_filters_is_refused(api):
    for i in range(3):
        post(api, event(version=f"1.{i}"))
    cursor = api.get("/deployments/", params={"limit": 1}).json()["next_cursor"]
    other = api.get("/deployments/", params={"limit": 1, "cursor": cursor, "version": "1.0"})
    assert other.status_code == 422
    assert other.json()["detail"][0]["loc"] == ["query", "cursor"]


@pytest.mark.parametrize(
    "path",
    ["/deployments/../../etc/passwd", "/deployments/..%2F..%2Fetc%2Fpasswd", "/deployments/%2e%2e"],
)
def test_path_traversal_in_the_id_is_a_4xx_never_a_file(server, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.server.http_port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)  # sent as is: no client-side dot-segment removal
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert 400 <= response.status < 500, body
    assert b"root:" not in body


# --------------------------------------------------------------------------- auth and scopes


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    return Tokens(tmp_path)


@pytest.fixture
def secured(config, tokens: Tokens) -> Iterator[RunningServer]:
    running = start_server(config, auth_file=str(tokens.path))
    try:
        yield running
    finally:
        running.stop()


def test_auth_missing_or_unknown_token_is_401_with_a_detail_string(secured, tokens):
    with httpx.Client(base_url=secured.http_url, timeout=TIMEOUT) as client:
        missing = post(client, event())
        unknown = post(client, event(), Authorization="Bearer vrs_nobody")
        reads = client.get("/deployments/current")
    for response in (missing, unknown, reads):
        assert response.status_code == 401
        assert isinstance(response.json()["detail"], str)
        assert response.headers["www-authenticate"] == "Bearer"
    assert stored(secured, tokens.admin) == (0, 0)


def test_auth_a_read_token_cannot_write_and_a_write_token_can(secured, tokens):
    with httpx.Client(base_url=secured.http_url, timeout=TIMEOUT) as client:
        refused = post(client, event(), Authorization=f"Bearer {tokens.reader}")
        assert refused.status_code == 403
        assert "deployments:write" in refused.json()["detail"]
        assert stored(secured, tokens.admin) == (0, 0)
        done = post(client, event(), Authorization=f"Bearer {tokens.writer}")
        assert done.status_code == 200
        assert done.json()["recorded_by"] == "ci-writer"  # the principal, as over gRPC
        read = client.get("/deployments/", headers={"Authorization": f"Bearer {tokens.reader}"})
        assert read.status_code == 200 and len(read.json()["deployments"]) == 1
        assert client.get("/health").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200


def test_auth_the_event_stream_needs_the_read_scope(secured, tokens):
    with httpx.Client(base_url=secured.http_url, timeout=TIMEOUT) as client:
        assert client.get("/deployments/watch").status_code == 401


# --------------------------------------------------------------------------- server-sent events


def read_sse(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Parsed SSE messages (id, event, data) from a streaming response."""
    message: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if message:
                yield message
            message = {}
            continue
        name, _, value = line.partition(":")
        message[name] = value.removeprefix(" ")


def test_sse_streams_stored_then_live_events_with_revision_ids(server, api):
    post(api, event(version="1"))
    with api.stream("GET", "/deployments/watch", params={"after_revision": 0}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = read_sse(response)
        first = next(m for m in messages if m.get("event") == "deployment")
        assert first["id"] == "1"
        assert json.loads(first["data"])["deployment"]["version"] == "1"
        post(api, event(version="2"))
        second = next(m for m in messages if m.get("event") == "deployment")
        assert second["id"] == "2"
        data = json.loads(second["data"])
        assert data["revision"] == 2 and data["status"] == "completed"


def test_sse_resumed_from_last_event_id_under_concurrent_writes_has_no_gap(server, api):
    total = 60
    errors: list[str] = []

    def write() -> None:
        with httpx.Client(base_url=server.http_url, timeout=TIMEOUT) as writer:
            for i in range(total):
                response = post(writer, event(version=f"v{i}", environment_name=f"env{i % 3}"))
                if response.status_code != 200:
                    errors.append(response.text)

    seen: list[int] = []
    writer = threading.Thread(target=write)
    writer.start()
    try:
        last: str | None = None
        while len(seen) < total:
            headers = {"Last-Event-ID": last} if last is not None else {}
            params = {} if last is not None else {"after_revision": 0}
            with api.stream("GET", "/deployments/watch", params=params, headers=headers) as resp:
                assert resp.status_code == 200
                taken = 0
                for message in read_sse(resp):
                    if message.get("event") == "error":
                        pytest.fail(message["data"])
                    if "id" in message:
                        last = message["id"]
                    if message.get("event") == "deployment":
                        seen.append(int(message["id"]))
                        taken += 1
                        if taken == 7 or len(seen) == total:
                            break  # drop the connection mid-stream, reconnect from `last`
    finally:
        writer.join()
    assert not errors
    assert seen == list(range(1, total + 1))  # every revision once, in order


def test_sse_filters_and_progress_keep_the_resume_point_fresh(server, api):
    post(api, event(version="ok", status="success"))
    post(api, event(version="bad", status="failed", environment_name="staging"))
    post(api, event(version="ok2", status="success"))
    params = {"after_revision": 0, "status": ["failed", "aborted"]}
    with api.stream("GET", "/deployments/watch", params=params) as response:
        messages = read_sse(response)
        only = next(m for m in messages if m.get("event") == "deployment")
        assert only["id"] == "2"
        assert json.loads(only["data"])["deployment"]["version"] == "bad"
        progress = next(m for m in messages if m.get("event") == "progress")
        assert progress["id"] == "3"  # the skipped success moves the resume point on
        assert json.loads(progress["data"]) == {"revision": 3}


def test_sse_last_event_id_must_be_a_revision(api):
    response = api.get("/deployments/watch", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "last-event-id"


# --------------------------------------------------------------------------- observability


def test_http_requests_are_counted_by_route_template_and_logged_once(server, api, caplog):
    caplog.set_level(logging.INFO, logger="versioner.http")
    post(api, event())
    api.get("/deployments/abc/def")  # an id in the path: the label stays the template
    exposition = httpx.get(server.metrics_url, timeout=TIMEOUT).text
    assert (
        'versioner_http_requests_total{code="200",method="POST",route="/deployment-events/"} 1.0'
        in exposition
    )
    assert (
        'versioner_http_requests_total{code="404",method="GET",'
        'route="/deployments/{deployment_id:path}"} 1.0' in exposition
    )
    assert "abc/def" not in exposition
    assert "versioner_http_request_duration_seconds_bucket" in exposition
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "http"]
    posted = [r.fields for r in lines if r.fields["route"] == "/deployment-events/"]
    assert len(posted) == 1
    assert posted[0]["code"] == 200 and posted[0]["method"] == "POST"
    assert {"duration_ms", "peer", "principal"} <= set(posted[0])


# --------------------------------------------------------------------------- serving


def test_http_listen_off_serves_no_http(config):
    running = start_server(config, http_listen="off")
    try:
        assert running.server.http_port == 0
        assert stored(running) == (0, 0)  # gRPC still serves
    finally:
        running.stop()


def test_http_over_tls_uses_the_grpc_certificate(config, tmp_path):
    pki = make_pki(tmp_path / "pki")
    running = start_server(config, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    try:
        assert running.http_url.startswith("https://")
        with httpx.Client(
            base_url=running.http_url,
            verify=ssl.create_default_context(cafile=str(pki.ca_cert)),
            timeout=TIMEOUT,
        ) as client:
            assert post(client, event()).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{running.server.http_port}/health", timeout=TIMEOUT)
        credentials = grpc.ssl_channel_credentials(pki.read("ca_cert"))
        with grpc.secure_channel(running.address, credentials) as channel:
            from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

            answer = pb_grpc.DeploymentServiceStub(channel).GetCurrent(
                pb.GetCurrentRequest(), timeout=TIMEOUT
            )
            assert answer.revision == 1
    finally:
        running.stop()


def test_sse_streams_end_when_the_server_stops_and_stop_does_not_hang(config):
    running = start_server(config)
    with (
        httpx.Client(base_url=running.http_url, timeout=TIMEOUT) as client,
        client.stream("GET", "/deployments/watch", params={"after_revision": 0}) as resp,
    ):
        messages = read_sse(resp)
        stopper = threading.Thread(target=running.stop)
        stopper.start()
        ending = [m for m in messages if m.get("event") == "error"]
        stopper.join(TIMEOUT * 3)
    assert not stopper.is_alive()
    assert json.loads(ending[0]["data"])["status"] == 503  # resume elsewhere


def test_one_process_serves_grpc_and_http_and_drains_both_on_sigterm(tmp_path):
    process = ServerProcess(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--http-listen", "127.0.0.1:0",
        "--database-url", f"sqlite:///{tmp_path}/v.db",
    )  # fmt: skip
    try:
        url = f"http://{process.http_address}"
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200
        body = httpx.post(url + "/deployment-events/", json=event(), timeout=TIMEOUT).json()
        answer = process.stub.GetCurrent(pb.GetCurrentRequest(), timeout=TIMEOUT)
        assert answer.states[0].current.id == body["id"]
    finally:
        code = process.stop()
    assert code == 0
    assert any(line.get("event") == "stopped" for line in process.lines)


def test_http_beyond_loopback_needs_an_auth_file_too(tmp_path):
    with pytest.raises(RuntimeError, match="server exited"):
        ServerProcess(
            "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--http-listen", "0.0.0.0:0",
            "--database-url", f"sqlite:///{tmp_path}/v.db",
        )  # fmt: skip
    assert not (tmp_path / "v.db").exists()


def test_health_is_503_and_writes_are_503_while_postgresql_is_unreachable(request):
    parts = urlsplit(request.getfixturevalue("postgres_database"))
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    process = ServerProcess(
        "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--http-listen", "127.0.0.1:0",
        "--database-url", via_proxy, "--health-interval", "0.2",
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://{process.http_address}", timeout=TIMEOUT) as client:
            assert client.get("/health").status_code == 200
            proxy.stop()
            wait_until(lambda: client.get("/health").status_code == 503, 10, "503 while down")
            assert client.get("/health").json() == {"status": "not_serving"}
            refused = post(client, event())
            assert refused.status_code == 503, refused.text
            assert isinstance(refused.json()["detail"], str)
    finally:
        proxy.stop()
        assert process.stop() == 0


def test_a_route_for_an_rpc_without_a_scope_is_refused_when_mounted():
    from fastapi import FastAPI

    from versioner_grpc.rest.routes import ApiRoute, mount

    async def endpoint() -> None:
        return None

    route = ApiRoute("GET", "/x", endpoint, "x", rpc="/versioner.v1.Nope/Unknown")
    with pytest.raises(ValueError, match="no required scope"):
        mount(FastAPI(), [route], tokens=None)


def test_a_taken_http_port_fails_the_start_with_a_clear_error(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as info:
            ServerProcess(
                "--listen", "127.0.0.1:0", "--metrics-listen", "off",
                "--http-listen", f"127.0.0.1:{port}", "--database-url", f"sqlite:///{tmp_path}/v.db",
            )  # fmt: skip
    assert f"cannot listen on 127.0.0.1:{port}" in str(info.value)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "product_name", "version", "environment_name", "status", "deployed_by", "scm_branch",
    "scm_sha", "build_url", "deploy_url", "extra_metadata", "event_time", "completed_at",
    "event_id", "deployment_id", "scm_commit_time", "build_number", "invoke_id",
]  # fmt: skip


@settings(
    max_examples=120,
    deadline=None,
    database=None,  # no .hypothesis directory in the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    base=st.fixed_dictionaries(
        {},
        optional={
            "product_name": st.text(max_size=300),
            "version": st.text(max_size=20),
            "environment_name": st.sampled_from(["production", "staging", "", " "]) | st.text(),
            "status": st.sampled_from(["success", "started", "failed", "nope", ""]) | st.text(),
        },
    ),
    noise=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), JSON_VALUES, max_size=5),
)
def test_any_json_object_is_answered_200_or_4xx_never_5xx_and_refusals_write_nothing(
    server, api, base, noise
):
    before = stored(server)
    response = post(api, {**base, **noise})
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        assert stored(server) == before
        detail = response.json()["detail"]
        assert detail, response.text


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/deployments/", "/deployments/current", "/deployments/x"]),
    params=st.lists(
        st.tuples(
            st.sampled_from(
                ["product_name", "environment_name", "status", "version", "deployed_by", "since",
                 "until", "limit", "cursor", "other"]
            ),
            st.text(max_size=30),
        ),
        max_size=5,
    ),
)  # fmt: skip
def test_any_query_string_is_answered_200_404_or_422_never_5xx(api, path, params):
    response = api.get(path, params=params)
    assert response.status_code in (200, 404, 422), response.text
