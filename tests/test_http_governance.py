"""Governance over HTTP (DESIGN.md sections 6 and 8): /approvals/, /rules/check, /audit/ and
the rules' refusals of POST /deployment-events/, against real servers on both databases.

Every call goes over a real socket with a token from `versioner-server token create`; what
HTTP did is checked through gRPC where that proves the two APIs share one store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from versioner.v1 import governance_service_pb2 as gpb

from tests.governance_support import Governed
from tests.test_governance_enforce import CONCURRENCY, FLOW, FREEZE_NOW
from versioner_grpc.rest import governance as routes

TIMEOUT = 10.0
APPROVAL_RULE = """
[[rule]]
name = "prod-approval"
kind = "approval"
environment_types = ["production"]
required_approvals = 1
allow_self_approval = false
"""
EVENT = {
    "product_name": "shop",
    "version": "1.0.0",
    "environment_name": "production",
    "status": "started",
}
TRIPLE = {"product_name": "shop", "version": "1.0.0", "environment_name": "production"}


class Http:
    """The governed server's HTTP API, as each principal."""

    def __init__(self, governed: Governed) -> None:
        self.governed = governed
        self.client = httpx.Client(base_url=governed.running.http_url, timeout=TIMEOUT)

    def call(self, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = f"Bearer {self.governed.tokens[who]}"
        return self.client.request(method, path, headers=headers, **kw)

    def get(self, who: str | None, path: str, **kw: Any) -> httpx.Response:
        return self.call(who, "GET", path, **kw)

    def post(self, who: str | None, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if body is not None:
            kw["json"] = body
        return self.call(who, "POST", path, **kw)


@pytest.fixture
def http(request, config, tmp_path) -> Iterator[Http]:
    governed = Governed(config, tmp_path, getattr(request, "param", APPROVAL_RULE))
    api = Http(governed)
    try:
        yield api
    finally:
        api.client.close()
        governed.stop()


def rules(text: str):
    return pytest.mark.parametrize("http", [text], indirect=True)


def loc(response: httpx.Response) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [e["loc"] for e in response.json()["detail"]]


def approvals_stored(http: Http) -> list[gpb.Approval]:
    response = http.governed.gov.ListApprovals(
        gpb.ListApprovalsRequest(page_size=1000), metadata=http.governed.auth("ci"), timeout=10
    )
    return list(response.approvals)


def test_full_approval_flow_over_http_only(http):
    refused = http.post("ci", "/deployment-events/", EVENT)
    assert refused.status_code == 428, refused.text
    assert refused.json()["detail"]["code"] == "APPROVAL_REQUIRED"
    assert refused.json()["detail"]["details"]["rule_name"] == "prod-approval"

    opened = http.post("ci", "/approvals/", {**TRIPLE, "reason": "release 1.0.0"})
    assert opened.status_code == 201, opened.text
    approval = opened.json()["approval"]
    assert approval["state"] == "pending" and approval["requested_by"] == "ci"
    assert approval["reason"] == "release 1.0.0" and approval["decisions"] == []
    again = http.post("alice", "/approvals/", TRIPLE)
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["approval"]["id"] == approval["id"]

    still = http.post("ci", "/deployment-events/", EVENT)
    assert still.status_code == 428
    assert still.json()["detail"]["details"]["approval_id"] == approval["id"]

    approved = http.post("bob", f"/approvals/{approval['id']}/approve", {"comment": "ship it"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"
    decision = approved.json()["decisions"][0]
    assert decision["principal"] == "bob" and decision["decision"] == "approve"
    assert decision["comment"] == "ship it"

    started = http.post("ci", "/deployment-events/", EVENT)
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "started"
    assert started.json()["approval_id"] == approval["id"]
    shown = http.get("ci", f"/deployments/{started.json()['id']}")
    assert shown.json()["approval_id"] == approval["id"]
    assert [d.approval_id for d in http.governed.history()] == [approval["id"]]


def test_answers_match_the_models_in_the_openapi_document(http):
    """The documented schemas are built from the protos: real answers must fit them."""
    routes.REQUESTED.model_validate(opened := http.post("ci", "/approvals/", TRIPLE).json())
    approval_id = opened["approval"]["id"]
    routes.APPROVAL.model_validate(http.post("bob", f"/approvals/{approval_id}/approve").json())
    routes.APPROVAL.model_validate(http.get("ci", f"/approvals/{approval_id}").json())
    routes.APPROVAL_PAGE.model_validate(http.get("ci", "/approvals/").json())
    routes.CHECK.model_validate(http.get("ci", "/rules/check", params=TRIPLE).json())
    audit = http.get("ci", "/audit/").json()
    assert audit["entries"]
    routes.AUDIT_PAGE.model_validate(audit)
    schemas = http.get(None, "/openapi.json").json()["components"]["schemas"]
    assert {"Approval", "ApprovalDecision", "CheckRulesResponse", "AuditPage"} <= set(schemas)


def test_approve_and_reject_refuse_self_approval_and_a_decided_request_with_409(http):
    approval = http.post("alice", "/approvals/", TRIPLE).json()["approval"]
    own = http.post("alice", f"/approvals/{approval['id']}/approve")
    assert own.status_code == 409, own.text
    assert own.json()["detail"]["code"] == "SELF_APPROVAL"
    assert http.post("bob", f"/approvals/{approval['id']}/approve").status_code == 200
    late = http.post("carol", f"/approvals/{approval['id']}/reject", {"comment": "no"})
    assert late.status_code == 409
    assert late.json()["detail"]["code"] == "APPROVAL_NOT_PENDING"
    assert http.get("ci", f"/approvals/{approval['id']}").json()["state"] == "approved"


@rules(APPROVAL_RULE.replace("required_approvals = 1", "required_approvals = 2"))
def test_a_second_decision_by_the_same_principal_is_409_already_decided(http):
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    assert approval["required_approvals"] == 2
    assert http.post("bob", f"/approvals/{approval['id']}/approve").status_code == 200
    twice = http.post("bob", f"/approvals/{approval['id']}/approve")
    assert twice.status_code == 409, twice.text
    assert twice.json()["detail"]["code"] == "ALREADY_DECIDED"
    assert http.get("ci", f"/approvals/{approval['id']}").json()["state"] == "pending"
    assert http.post("carol", f"/approvals/{approval['id']}/approve").json()["state"] == "approved"


def test_reject_with_a_comment_rejects_and_get_shows_the_decision(http):
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    rejected = http.post("bob", f"/approvals/{approval['id']}/reject", {"comment": "not today"})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    shown = http.get("ci", f"/approvals/{approval['id']}", params={"wait": 5})
    assert shown.status_code == 200
    assert shown.json()["state"] == "rejected"
    assert shown.json()["decisions"][0]["comment"] == "not today"
    assert http.post("ci", "/deployment-events/", EVENT).status_code == 428


def test_approval_calls_need_their_scopes(http):
    assert http.post(None, "/approvals/", TRIPLE).status_code == 401
    assert http.post("bob", "/approvals/", TRIPLE).status_code == 403  # no write scope
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    forbidden = http.post("ci", f"/approvals/{approval['id']}/approve")  # no approve scope
    assert forbidden.status_code == 403 and "deployments:approve" in forbidden.json()["detail"]
    assert http.post("ci", f"/approvals/{approval['id']}/reject").status_code == 403
    assert http.get(None, "/approvals/").status_code == 401
    assert http.get(None, "/rules/check", params=TRIPLE).status_code == 401
    assert http.get(None, "/audit/").status_code == 401
    assert http.get("ci", f"/approvals/{approval['id']}").json()["state"] == "pending"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "1.0.0", "environment_name": "production"}, "product_name"),
        ({**TRIPLE, "version": ""}, "version"),
        ({**TRIPLE, "reason": "x" * 5000}, "reason"),
        ({**TRIPLE, "reason": "a\x00b"}, "reason"),
        ({**TRIPLE, "requested_by": "mallory"}, "requested_by"),
        ({**TRIPLE, "version": 7}, "version"),
    ],
)
def test_bad_approval_requests_are_422_naming_the_field_and_write_nothing(http, body, field):
    assert loc(http.post("ci", "/approvals/", body)) == [["body", field]]
    assert approvals_stored(http) == []


