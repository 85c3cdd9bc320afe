"""Rules in the write path: each kind in enforce, report and off mode, overrides,
what a refusal writes (an audit row, nothing else), and what a deployment records."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import timestamp_pb2
from versioner.v1 import deployment_service_pb2 as pb

from tests.governance_support import TIMEOUT, Governed, refused

STARTED = pb.DEPLOYMENT_STATUS_STARTED
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
PENDING = pb.DEPLOYMENT_STATUS_PENDING
FAILED = pb.DEPLOYMENT_STATUS_FAILED
ABORTED = pb.DEPLOYMENT_STATUS_ABORTED

APPROVAL = """
[[rule]]
name = "prod-approval"
kind = "approval"
mode = "{mode}"
environment_types = ["production"]
"""


@pytest.fixture
def governed(request, config, tmp_path) -> Iterator[Governed]:
    running = Governed(config, tmp_path, request.param)
    try:
        yield running
    finally:
        running.stop()


def rules(text: str):
    return pytest.mark.parametrize("governed", [text], indirect=True)


def ago(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int((time.time() - seconds) * 1e9))
    return ts


@rules(APPROVAL.format(mode="enforce"))
def test_enforced_approval_refuses_start_and_writes_only_an_audit_row(governed):
    code, info = refused(lambda: governed.record(event_id="e-1"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert info.reason == "APPROVAL_REQUIRED"
    assert info.metadata["rule_name"] == "prod-approval"
    assert info.metadata["required_approvals"] == "1"
    assert info.metadata["current_approvals"] == "0"
    code, info = refused(lambda: governed.record(status=COMPLETED))
    assert info.reason == "APPROVAL_REQUIRED"
    assert governed.history() == []
    blocked = governed.audit("deployment.blocked")
    assert len(blocked) == 2
    assert blocked[0].principal == "ci"
    assert blocked[0].rule_name == "prod-approval"
    assert blocked[0].details["reason"] == "APPROVAL_REQUIRED"
    assert blocked[0].details["event_id"] == "e-1"
    # The event_id of a refused event was not consumed: once allowed, it records.
    approval = governed.request_approval()
    governed.approve("alice", approval.id)
    response = governed.record(event_id="e-1")
    assert not response.duplicate
    assert response.event.deployment.approval_id == approval.id


@rules(APPROVAL.format(mode="enforce"))
def test_pending_failed_and_aborted_are_never_blocked(governed):
    queued = governed.record(status=PENDING).event.deployment
    governed.record(status=FAILED, version="0.9.0")
    governed.record(status=ABORTED, deployment_id=queued.id)
    assert [d.status for d in governed.history()] == [FAILED, ABORTED]


@rules(APPROVAL.format(mode="enforce"))
def test_an_existing_deployment_named_by_id_is_still_checked(governed):
    queued = governed.record(status=PENDING, deployment_id="deploy-7").event.deployment
    assert queued.id == "deploy-7"
    _, info = refused(lambda: governed.record(status=STARTED, deployment_id="deploy-7"))
    assert info.reason == "APPROVAL_REQUIRED"
    _, info = refused(lambda: governed.record(status=COMPLETED, deployment_id="deploy-7"))
    assert info.reason == "APPROVAL_REQUIRED"
    assert [d.status for d in governed.history()] == [PENDING]


@rules(APPROVAL.format(mode="enforce"))
def test_environments_no_rule_covers_are_untouched(governed):
    deployment = governed.record(environment_name="dev").event.deployment
    assert deployment.status == STARTED
    assert deployment.approval_id == "" and list(deployment.rule_violations) == []
    assert governed.audit("deployment.blocked", "rule.reported") == []


@rules(APPROVAL.format(mode="report"))
def test_report_mode_allows_and_records_the_violation_everywhere(governed):
    response = governed.record()
    violations = response.event.deployment.rule_violations
    assert [(v.rule_name, v.kind, v.reason) for v in violations] == [
        ("prod-approval", "approval", "APPROVAL_REQUIRED")
    ]
    current = governed.stub.GetCurrent(
        pb.GetCurrentRequest(product_name="shop"), metadata=governed.auth("ci"), timeout=TIMEOUT
    )
    assert current.states[0].latest.rule_violations[0].rule_name == "prod-approval"
    assert governed.history()[0].rule_violations[0].reason == "APPROVAL_REQUIRED"
    watch = governed.stub.WatchDeployments(
        pb.WatchDeploymentsRequest(after_revision=0), metadata=governed.auth("ci"), timeout=TIMEOUT
    )
    first = next(iter(watch))
    watch.cancel()
    assert first.event.deployment.rule_violations[0].rule_name == "prod-approval"
    reported = governed.audit("rule.reported")
    assert len(reported) == 1 and reported[0].rule_name == "prod-approval"


@rules(APPROVAL.format(mode="off"))
def test_off_mode_is_ignored(governed):
    deployment = governed.record().event.deployment
    assert list(deployment.rule_violations) == []
    result = governed.check()
    assert result.allowed and list(result.results) == []


FREEZE_NOW = """
[[rule]]
name = "release-freeze"
kind = "freeze"
mode = "{mode}"
environments = ["prod*"]
start = 2020-01-01T00:00:00Z
end = "2999-01-01T00:00:00+00:00"
reason = "year-end freeze"
"""


@rules(FREEZE_NOW.format(mode="enforce"))
def test_enforced_freeze_refuses_with_window_end(governed):
    _, info = refused(lambda: governed.record())
    assert info.reason == "NO_DEPLOY_WINDOW"
    assert info.metadata["window_end"] == "2999-01-01T00:00:00Z"
    assert int(info.metadata["retry_after"]) > 0
    # A glob that does not match is not covered.
    assert governed.record(environment_name="staging").event.deployment.status == STARTED
    check = governed.check()
    assert not check.allowed
    assert check.results[0].outcome == 2  # BLOCK
    assert check.results[0].retry_after.seconds > 0


@rules(FREEZE_NOW.format(mode="report"))
def test_reported_freeze_allows(governed):
    deployment = governed.record().event.deployment
    assert deployment.rule_violations[0].reason == "NO_DEPLOY_WINDOW"


@rules(FREEZE_NOW.format(mode="off"))
def test_freeze_off_allows(governed):
    assert list(governed.record().event.deployment.rule_violations) == []


PAST_FREEZE = """
[[rule]]
name = "old-freeze"
kind = "freeze"
environment_types = ["production"]
start = 2020-01-01T00:00:00Z
end = 2020-01-02T00:00:00Z
"""


@rules(PAST_FREEZE)
def test_outside_every_window_is_allowed(governed):
    assert governed.record().event.deployment.status == STARTED


FLOW = """
[[rule]]
name = "staging-first"
kind = "flow"
mode = "{mode}"
environment_types = ["production"]
requires = ["staging*"]
soak = "1h"
"""


@rules(FLOW.format(mode="enforce"))
def test_enforced_flow_needs_the_version_completed_in_staging_for_the_soak(governed):
    _, info = refused(lambda: governed.record())
    assert info.reason == "FLOW_VIOLATION"
    assert info.metadata["missing_environment"] == "staging*"
    # Another version in staging does not count.
    governed.record(environment_name="staging-eu", version="0.9.0", status=COMPLETED)
    assert refused(lambda: governed.record())[1].reason == "FLOW_VIOLATION"
    governed.record(environment_name="staging-eu", status=COMPLETED)
    _, info = refused(lambda: governed.record())
    assert info.reason == "INSUFFICIENT_SOAK_TIME"
    assert 3000 < int(info.metadata["retry_after"]) <= 3600
    # Completed in staging more than an hour ago (backfilled): allowed.
    governed.record(environment_name="staging-us", status=COMPLETED, event_time=ago(7200))
    assert governed.record().event.deployment.status == STARTED


@rules(FLOW.format(mode="report"))
def test_reported_flow_allows(governed):
    deployment = governed.record().event.deployment
    assert deployment.rule_violations[0].reason == "FLOW_VIOLATION"


@rules(FLOW.format(mode="off"))
def test_flow_off_allows(governed):
    assert list(governed.record().event.deployment.rule_violations) == []


FLOW_TYPES = """
[[rule]]
name = "staging-type-first"
kind = "flow"
environment_types = ["production"]
requires_types = ["staging"]
"""


@rules(FLOW_TYPES)
def test_flow_by_environment_type_without_soak(governed):
    assert refused(lambda: governed.record())[1].metadata["missing_environment"] == "staging"
    governed.record(environment_name="uat", status=COMPLETED)
    assert governed.record().event.deployment.status == STARTED


CONCURRENCY = """
[[rule]]
name = "one-at-a-time"
kind = "concurrency"
mode = "{mode}"
environment_types = ["production"]
products = ["sh*"]
"""


@rules(CONCURRENCY.format(mode="enforce"))
def test_enforced_concurrency_refuses_a_second_open_deployment(governed):
    first = governed.record(version="1.0.0").event.deployment
    _, info = refused(lambda: governed.record(version="1.1.0"))
    assert info.reason == "CONCURRENT_DEPLOYMENT"
    assert info.metadata["conflicting_deployment_id"] == first.id
    # Another product is not affected; nor is queueing.
    assert governed.record(product_name="billing").event.deployment.status == STARTED
    queued = governed.record(version="1.1.0", status=PENDING).event.deployment
    governed.record(version="1.0.0", status=COMPLETED, deployment_id=first.id)
    started = governed.record(version="1.1.0", status=STARTED, deployment_id=queued.id)
    assert started.event.deployment.status == STARTED


@rules(CONCURRENCY.format(mode="enforce"))
def test_concurrency_serves_a_queue_in_order(governed):
    first = governed.record(version="1.0.0", status=PENDING).event.deployment
    second = governed.record(version="1.1.0", status=PENDING).event.deployment
    _, info = refused(lambda: governed.record(deployment_id=second.id, version="1.1.0"))
    assert info.metadata["conflicting_deployment_id"] == first.id
    assert governed.record(deployment_id=first.id).event.deployment.status == STARTED


@rules(CONCURRENCY.format(mode="report"))
def test_reported_concurrency_allows(governed):
    governed.record(version="1.0.0")
    second = governed.record(version="1.1.0").event.deployment
    assert second.rule_violations[0].reason == "CONCURRENT_DEPLOYMENT"


@rules(CONCURRENCY.format(mode="off"))
def test_concurrency_off_allows(governed):
    governed.record(version="1.0.0")
    assert list(governed.record(version="1.1.0").event.deployment.rule_violations) == []


@rules(APPROVAL.format(mode="enforce") + FREEZE_NOW.format(mode="enforce"))
def test_override_passes_every_rule_and_is_kept_and_audited(governed):
    code, _ = refused(lambda: governed.record(who="ci", override_reason="outage"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert governed.audit("deployment.blocked", "deployment.override") == []
    deployment = governed.record(who="oncall", override_reason="INC-42 outage").event.deployment
    assert deployment.override_reason == "INC-42 outage"
    assert {v.rule_name for v in deployment.rule_violations} == {
        "prod-approval",
        "release-freeze",
    }
    override = governed.audit("deployment.override")
    assert len(override) == 1
    assert override[0].principal == "oncall"
    assert override[0].details["override_reason"] == "INC-42 outage"
    assert governed.history()[0].override_reason == "INC-42 outage"


@rules(APPROVAL.format(mode="enforce"))
def test_rule_decisions_are_counted_in_metrics(governed):
    import urllib.request

    refused(lambda: governed.record())
    governed.record(environment_name="dev")
    with urllib.request.urlopen(governed.running.metrics_url, timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    assert 'versioner_rule_decisions_total{outcome="block",rule="prod-approval"} 1.0' in text
    assert "versioner_approvals_pending 0" in text
    approval = governed.request_approval()
    with urllib.request.urlopen(governed.running.metrics_url, timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    assert "versioner_approvals_pending 1.0" in text
    assert "versioner_approval_wait_seconds_count 0.0" in text
    governed.approve("bob", approval.id)
    governed.record()
    with urllib.request.urlopen(governed.running.metrics_url, timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    assert "versioner_approvals_pending 0" in text
    assert "versioner_approval_wait_seconds_count 1.0" in text
    assert 'versioner_rule_decisions_total{outcome="pass",rule="prod-approval"} 1.0' in text
