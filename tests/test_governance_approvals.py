"""GovernanceService approvals: requests, decisions by two and three principals, expiry,
scopes, racing approvers (also across two replicas on PostgreSQL), pages and the audit trail."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from versioner.v1 import governance_service_pb2 as gpb
from versioner.v1 import governance_service_pb2_grpc as gpb_grpc

from tests.conftest import start_server
from tests.governance_support import TIMEOUT, Governed, create_token, refused

PENDING, APPROVED, REJECTED, EXPIRED = (
    gpb.APPROVAL_STATE_PENDING,
    gpb.APPROVAL_STATE_APPROVED,
    gpb.APPROVAL_STATE_REJECTED,
    gpb.APPROVAL_STATE_EXPIRED,
)


def approval_rules(required: int = 1, ttl: str = "24h", allow_self: bool = False) -> str:
    return f"""
[[rule]]
name = "prod-approval"
kind = "approval"
environment_types = ["production"]
required_approvals = {required}
approval_ttl = "{ttl}"
allow_self_approval = {str(allow_self).lower()}
"""


@pytest.fixture
def governed(request, config, tmp_path) -> Iterator[Governed]:
    running = Governed(config, tmp_path, getattr(request, "param", approval_rules()))
    try:
        yield running
    finally:
        running.stop()


def rules(text: str):
    return pytest.mark.parametrize("governed", [text], indirect=True)


def test_request_is_idempotent_for_an_open_request_and_names_the_requester(governed):
    first = governed.request_approval("ci")
    assert first.state == PENDING
    assert first.requested_by == "ci"
    assert first.required_approvals == 1
    again = governed.request_approval("alice")
    assert again.id == first.id and again.requested_by == "ci"
    other = governed.request_approval("ci", version="2.0.0")
    assert other.id != first.id
    fetched = governed.gov.GetApproval(
        gpb.GetApprovalRequest(approval_id=first.id), metadata=governed.auth("bob"), timeout=TIMEOUT
    ).approval
    assert fetched == again


def test_requester_cannot_approve_own_request(governed):
    approval = governed.request_approval("alice")
    code, info = refused(lambda: governed.approve("alice", approval.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "SELF_APPROVAL"
    assert governed.approve("bob", approval.id).state == APPROVED


@rules(approval_rules(allow_self=True))
def test_self_approval_when_every_rule_allows_it(governed):
    approval = governed.request_approval("alice")
    assert governed.approve("alice", approval.id).state == APPROVED


@rules(approval_rules(required=2))
def test_two_approvals_from_three_principals(governed):
    approval = governed.request_approval("ci")
    after_one = governed.approve("alice", approval.id, "looks good")
    assert after_one.state == PENDING
    assert [(d.principal, d.comment) for d in after_one.decisions] == [("alice", "looks good")]
    _, info = refused(lambda: governed.approve("alice", approval.id))
    assert info.reason == "ALREADY_DECIDED"
    _, info = refused(lambda: governed.record())
    assert info.reason == "APPROVAL_REQUIRED"
    assert info.metadata["approval_id"] == approval.id
    assert info.metadata["current_approvals"] == "1"
    assert info.metadata["required_approvals"] == "2"
    assert governed.approve("bob", approval.id).state == APPROVED
    _, info = refused(lambda: governed.approve("carol", approval.id))
    assert info.reason == "APPROVAL_NOT_PENDING"
    deployment = governed.record().event.deployment
    assert deployment.approval_id == approval.id
    kinds = [e.kind for e in governed.audit()]
    assert kinds.count("approval.decided") == 2
    assert kinds.count("approval.approved") == 1


@rules(approval_rules(required=3))
def test_any_rejection_rejects(governed):
    approval = governed.request_approval("ci")
    governed.approve("alice", approval.id)
    rejected = governed.reject("bob", approval.id, "not during the sale")
    assert rejected.state == REJECTED
    _, info = refused(lambda: governed.approve("carol", approval.id))
    assert info.reason == "APPROVAL_NOT_PENDING"
    _, info = refused(lambda: governed.record())
    assert info.reason == "APPROVAL_REQUIRED"
    assert "approval_id" not in info.metadata  # nothing pending any more
    fresh = governed.request_approval("ci")
    assert fresh.id != approval.id and fresh.state == PENDING
    assert [e.kind for e in governed.audit("approval.rejected")] == ["approval.rejected"]


def test_unknown_approval_is_not_found(governed):
    code, _ = refused(lambda: governed.approve("bob", "no-such-request"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = refused(
        lambda: governed.gov.GetApproval(
            gpb.GetApprovalRequest(approval_id="nope"), metadata=governed.auth("ci"), timeout=5
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = refused(lambda: governed.approve("bob", ""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@rules(approval_rules(ttl="1s"))
def test_expired_approval_cannot_be_decided_and_lets_nothing_through(governed):
    pending = governed.request_approval("ci")
    approved = governed.request_approval("ci", version="2.0.0")
    governed.approve("bob", approved.id)
    time.sleep(1.2)
    code, info = refused(lambda: governed.approve("bob", pending.id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "APPROVAL_EXPIRED"
    _, info = refused(lambda: governed.record(version="2.0.0"))
    assert info.reason == "APPROVAL_REQUIRED"
    states = governed.gov.ListApprovals(
        gpb.ListApprovalsRequest(states=[EXPIRED]), metadata=governed.auth("ci"), timeout=TIMEOUT
    ).approvals
    assert {a.id for a in states} == {pending.id, approved.id}
    assert governed.request_approval("ci").id != pending.id


def test_decisions_need_the_approve_scope_and_requests_the_write_scope(governed):
    approval = governed.request_approval("ci")
    code, _ = refused(lambda: governed.approve("ci", approval.id))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = refused(lambda: governed.request_approval("bob"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = refused(
        lambda: governed.gov.CheckRules(
            gpb.CheckRulesRequest(product_name="a", version="1", environment_name="prod"),
            timeout=TIMEOUT,
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_request_without_an_approval_rule_is_refused(governed):
    code, info = refused(lambda: governed.request_approval("ci", environment_name="dev"))
    assert info.reason == "APPROVAL_NOT_REQUIRED"
    code, _ = refused(lambda: governed.request_approval("ci", product_name=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_check_rules_is_the_preflight(governed):
    check = governed.check()
    assert not check.allowed
    assert check.approval_rules == ["prod-approval"]
    assert check.results[0].reason == "APPROVAL_REQUIRED"
    approval = governed.request_approval("ci")
    assert governed.check().approval_id == approval.id
    governed.approve("bob", approval.id)
    check = governed.check()
    assert check.allowed and check.approval_id == approval.id
    assert check.results[0].outcome == gpb.RULE_OUTCOME_PASS
    assert governed.check(environment_name="dev").allowed


def test_list_approvals_pages_newest_first(governed):
    ids = [governed.request_approval("ci", version=f"1.{i}").id for i in range(5)]
    seen, token = [], ""
    while True:
        page = governed.gov.ListApprovals(
            gpb.ListApprovalsRequest(product_name="shop", page_size=2, page_token=token),
            metadata=governed.auth("ci"),
            timeout=TIMEOUT,
        )
        seen += [a.id for a in page.approvals]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    code, _ = refused(
        lambda: governed.gov.ListApprovals(
            gpb.ListApprovalsRequest(product_name="other", page_token=page_token_of(governed)),
            metadata=governed.auth("ci"),
            timeout=TIMEOUT,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def page_token_of(governed: Governed) -> str:
    return governed.gov.ListApprovals(
        gpb.ListApprovalsRequest(product_name="shop", page_size=1),
        metadata=governed.auth("ci"),
        timeout=TIMEOUT,
    ).next_page_token


def test_audit_trail_pages_in_id_order_with_principal_and_kind_filters(governed):
    approval = governed.request_approval("ci")
    governed.approve("bob", approval.id, "ok")
    refused(lambda: governed.record(environment_name="prod", version="9"))
    entries, token = [], ""
    while True:
        page = governed.gov.ListAudit(
            gpb.ListAuditRequest(page_size=2, page_token=token),
            metadata=governed.auth("ci"),
            timeout=TIMEOUT,
        )
        entries += page.entries
        token = page.next_page_token
        if not token:
            break
    assert [e.kind for e in entries] == [
        "rules.reloaded",
        "approval.requested",
        "approval.decided",
        "approval.approved",
        "deployment.blocked",
    ]
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert entries[0].details["sha256"]
    assert entries[2].principal == "bob" and entries[2].details["comment"] == "ok"
    by_bob = governed.gov.ListAudit(
        gpb.ListAuditRequest(principal="bob"), metadata=governed.auth("ci"), timeout=TIMEOUT
    )
    assert {e.principal for e in by_bob.entries} == {"bob"}
    code, _ = refused(
        lambda: governed.gov.ListAudit(
            gpb.ListAuditRequest(kinds=["nope"]), metadata=governed.auth("ci"), timeout=TIMEOUT
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def _race(stubs: list[tuple[gpb_grpc.GovernanceServiceStub, str]], approval_id: str) -> list:
    barrier = threading.Barrier(len(stubs))
    outcomes: list = [None] * len(stubs)

    def approve(index: int) -> None:
        stub, token = stubs[index]
        barrier.wait()
        try:
            outcomes[index] = stub.Approve(
                gpb.ApproveRequest(approval_id=approval_id),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=TIMEOUT,
            ).approval.state
        except grpc.RpcError as exc:
            outcomes[index] = exc.code()

    threads = [threading.Thread(target=approve, args=(i,)) for i in range(len(stubs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_racing_approvers_on_two_replicas_make_one_approved_transition(governed):
    """PostgreSQL, two replicas: eight approvers race; one APPROVED, no lost decision."""
    names = [f"approver{i}" for i in range(8)]
    tokens = {n: create_token(governed.auth_file, n, ["deployments:approve"]) for n in names}
    governed.running.run(_reload_tokens(governed))
    replica = start_server(
        governed.config,
        auth_file=str(governed.auth_file),
        rules_file=str(governed.rules_file),
    )
    try:
        other = gpb_grpc.GovernanceServiceStub(replica.channel)
        for _ in range(3):
            approval = governed.request_approval("ci", version=f"race-{time.time_ns()}")
            stubs = [(governed.gov if i % 2 else other, tokens[n]) for i, n in enumerate(names)]
            outcomes = _race(stubs, approval.id)
            assert outcomes.count(APPROVED) == 1, outcomes
            assert all(o in (APPROVED, grpc.StatusCode.FAILED_PRECONDITION) for o in outcomes), (
                outcomes
            )
            stored = governed.gov.GetApproval(
                gpb.GetApprovalRequest(approval_id=approval.id),
                metadata=governed.auth("ci"),
                timeout=TIMEOUT,
            ).approval
            assert stored.state == APPROVED and len(stored.decisions) == 1
        approved = governed.audit("approval.approved")
        assert len(approved) == 3
    finally:
        replica.stop()


@rules(approval_rules(required=2))
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_racing_approvers_needing_two_lose_no_decision(governed):
    tokens = {n: governed.tokens[n] for n in ("alice", "bob", "carol")}
    approval = governed.request_approval("ci")
    outcomes = _race([(governed.gov, t) for t in tokens.values()], approval.id)
    assert outcomes.count(APPROVED) == 1, outcomes
    assert outcomes.count(PENDING) == 1, outcomes
    stored = governed.gov.GetApproval(
        gpb.GetApprovalRequest(approval_id=approval.id),
        metadata=governed.auth("ci"),
        timeout=TIMEOUT,
    ).approval
    assert len(stored.decisions) == 2


async def _reload_tokens(governed: Governed) -> None:
    governed.running.server.reload_tokens()


def test_expired_requests_are_swept_to_expired_and_audited_once(config, tmp_path):
    running = Governed(
        replace(config, approval_sweep_interval=0.2), tmp_path, approval_rules(ttl="1s")
    )
    try:
        approval = running.request_approval("ci")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not running.audit("approval.expired"):
            time.sleep(0.1)
        expired = running.audit("approval.expired")
        assert [e.approval_id for e in expired] == [approval.id]
        time.sleep(0.5)  # more sweeps: still one entry
        assert len(running.audit("approval.expired")) == 1
        stored = running.gov.GetApproval(
            gpb.GetApprovalRequest(approval_id=approval.id),
            metadata=running.auth("ci"),
            timeout=TIMEOUT,
        ).approval
        assert stored.state == EXPIRED
    finally:
        running.stop()


def test_long_poll_answers_when_another_principal_decides(governed):
    approval = governed.request_approval("ci")
    answer: list[gpb.Approval] = []

    def wait() -> None:
        request = gpb.GetApprovalRequest(approval_id=approval.id)
        request.wait.FromSeconds(30)
        answer.append(
            governed.gov.GetApproval(request, metadata=governed.auth("ci"), timeout=40).approval
        )

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    assert not answer  # still waiting
    governed.approve("bob", approval.id)
    waiter.join(35)
    assert answer and answer[0].state == APPROVED


def test_governance_service_is_listed_by_reflection_and_health(governed):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    reflection = reflection_pb2_grpc.ServerReflectionStub(governed.running.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)))
    names = {s.name for s in response.list_services_response.service}
    assert "versioner.v1.GovernanceService" in names
    health = health_pb2_grpc.HealthStub(governed.running.channel)
    status = health.Check(
        health_pb2.HealthCheckRequest(service="versioner.v1.GovernanceService"), timeout=TIMEOUT
    )
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_without_an_auth_file_every_caller_is_anonymous(config, tmp_path):
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(approval_rules() + approval_rules(allow_self=True).replace(
        'name = "prod-approval"', 'name = "staging-approval"').replace(
        '["production"]', '["staging"]'))  # fmt: skip
    running = start_server(config, rules_file=str(rules_file))
    try:
        gov = gpb_grpc.GovernanceServiceStub(running.channel)

        def request(env: str) -> gpb.Approval:
            return gov.RequestApproval(
                gpb.RequestApprovalRequest(product_name="a", version="1", environment_name=env),
                timeout=TIMEOUT,
            ).approval

        prod = request("production")
        assert prod.requested_by == "anonymous"
        _, info = refused(
            lambda: gov.Approve(gpb.ApproveRequest(approval_id=prod.id), timeout=TIMEOUT)
        )
        assert info.reason == "SELF_APPROVAL"
        staging = request("staging")
        approved = gov.Approve(gpb.ApproveRequest(approval_id=staging.id), timeout=TIMEOUT)
        assert approved.approval.state == APPROVED
    finally:
        running.stop()
