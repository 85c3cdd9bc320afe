"""The governance CLI against a real server: `versioner check`, `approvals …`, `audit`, and
`versioner run --wait-for-approval` with an approver acting from another process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from versioner.v1 import deployment_service_pb2 as pb

from tests.governance_support import Governed

RULES = """
[[rule]]
name = "prod-approval"
kind = "approval"
environment_types = ["production"]
"""
TARGET = ["--product", "shop", "--version", "1.0.0", "--env", "production"]


@pytest.fixture
def governed(config, tmp_path) -> Iterator[Governed]:
    running = Governed(config, tmp_path, RULES)
    try:
        yield running
    finally:
        running.stop()


def cli_env(governed: Governed, who: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERSIONER_")}
    for name in ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "CIRCLECI"):
        env.pop(name, None)
    env.update(
        VERSIONER_ADDRESS=governed.running.address,
        VERSIONER_TOKEN=governed.tokens[who],
        VERSIONER_RETRIES="0",
    )
    return env


def versioner(governed: Governed, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "versioner_client", *args],
        env=cli_env(governed, who),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_run(governed: Governed, marker: Path, *wait: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('deployed')"]
    return subprocess.Popen(
        [sys.executable, "-m", "versioner_client", "run", *wait, *TARGET, "--", *command],
        env=cli_env(governed, "ci"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_check_exits_5_naming_the_rule_then_0_once_approved(governed):
    blocked = versioner(governed, "ci", "check", *TARGET)
    assert blocked.returncode == 5, blocked.stderr
    assert "prod-approval" in blocked.stderr and "APPROVAL_REQUIRED" in blocked.stderr
    assert "versioner approvals request" in blocked.stderr
    requested = versioner(governed, "ci", "approvals", "request", *TARGET, "--reason", "v1")
    assert requested.returncode == 0, requested.stderr
    approval_id = requested.stdout.strip()
    assert "other than 'ci'" in requested.stderr
    own = versioner(governed, "alice", "approvals", "approve", approval_id)
    assert own.returncode == 0, own.stderr  # alice did not request it
    allowed = versioner(governed, "ci", "check", *TARGET)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("pass")
    assert versioner(governed, "ci", "check", *TARGET[:4], "--env", "dev").returncode == 0


def test_approvals_commands_and_audit(governed):
    approval_id = versioner(governed, "alice", "approvals", "request", *TARGET).stdout.strip()
    own = versioner(governed, "alice", "approvals", "approve", approval_id)
    assert own.returncode == 5 and "SELF_APPROVAL" in own.stderr
    unknown = versioner(governed, "bob", "approvals", "approve", "nope")
    assert unknown.returncode == 4
    no_scope = versioner(governed, "ci", "approvals", "approve", approval_id)
    assert no_scope.returncode == 4 and "deployments:approve" in no_scope.stderr
    shown = versioner(governed, "ci", "approvals", "show", approval_id)
    assert "pending" in shown.stdout and "requested by alice" in shown.stdout
    rejected = versioner(governed, "bob", "approvals", "reject", approval_id, "--comment", "no")
    assert rejected.returncode == 0 and "rejected by bob" in rejected.stdout
    listed = versioner(governed, "ci", "approvals", "list", "--state", "rejected")
    assert approval_id in listed.stdout
    audit = versioner(governed, "ci", "audit", "--kind", "approval.rejected")
    assert audit.returncode == 0
    assert "approval.rejected" in audit.stdout and "bob" in audit.stdout


def test_run_waits_for_an_approver_in_another_process_then_runs(governed, tmp_path):
    marker = tmp_path / "deployed"
    run = start_run(governed, marker, "--wait-for-approval=120")
    assert run.stdout is not None
    approval_id = run.stdout.readline().strip()
    assert approval_id, run.stderr.read() if run.stderr else ""
    assert run.poll() is None and not marker.exists()  # waiting, not running
    approved = versioner(governed, "bob", "approvals", "approve", approval_id)
    assert approved.returncode == 0, approved.stderr
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert marker.read_text() == "deployed"
    assert f"approval {approval_id} requested" in err and "deployments:approve" in err
    deployment = governed.history()[0]
    assert deployment.status == pb.DEPLOYMENT_STATUS_COMPLETED
    assert deployment.approval_id == approval_id


def test_run_exits_5_without_running_when_rejected(governed, tmp_path):
    marker = tmp_path / "deployed"
    run = start_run(governed, marker, "--wait-for-approval=120")
    assert run.stdout is not None
    approval_id = run.stdout.readline().strip()
    assert versioner(governed, "carol", "approvals", "reject", approval_id).returncode == 0
    _, err = run.communicate(timeout=60)
    assert run.returncode == 5, err
    assert "rejected" in err
    assert not marker.exists()
    assert governed.history() == []


def test_run_exits_5_when_the_wait_times_out(governed, tmp_path):
    marker = tmp_path / "deployed"
    run = start_run(governed, marker, "--wait-for-approval=1s")
    _, err = run.communicate(timeout=60)
    assert run.returncode == 5, err
    assert "still pending" in err
    assert not marker.exists()


def test_run_without_waiting_is_refused_by_the_rule(governed, tmp_path):
    marker = tmp_path / "deployed"
    run = start_run(governed, marker)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 5 and "APPROVAL_REQUIRED" in err
    assert not marker.exists()


def test_record_with_override_reason_needs_the_override_scope(governed):
    args = ["record", *TARGET, "--status", "started", "--override-reason", "INC-9 outage"]
    denied = versioner(governed, "ci", *args)
    assert denied.returncode == 4 and "deployments:override" in denied.stderr
    allowed = versioner(governed, "oncall", *args)
    assert allowed.returncode == 0, allowed.stderr
    deployment = governed.history()[0]
    assert deployment.override_reason == "INC-9 outage"
    assert [v.rule_name for v in deployment.rule_violations] == ["prod-approval"]