def test_approval_request_without_json_is_415_and_outside_any_rule_is_409(http):
    not_json = http.post("ci", "/approvals/", content=b"product_name=shop")
    assert not_json.status_code == 415
    outside = http.post("ci", "/approvals/", {**TRIPLE, "environment_name": "dev"})
    assert outside.status_code == 409
    assert outside.json()["detail"]["code"] == "APPROVAL_NOT_REQUIRED"
    assert approvals_stored(http) == []


def test_unknown_approval_ids_are_404_and_traversal_is_refused(http):
    assert http.get("ci", "/approvals/no-such-id").status_code == 404
    assert http.post("bob", "/approvals/no-such-id/approve").status_code == 404
    assert http.post("bob", "/approvals/no-such-id/reject").status_code == 404
    for path in ("/approvals/..%2f..%2fetc", "/approvals/%2e%2e"):
        answer = http.get("ci", path)
        assert answer.status_code in (404, 422), (path, answer.text)


def test_decision_body_must_be_json_and_known_fields(http):
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    path = f"/approvals/{approval['id']}/approve"
    assert http.post("bob", path, content=b"comment=x").status_code == 415
    assert loc(http.post("bob", path, {"comment": "x", "state": "approved"})) == [["body", "state"]]
    assert loc(http.post("bob", path, {"comment": "c" * 5000})) == [["body", "comment"]]
    assert http.get("ci", f"/approvals/{approval['id']}").json()["state"] == "pending"


