"""Governance events notified: blocked attempts, overrides, approval requests and outcomes.

The audit trail is the second event source: these tests run real servers with
a rules file and tokens, a real receiver that verifies every signature, and
check that governance events arrive signed, with their bodies, filtered like
deployment events, and in commit order among them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from tests.conftest import start_server
from tests.governance_support import TIMEOUT, Governed, create_token, refused
from tests.processes import ServerProcess
from tests.receiver import Received, Receiver
from tests.test_watch import record
from versioner_grpc.store.database import Database

SECRET = "governance-secret-123"
STARTED = pb.DEPLOYMENT_STATUS_STARTED
PENDING = pb.DEPLOYMENT_STATUS_PENDING
RULES = """
[[rule]]
name = "prod-approval"
kind = "approval"
environment_types = ["production"]
"""


class Notified(Governed):
    """A governed server with fast notification retries and an admin token for subscriptions."""

    def __init__(self, config, directory: Path) -> None:
        self.admin = create_token(
            directory / "tokens.toml", "admin", ["notifications:admin", "deployments:read"]
        )
        super().__init__(config, directory, RULES)
        self.notify = npb_grpc.NotificationServiceStub(self.running.channel)

    def subscribe(self, receiver: Receiver, path: str, **kw: object) -> npb.Subscription:
        receiver.secrets[path] = SECRET
        kw.setdefault("format", npb.NOTIFICATION_FORMAT_WEBHOOK)
        request = npb.CreateSubscriptionRequest(
            name=path, url=receiver.url(path), secret=SECRET, **kw
        )
        metadata = (("authorization", f"Bearer {self.admin}"),)
        return self.notify.CreateSubscription(
            request, metadata=metadata, timeout=TIMEOUT
        ).subscription

    def blocked(self, **fields: object) -> None:
        refused(lambda: self.record(**fields))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def notified(config, tmp_path) -> Iterator[Notified]:
    fast = replace(
        config,
        allow_private_webhooks=True,
        notification_retry_base=0.05,
        notification_retry_cap=0.2,
        notification_timeout=2.0,
        notification_lease_seconds=3.0,
    )
    running = Notified(fast, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def kinds(got: list[Received]) -> list[str]:
    return [r.headers["x-versioner-event"] for r in got]


def test_governance_events_reach_the_webhook_signed_and_in_commit_order_with_deployments(
    notified, receiver
):
    notified.subscribe(receiver, "hook")
    notified.record(status=PENDING, version="1.0.0", deployed_by="dev")
    notified.blocked(version="1.0.0", deployed_by="dev", event_id="try-1")
    overridden = notified.record(
        who="oncall", version="1.0.0", override_reason="INC-42 outage"
    ).event.deployment
    requested = notified.request_approval(version="2.0.0", reason="release 2")
    notified.approve("alice", requested.id, "looks good")
    started = notified.record(version="2.0.0").event.deployment
    rejected = notified.request_approval(version="3.0.0")
    notified.reject("bob", rejected.id, "not today")

    got = receiver.wait_for("hook", 9)
    assert kinds(got) == [
        "deployment.pending",
        "deployment.blocked",
        "deployment.override",
        "deployment.started",
        "approval.requested",
        "approval.approved",
        "deployment.started",
        "approval.requested",
        "approval.rejected",
    ]
    assert receiver.bad_signatures == []
    assert all(r.headers["x-versioner-signature"].startswith("sha256=") for r in got)
    assert len({r.delivery for r in got}) == 9
    bodies = [r.json for r in got]
    assert all(b["event_type"] == k for b, k in zip(bodies, kinds(got), strict=True))
    assert all(b["occurred_at"].endswith("Z") for b in bodies)
    revisions = [b["revision"] for b in bodies]
    assert revisions == sorted(revisions), "governance events sit between deployment events"

    blocked = bodies[1]
    assert blocked["is_successful"] is False
    assert (blocked["product_name"], blocked["version"], blocked["environment"]) == (
        "shop", "1.0.0", "production",
    )  # fmt: skip
    assert blocked["deployer"] == "dev"
    assert blocked["rule"]["name"] == "prod-approval"
    assert blocked["rule"]["reason"] == "APPROVAL_REQUIRED"
    assert blocked["deployment"]["product_name"] == "shop"
    assert blocked["deployment"]["environment_name"] == "production"
    assert blocked["deployment"]["status"] == "DEPLOYMENT_STATUS_STARTED"
    assert blocked["deployment"]["event_id"] == "try-1"

    override = bodies[2]
    assert override["is_successful"] is None
    assert override["override_reason"] == "INC-42 outage"
    assert override["principal"] == "oncall"
    assert override["rule"]["name"] == "prod-approval"
    assert override["deployment"]["id"] == override["id"] == overridden.id
    assert override["deployment"]["override_reason"] == "INC-42 outage"
    assert bodies[3]["id"] == overridden.id

    asked, approved = bodies[4], bodies[5]
    assert asked["is_successful"] is None and approved["is_successful"] is None
    assert asked["approval"]["id"] == approved["approval"]["id"] == requested.id
    # Each carries the request as it stood then: still pending when it was requested.
    assert asked["approval"]["state"] == "APPROVAL_STATE_PENDING"
    assert asked["approval"]["reason"] == "release 2"
    assert "decisions" not in asked["approval"]
    assert approved["approval"]["state"] == "APPROVAL_STATE_APPROVED"
    assert [d["principal"] for d in approved["approval"]["decisions"]] == ["alice"]
    assert approved["principal"] == "alice"
    assert bodies[6]["id"] == started.id

    no = bodies[8]
    assert no["approval"]["id"] == rejected.id
    assert no["approval"]["state"] == "APPROVAL_STATE_REJECTED"
    assert no["approval"]["decisions"][0]["comment"] == "not today"
    assert no["principal"] == "bob"


def test_filters_apply_to_governance_events(notified, receiver):
    notified.subscribe(
        receiver, "prod-shop", products=["shop"], environments=["production"],
        event_types=["deployment.blocked", "approval.approved", "deployment.completed"],
    )  # fmt: skip
    notified.subscribe(receiver, "staging", environment_types=[pb.ENVIRONMENT_TYPE_STAGING])
    notified.blocked(product_name="cart")  # another product
    approval = notified.request_approval()  # a filtered-out event type
    notified.blocked()
    notified.approve("alice", approval.id)
    notified.record(status=pb.DEPLOYMENT_STATUS_COMPLETED)  # approved: passes
    notified.record(environment_name="staging", status=pb.DEPLOYMENT_STATUS_COMPLETED)

    got = receiver.wait_for("prod-shop", 3)
    assert kinds(got) == ["deployment.blocked", "approval.approved", "deployment.completed"]
    assert all(r.json["product_name"] == "shop" for r in got)
    # In order: had a production governance event passed the filter, it would come first.
    staging = receiver.wait_for("staging", 1)
    assert kinds(staging) == ["deployment.completed"]
    assert staging[0].json["environment"] == "staging"
    assert receiver.bad_signatures == []


def test_slack_gets_a_readable_line_for_each_governance_event(notified, receiver):
    notified.subscribe(receiver, "slack", format=npb.NOTIFICATION_FORMAT_SLACK)
    notified.blocked(deployed_by="dev")
    notified.record(who="oncall", override_reason="INC-7 hotfix")
    asked = notified.request_approval(version="2.0.0", reason="release 2")
    notified.approve("alice", asked.id, "ship it")
    no = notified.request_approval(version="3.0.0")
    notified.reject("bob", no.id, "not today")

    got = receiver.wait_for("slack", 7)
    texts = [r.json["text"] for r in got]
    blocks = [r.json["blocks"][0]["text"]["text"] for r in got]
    blocked, override, started, requested, approved, _, rejected = texts
    assert blocked.startswith(":no_entry_sign: shop 1.0.0 in production blocked by rule")
    assert "prod-approval" in blocked and "dev" in blocked
    assert override.startswith(":warning:") and "override by oncall: INC-7 hotfix" in override
    assert started.startswith(":rocket:")
    assert requested.startswith(":closed_lock_with_key:") and "approval requested" in requested
    assert asked.id in requested and "release 2" in requested
    assert approved.startswith(":white_check_mark:") and "approved by alice: ship it" in approved
    assert asked.id in approved
    assert rejected.startswith(":x:") and "rejected by bob: not today" in rejected
    assert no.id in rejected
    assert "*prod-approval*" in blocks[0]


FAST = [
    "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--allow-private-webhooks",
    "--notification-retry-base", "0.2", "--notification-retry-cap", "0.5",
    "--notification-lease-seconds", "2", "--poll-interval", "0.5",
]  # fmt: skip


def test_kill_9_loses_no_governance_notification_and_keeps_order(database_url, receiver, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    args = (*FAST, "--database-url", database_url, "--rules-file", str(rules))
    server = ServerProcess(*args)
    restarted = None
    try:
        receiver.secrets["hook"] = SECRET
        stub = npb_grpc.NotificationServiceStub(server.channel)
        stub.CreateSubscription(
            npb.CreateSubscriptionRequest(
                name="hook", url=receiver.url("hook"), secret=SECRET,
                format=npb.NOTIFICATION_FORMAT_WEBHOOK,
            ),
            timeout=TIMEOUT,
        )  # fmt: skip
        receiver.script("hook", *[503] * 4)
        expected = []
        for i in range(6):
            record(server.stub, product="shop", version=f"{i}", status=PENDING)
            refused(lambda i=i: record(server.stub, product="shop", version=f"{i}", status=STARTED))
            expected += [("deployment.pending", f"{i}"), ("deployment.blocked", f"{i}")]
        receiver.wait_for("hook", 2)  # deliveries are pending, being retried
        server.stop(signal.SIGKILL)
        restarted = ServerProcess(*args)
        deadline = time.monotonic() + 60
        while not set(expected) <= {
            (r.headers["x-versioner-event"], r.json["version"]) for r in receiver.on("hook")
        }:
            assert time.monotonic() < deadline, "not every notification arrived"
            time.sleep(0.05)
        got = [(r.headers["x-versioner-event"], r.json["version"]) for r in receiver.on("hook")]
        # At least once: repeats allowed, each one followed by what came after it.
        firsts = list(dict.fromkeys(got))
        assert firsts == expected
        assert receiver.bad_signatures == []
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


def _downgrade_to_v4(url: str) -> None:
    """The schema before migration 7: cursors without their audit id."""
    database = Database(url)
    with database.db.atomic():
        database.db.execute_sql("ALTER TABLE notification_cursor DROP COLUMN audit_id")
        database.db.execute_sql("DELETE FROM schema_migration WHERE version = 7")
    database.close()


def test_migration_7_starts_existing_subscriptions_at_the_audit_head(config, receiver, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    fast = replace(config, allow_private_webhooks=True, rules_file=str(rules))
    running = start_server(fast)
    try:
        refused(lambda: record(running.stub, product="shop", version="old", status=STARTED))
        receiver.secrets["hook"] = SECRET
        npb_grpc.NotificationServiceStub(running.channel).CreateSubscription(
            npb.CreateSubscriptionRequest(
                name="hook", url=receiver.url("hook"), secret=SECRET,
                format=npb.NOTIFICATION_FORMAT_WEBHOOK,
            ),
            timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        running.stop()
    _downgrade_to_v4(config.database_url)
    upgraded = start_server(fast)
    try:
        columns = upgraded.server.store.database.db.get_columns("notification_cursor")
        assert "audit_id" in {c.name for c in columns}
        refused(lambda: record(upgraded.stub, product="shop", version="new", status=STARTED))
        got = receiver.wait_for("hook", 1)
        assert [(r.json["event_type"], r.json["version"]) for r in got] == [
            ("deployment.blocked", "new")
        ]
    finally:
        upgraded.stop()