def test_list_approvals_filters_by_state_and_pages_with_a_cursor(http):
    ids = [
        http.post("ci", "/approvals/", {**TRIPLE, "version": f"1.0.{n}"}).json()["approval"]["id"]
        for n in range(3)
    ]
    http.post("bob", f"/approvals/{ids[0]}/approve")
    pending = http.get("ci", "/approvals/", params={"state": "pending"}).json()
    assert {a["id"] for a in pending["approvals"]} == set(ids[1:])
    both = http.get("ci", "/approvals/?state=pending&state=approved").json()
    assert len(both["approvals"]) == 3
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1, "product_name": "shop"}
        if cursor:
            params["cursor"] = cursor
        page = http.get("ci", "/approvals/", params=params).json()
        seen += [a["id"] for a in page["approvals"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first
    assert loc(http.get("ci", "/approvals/", params={"state": "maybe"})) == [["query", "state"]]
    assert loc(http.get("ci", "/approvals/", params={"cursor": "bogus"})) == [["query", "cursor"]]
    assert loc(http.get("ci", "/approvals/", params={"limit": 0})) == [["query", "limit"]]


def test_get_approval_with_wait_answers_once_the_request_is_decided(http):
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    answers: list[httpx.Response] = []
    waiting = threading.Thread(
        target=lambda: answers.append(
            http.get("ci", f"/approvals/{approval['id']}", params={"wait": 60}, timeout=90)
        )
    )
    waiting.start()
    # Approving while the long poll waits (or before it began: it then answers at once).
    assert http.post("bob", f"/approvals/{approval['id']}/approve").status_code == 200
    waiting.join(90)
    assert not waiting.is_alive()
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["state"] == "approved"


def test_get_approval_wait_is_bounded_to_60_seconds(http):
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    assert loc(http.get("ci", f"/approvals/{approval['id']}", params={"wait": 61})) == [
        ["query", "wait"]
    ]
    assert loc(http.get("ci", f"/approvals/{approval['id']}", params={"wait": -1})) == [
        ["query", "wait"]
    ]


def test_rules_check_by_get_and_post_says_what_record_would_decide(http):
    blocked = http.get("ci", "/rules/check", params=TRIPLE)
    assert blocked.status_code == 200, blocked.text
    answer = blocked.json()
    assert answer["allowed"] is False and answer["approval_rules"] == ["prod-approval"]
    result = next(r for r in answer["results"] if r["rule_name"] == "prod-approval")
    assert result["outcome"] == "block" and result["reason"] == "APPROVAL_REQUIRED"
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    assert http.post("ci", "/rules/check", TRIPLE).json()["approval_id"] == approval["id"]
    http.post("bob", f"/approvals/{approval['id']}/approve")
    allowed = http.post("ci", "/rules/check", TRIPLE).json()
    assert allowed["allowed"] is True
    assert loc(http.get("ci", "/rules/check", params={**TRIPLE, "version": ""})) == [
        ["query", "version"]
    ]
    assert loc(http.get("ci", "/rules/check", params={"version": "1"}))[0] == [
        "query",
        "product_name",
    ]
    assert loc(http.post("ci", "/rules/check", {**TRIPLE, "extra": 1})) == [["body", "extra"]]


def test_audit_lists_the_trail_filtered_by_kind_and_principal_with_pages(http):
    approval = http.post("ci", "/approvals/", TRIPLE).json()["approval"]
    http.post("bob", f"/approvals/{approval['id']}/approve")
    everything = http.get("ci", "/audit/").json()["entries"]
    kinds = [e["kind"] for e in everything]
    assert "approval.requested" in kinds and "approval.approved" in kinds
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids)  # oldest first
    approved = http.get("ci", "/audit/", params={"kind": "approval.approved"}).json()
    assert [e["approval_id"] for e in approved["entries"]] == [approval["id"]]
    assert approved["entries"][0]["details"]["required_approvals"] == 1  # not 1.0
    by_bob = http.get("ci", "/audit/", params={"principal": "bob"}).json()["entries"]
    assert by_bob and all(e["principal"] == "bob" for e in by_bob)
    first = http.get("ci", "/audit/", params={"limit": 1}).json()
    second = http.get("ci", "/audit/", params={"limit": 1, "cursor": first["next_cursor"]})
    assert second.json()["entries"][0]["id"] == ids[1]
    later = http.get("ci", "/audit/", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert later["entries"] == []
    assert loc(http.get("ci", "/audit/", params={"kind": "nope"})) == [["query", "kind"]]
    assert loc(http.get("ci", "/audit/", params={"since": "yesterday"})) == [["query", "since"]]
    assert loc(http.get("ci", "/audit/", params={"cursor": "x"})) == [["query", "cursor"]]


def test_override_reason_needs_the_override_scope_and_is_kept_on_the_deployment(http):
    forced = {**EVENT, "override_reason": "hotfix for an outage"}
    refused = http.post("ci", "/deployment-events/", forced)
    assert refused.status_code == 403, refused.text
    assert http.governed.history() == []
    passed = http.post("oncall", "/deployment-events/", forced)
    assert passed.status_code == 200, passed.text
    assert passed.json()["override_reason"] == "hotfix for an outage"
    assert [d.override_reason for d in http.governed.history()] == ["hotfix for an outage"]
    overrides = http.get("ci", "/audit/", params={"kind": "deployment.override"}).json()
    assert [e["principal"] for e in overrides["entries"]] == ["oncall"]


@rules(FREEZE_NOW.format(mode="enforce"))
def test_a_freeze_window_refuses_with_423_and_retry_after(http):
    refused = http.post("ci", "/deployment-events/", EVENT)
    assert refused.status_code == 423, refused.text
    detail = refused.json()["detail"]
    assert detail["code"] == "NO_DEPLOY_WINDOW" and detail["error"] == "deployment_blocked"
    assert detail["details"]["rule_name"] == "release-freeze"
    assert detail["retry_after"]
    assert http.governed.history() == []


@rules(FREEZE_NOW.format(mode="report"))
def test_a_report_mode_rule_passes_and_lists_the_violation_on_the_deployment(http):
    passed = http.post("ci", "/deployment-events/", EVENT)
    assert passed.status_code == 200, passed.text
    violations = passed.json()["rule_violations"]
    assert [(v["rule_name"], v["reason"]) for v in violations] == [
        ("release-freeze", "NO_DEPLOY_WINDOW")
    ]


@rules(FLOW.format(mode="enforce"))
def test_a_flow_rule_refuses_with_428_naming_the_missing_environment(http):
    refused = http.post("ci", "/deployment-events/", EVENT)
    assert refused.status_code == 428, refused.text
    detail = refused.json()["detail"]
    assert detail["code"] == "FLOW_VIOLATION"
    assert detail["details"]["rule_name"] == "staging-first"


@rules(FLOW.format(mode="enforce"))
def test_a_flow_rule_soak_refuses_with_428_and_retry_after(http):
    staged = http.post(
        "ci",
        "/deployment-events/",
        {**EVENT, "environment_name": "staging-eu", "status": "completed"},
    )
    assert staged.status_code == 200, staged.text
    refused = http.post("ci", "/deployment-events/", EVENT)
    assert refused.status_code == 428, refused.text
    detail = refused.json()["detail"]
    assert detail["code"] == "INSUFFICIENT_SOAK_TIME"
    assert 3000 < int(detail["retry_after"]) <= 3600
    assert [d.environment_name for d in http.governed.history()] == ["staging-eu"]


@rules(CONCURRENCY.format(mode="enforce"))
def test_a_concurrency_rule_refuses_a_second_running_deployment_with_409(http):
    assert http.post("ci", "/deployment-events/", EVENT).status_code == 200
    refused = http.post("ci", "/deployment-events/", {**EVENT, "version": "1.0.1"})
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert (detail["code"], detail["error"]) == ("CONCURRENT_DEPLOYMENT", "deployment_blocked")
    assert detail["details"]["rule_name"] == "one-at-a-time"
    assert len(http.governed.history()) == 1


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(["/approvals/", "/approvals/x", "/audit/", "/rules/check"]),
    params=st.lists(
        st.tuples(
            st.sampled_from(
                ["product_name", "environment_name", "version", "state", "kind", "principal",
                 "since", "until", "limit", "cursor", "wait", "deployment_id", "other"]
            ),
            st.text(max_size=30),
        ),
        max_size=5,
    ),
)  # fmt: skip
def test_any_governance_query_string_is_answered_200_404_or_422_never_5xx(http, path, params):
    response = http.get("ci", path, params=params)
    assert response.status_code in (200, 404, 422), response.text


def test_openapi_documents_the_governance_routes_and_still_validates(http):
    document = http.get(None, "/openapi.json").json()
    validate(document)
    for path in (
        "/approvals/",
        "/approvals/{approval_id}",
        "/approvals/{approval_id}/approve",
        "/approvals/{approval_id}/reject",
        "/rules/check",
        "/audit/",
    ):
        assert path in document["paths"], path
    event_fields = document["components"]["schemas"]["DeploymentEvent"]["properties"]
    assert "override_reason" in event_fields


README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_the_readme_approval_flow_runs_as_written(http):
    """The README's curl snippet, against a real server: refused, approved, then recorded."""
    section = README.read_text().split("The approval flow with curl only", 1)[1]
    script = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "API=http://127.0.0.1:8080\n" in script
    script = script.replace(
        "API=http://127.0.0.1:8080\n", f"API={http.governed.running.http_url}\n"
    )
    env = {**os.environ, "CI": http.governed.tokens["ci"], "LEAD": http.governed.tokens["bob"]}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [
        json.loads(line) if line.startswith("{") else line for line in done.stdout.splitlines()
    ]
    assert lines[0]["detail"]["code"] == "APPROVAL_REQUIRED"
    assert "approved" in lines
    (deployment,) = http.governed.history()
    assert deployment.version == "1.4.0" and deployment.approval_id
    recorded = next(x for x in lines if isinstance(x, dict) and x.get("approval_id"))
    assert recorded["status"] == "started"
