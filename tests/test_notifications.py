"""Notifications: subscriptions, signed webhooks and Slack, retries, order, the delivery log."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import peewee as pw
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from tests.conftest import RunningServer, start_server
from tests.receiver import Receiver
from tests.test_watch import record

SECRET = "s3cret-s3cret-s3cret"
WEBHOOK = npb.NOTIFICATION_FORMAT_WEBHOOK
SLACK = npb.NOTIFICATION_FORMAT_SLACK
SUCCEEDED = npb.DELIVERY_STATE_SUCCEEDED
FAILED = npb.DELIVERY_STATE_FAILED
PENDING = npb.DELIVERY_STATE_PENDING


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def notify_config(config):
    """Fast retries, a short receiver timeout, and the loopback receiver allowed."""
    from dataclasses import replace

    return replace(
        config,
        allow_private_webhooks=True,
        notification_retry_base=0.05,
        notification_retry_cap=0.2,
        notification_timeout=1.0,
        notification_lease_seconds=3.0,
    )


@pytest.fixture
def nserver(notify_config) -> Iterator[RunningServer]:
    running = start_server(notify_config)
    try:
        yield running
    finally:
        running.stop()


def nstub(server: RunningServer) -> npb_grpc.NotificationServiceStub:
    return npb_grpc.NotificationServiceStub(server.channel)


def subscribe(
    server, receiver: Receiver, path: str, secret: str = SECRET, **kw
) -> npb.Subscription:
    if secret:
        receiver.secrets[path] = secret
    kw.setdefault("format", WEBHOOK)
    request = npb.CreateSubscriptionRequest(name=path, url=receiver.url(path), secret=secret, **kw)
    return nstub(server).CreateSubscription(request, timeout=10).subscription


def deliveries(server, sub_id: str) -> list[npb.Delivery]:
    found = nstub(server).ListDeliveries(
        npb.ListDeliveriesRequest(subscription_id=sub_id, page_size=1000), timeout=10
    )
    return list(found.deliveries)


def wait_settled(server, sub_id: str, count: int, timeout: float = 30) -> list[npb.Delivery]:
    """The subscription's deliveries, oldest first, once `count` of them are settled."""
    deadline = time.monotonic() + timeout
    while True:
        found = deliveries(server, sub_id)
        settled = [d for d in found if d.state in (SUCCEEDED, FAILED)]
        if len(settled) >= count:
            return sorted(found, key=lambda d: (d.revision, d.create_time.ToNanoseconds()))
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(settled)} of {count} deliveries settled: {found}")
        time.sleep(0.05)


def violations(exc: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(exc)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            info = error_details_pb2.BadRequest()
            detail.Unpack(info)
            return {v.field: v.description for v in info.field_violations}
    return {}


# Delivery ----------------------------------------------------------------------


def test_webhook_gets_every_event_in_revision_order_signed_with_versioner_headers(
    nserver, receiver
):
    sub = subscribe(nserver, receiver, "hook")
    revisions = [
        record(nserver.stub, version=str(i), build_url=f"https://ci/{i}", deployed_by="alice",
               scm_sha="abcdef1").event.revision
        for i in range(5)
    ]  # fmt: skip
    got = receiver.wait_for("hook", 5)
    assert [r.json["revision"] for r in got] == revisions
    assert receiver.bad_signatures == []
    first = got[0]
    assert first.headers["x-versioner-event"] == "deployment.completed"
    assert first.headers["content-type"] == "application/json"
    body = first.json
    assert body["event_type"] == "deployment.completed"
    assert body["is_successful"] is True
    assert (body["product_name"], body["version"], body["environment"]) == (
        "svc", "0", "production",
    )  # fmt: skip
    assert (body["deployer"], body["source_url"]) == ("alice", "https://ci/0")
    assert body["deployment"]["id"] == body["id"]
    assert body["occurred_at"].endswith("Z") and body["deployed_at"].endswith("Z")
    settled = wait_settled(nserver, sub.id, 5)
    assert [d.state for d in settled] == [SUCCEEDED] * 5
    assert [d.id for d in settled] == [r.delivery for r in got]
    assert all(len(d.attempts) == 1 and d.attempts[0].http_status == 200 for d in settled)


def test_a_new_subscription_starts_at_the_current_head(nserver, receiver):
    before = record(nserver.stub, version="old").event.revision
    sub = subscribe(nserver, receiver, "late")
    assert sub.cursor_revision == before
    after = record(nserver.stub, version="new").event.revision
    got = receiver.wait_for("late", 1)
    assert [r.json["revision"] for r in got] == [after]


def test_filters_pick_products_environments_types_and_event_types(nserver, receiver):
    sub = subscribe(
        nserver, receiver, "prod-failures",
        products=["api"], environment_types=[pb.ENVIRONMENT_TYPE_PRODUCTION],
        event_types=["deployment.failed"],
    )  # fmt: skip
    record(nserver.stub, product="api", env="staging", status=pb.DEPLOYMENT_STATUS_FAILED)
    record(nserver.stub, product="web", env="production", status=pb.DEPLOYMENT_STATUS_FAILED)
    record(nserver.stub, product="api", env="production", version="2")
    wanted = record(
        nserver.stub, product="api", env="prod-eu", version="3", status=pb.DEPLOYMENT_STATUS_FAILED
    ).event.revision
    marker = subscribe(nserver, receiver, "marker")
    last = record(nserver.stub, product="zzz").event.revision
    receiver.wait_for("marker", 1)  # the engine got at least this far for everyone
    wait_settled(nserver, sub.id, 1)
    wait_settled(nserver, marker.id, 1)
    got = receiver.on("prod-failures")
    assert [r.json["revision"] for r in got] == [wanted]
    assert got[0].json["is_successful"] is False
    assert last > wanted


def test_slack_format_sends_text_and_blocks_with_emoji_product_version_who_and_link(
    nserver, receiver
):
    subscribe(nserver, receiver, "slack", secret="", format=SLACK)
    record(nserver.stub, product="api", version="1.4.2", env="production", deployed_by="bob",
           build_url="https://ci.example/77", status=pb.DEPLOYMENT_STATUS_STARTED)  # fmt: skip
    record(nserver.stub, product="api", version="1.4.2", env="production",
           status=pb.DEPLOYMENT_STATUS_COMPLETED)  # fmt: skip
    got = receiver.wait_for("slack", 2)
    text = got[1].json["text"]
    assert ":white_check_mark:" in text
    for part in ("api", "1.4.2", "production", "bob", "https://ci.example/77"):
        assert part in text
    assert " in " in text  # the duration, start to end
    assert got[1].json["blocks"][0]["type"] == "section"
    assert ":rocket:" in got[0].json["text"]


def test_one_dead_endpoint_does_not_delay_another_subscription(nserver, receiver):
    receiver.script("dead", *[("hang", 1.5)] * 50)
    subscribe(nserver, receiver, "dead")
    subscribe(nserver, receiver, "alive")
    for i in range(10):
        record(nserver.stub, version=str(i))
    got = receiver.wait_for("alive", 10, timeout=20)
    assert [r.json["version"] for r in got] == [str(i) for i in range(10)]
    assert len(receiver.on("dead")) < 10  # still stuck on its first events


# Faults at the receiver -------------------------------------------------------------


def test_5xx_is_retried_with_the_same_delivery_id_until_it_succeeds(nserver, receiver):
    receiver.script("flaky", 500, 502, 503)
    sub = subscribe(nserver, receiver, "flaky")
    record(nserver.stub, version="1")
    record(nserver.stub, version="2")
    got = receiver.wait_for("flaky", 5)
    assert len({r.delivery for r in got[:4]}) == 1, "every retry carries the same delivery id"
    assert [r.json["version"] for r in got] == ["1", "1", "1", "1", "2"], "in order"
    assert receiver.bad_signatures == []
    first = wait_settled(nserver, sub.id, 2)[0]
    assert [a.result for a in first.attempts] == ["retry", "retry", "retry", "success"]
    assert [a.http_status for a in first.attempts] == [500, 502, 503, 200]
    assert first.attempts[0].response_body == '{"ok": false}'


def test_429_retry_after_is_honoured(nserver, receiver):
    receiver.script("limited", ("status", 429, {"Retry-After": "1"}))
    sub = subscribe(nserver, receiver, "limited")
    record(nserver.stub)
    receiver.wait_for("limited", 2)
    (delivery,) = wait_settled(nserver, sub.id, 1)
    first, second = delivery.attempts
    assert (first.http_status, first.result) == (429, "retry")
    gap = second.time.ToMicroseconds() - first.time.ToMicroseconds()
    assert gap >= 1_000_000, "the second attempt waited for Retry-After"


def test_400_is_final_and_the_subscription_moves_on(nserver, receiver):
    receiver.script("strict", 400)
    sub = subscribe(nserver, receiver, "strict")
    record(nserver.stub, version="rejected")
    record(nserver.stub, version="next")
    got = receiver.wait_for("strict", 2)
    assert [r.json["version"] for r in got] == ["rejected", "next"]
    rejected, nxt = wait_settled(nserver, sub.id, 2)
    assert rejected.state == FAILED and len(rejected.attempts) == 1
    assert rejected.attempts[0].result == "failed" and rejected.attempts[0].http_status == 400
    assert nxt.state == SUCCEEDED


def test_a_receiver_hanging_past_the_timeout_is_retried(nserver, receiver):
    receiver.script("slow", ("hang", 3))  # the timeout is 1 s here
    sub = subscribe(nserver, receiver, "slow")
    record(nserver.stub)
    receiver.wait_for("slow", 2)
    (delivery,) = wait_settled(nserver, sub.id, 1)
    assert delivery.state == SUCCEEDED
    assert delivery.attempts[0].result == "retry"
    assert "timeout" in delivery.attempts[0].error.lower()


def test_a_connection_closed_mid_response_is_retried(nserver, receiver):
    receiver.script("cut", ("close",))
    sub = subscribe(nserver, receiver, "cut")
    record(nserver.stub)
    receiver.wait_for("cut", 2)
    (delivery,) = wait_settled(nserver, sub.id, 1)
    assert [a.result for a in delivery.attempts] == ["retry", "success"]
    assert delivery.attempts[0].http_status == 0 and delivery.attempts[0].error


def test_a_redirect_is_not_followed_and_fails_the_delivery(nserver, receiver):
    receiver.script("moved", ("redirect", receiver.url("elsewhere")))
    sub = subscribe(nserver, receiver, "moved")
    record(nserver.stub)
    (delivery,) = wait_settled(nserver, sub.id, 1)
    assert delivery.state == FAILED
    assert delivery.attempts[0].http_status == 307
    assert "not followed" in delivery.attempts[0].error
    assert receiver.on("elsewhere") == []


def test_retries_give_up_after_the_retry_window(notify_config, receiver):
    server = start_server(notify_config, notification_retry_window=0.3)
    try:
        receiver.script("down", *[503] * 1000)
        sub = subscribe(server, receiver, "down")
        record(server.stub, version="lost")
        record(server.stub, version="after")
        first = wait_settled(server, sub.id, 1)[0]
        assert first.state == FAILED
        assert first.attempts[-1].result == "failed" and "gave up" in first.attempts[-1].error
        assert all(a.result == "retry" for a in first.attempts[:-1])
    finally:
        server.stop()


# Redeliver, SendTest ------------------------------------------------------------


def test_redeliver_sends_the_same_event_again_under_a_new_delivery_id(nserver, receiver):
    sub = subscribe(nserver, receiver, "again")
    record(nserver.stub, version="7")
    (original,) = wait_settled(nserver, sub.id, 1)
    copy = nstub(nserver).Redeliver(npb.RedeliverRequest(delivery_id=original.id)).delivery
    assert copy.redelivery_of == original.id and copy.id != original.id
    got = receiver.wait_for("again", 2)
    assert got[0].body == got[1].body
    assert got[1].delivery == copy.id
    assert receiver.bad_signatures == []
    with pytest.raises(grpc.RpcError) as info:
        nstub(nserver).Redeliver(npb.RedeliverRequest(delivery_id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_send_test_delivers_a_ping_now_and_logs_it(nserver, receiver):
    sub = subscribe(nserver, receiver, "ping")
    delivery = nstub(nserver).SendTest(npb.SendTestRequest(subscription_id=sub.id)).delivery
    assert delivery.state == SUCCEEDED and delivery.event_type == "ping"
    (got,) = receiver.on("ping")
    assert got.headers["x-versioner-event"] == "ping"
    assert got.delivery == delivery.id
    assert receiver.bad_signatures == []
    receiver.script("ping", 500)
    failed = nstub(nserver).SendTest(npb.SendTestRequest(subscription_id=sub.id)).delivery
    assert failed.state == FAILED and failed.attempts[0].http_status == 500
    assert len(receiver.on("ping")) == 2, "a test message is not retried"


# Subscriptions: management and bad input ----------------------------------------------


def test_subscriptions_are_listed_updated_and_deleted_and_the_secret_never_returned(
    nserver, receiver
):
    stub = nstub(nserver)
    sub = subscribe(nserver, receiver, "crud")
    assert sub.has_secret and sub.enabled and sub.format == WEBHOOK
    assert SECRET not in str(stub.ListSubscriptions(npb.ListSubscriptionsRequest()))
    updated = stub.UpdateSubscription(
        npb.UpdateSubscriptionRequest(
            id=sub.id, enabled=False, products=["api"],
            update_mask=field_mask_pb2.FieldMask(paths=["enabled", "products"]),
        )
    ).subscription  # fmt: skip
    assert (updated.enabled, list(updated.products), updated.url) == (False, ["api"], sub.url)
    assert updated.has_secret
    cleared = stub.UpdateSubscription(
        npb.UpdateSubscriptionRequest(
            id=sub.id, update_mask=field_mask_pb2.FieldMask(paths=["secret"])
        )
    ).subscription
    assert not cleared.has_secret
    stub.DeleteSubscription(npb.DeleteSubscriptionRequest(id=sub.id))
    assert list(stub.ListSubscriptions(npb.ListSubscriptionsRequest()).subscriptions) == []
    with pytest.raises(grpc.RpcError) as info:
        stub.DeleteSubscription(npb.DeleteSubscriptionRequest(id=sub.id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_disabled_subscription_receives_nothing_and_resumes_at_the_head(nserver, receiver):
    stub = nstub(nserver)
    sub = subscribe(nserver, receiver, "paused", enabled=False)
    record(nserver.stub, version="while-disabled")
    stub.UpdateSubscription(
        npb.UpdateSubscriptionRequest(
            id=sub.id, enabled=True, update_mask=field_mask_pb2.FieldMask(paths=["enabled"])
        )
    )
    record(nserver.stub, version="after")
    got = receiver.wait_for("paused", 1)
    wait_settled(nserver, sub.id, 1)
    assert [r.json["version"] for r in receiver.on("paused")] == ["after"]
    assert got


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": "not a url"}, "url"),
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": ""}, "url"),
        ({"format": 0}, "format"),
        ({"format": 9}, "format"),
        ({"event_types": ["deployment.exploded"]}, "event_types"),
        ({"products": [""]}, "products"),
        ({"environments": ["  "]}, "environments"),
        ({"secret": "short"}, "secret"),
        ({"name": ""}, "name"),
        ({"environment_types": [42]}, "environment_types"),
    ],
)
def test_bad_subscription_input_is_invalid_argument_naming_the_field(nserver, changes, field):
    request = {"name": "bad", "url": "https://example.com/hook", "format": WEBHOOK, **changes}
    with pytest.raises(grpc.RpcError) as info:
        nstub(nserver).CreateSubscription(npb.CreateSubscriptionRequest(**request))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(info.value)
    assert (
        list(nstub(nserver).ListSubscriptions(npb.ListSubscriptionsRequest()).subscriptions) == []
    )


def test_governance_event_types_are_accepted_in_filters(nserver, receiver):
    sub = subscribe(
        nserver, receiver, "gov",
        event_types=["deployment.blocked", "deployment.override", "approval.requested",
                     "approval.approved", "approval.rejected"],
    )  # fmt: skip
    assert len(sub.event_types) == 5


def test_private_targets_are_refused_naming_url_unless_allowed(server, receiver):
    """The plain `server` fixture runs without --allow-private-webhooks."""
    for url in (receiver.url("x"), "http://10.1.2.3/hook", "http://169.254.169.254/latest",
                "http://[::1]:8080/", "http://localhost/hook"):  # fmt: skip
        with pytest.raises(grpc.RpcError) as info:
            nstub(server).CreateSubscription(
                npb.CreateSubscriptionRequest(name="p", url=url, format=WEBHOOK)
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert "url" in violations(info.value), url


def test_a_private_target_is_refused_at_delivery_time_without_a_request(config, receiver):
    """DNS may change after creation: the check runs again before every attempt."""
    open_server = start_server(config, allow_private_webhooks=True)
    try:
        sub = subscribe(open_server, receiver, "rebind")
    finally:
        open_server.stop()
    strict = start_server(config, notification_lease_seconds=3.0)
    try:
        record(strict.stub)
        (delivery,) = wait_settled(strict, sub.id, 1)
        assert delivery.state == FAILED
        assert "refused target" in delivery.attempts[0].error
        assert receiver.on("rebind") == []
    finally:
        strict.stop()


def test_secrets_are_encrypted_at_rest_with_a_secrets_key(notify_config, receiver, database_url):
    from cryptography.fernet import Fernet

    server = start_server(notify_config, secrets_key=Fernet.generate_key().decode())
    try:
        subscribe(server, receiver, "sealed")
        record(server.stub)
        got = receiver.wait_for("sealed", 1)
        assert receiver.bad_signatures == [] and got
    finally:
        server.stop()
    stored = dump_secrets(database_url)
    assert stored and all(SECRET not in s and s.startswith("fernet:") for s in stored)


def dump_secrets(url: str) -> list[str]:
    from versioner_grpc.store.database import open_database

    db: pw.Database = open_database(url)
    with db:
        return [row[0] for row in db.execute_sql("SELECT secret FROM notification_subscription")]


def test_delivery_log_is_paged_newest_first(nserver, receiver):
    sub = subscribe(nserver, receiver, "paged")
    for i in range(5):
        record(nserver.stub, version=str(i))
    wait_settled(nserver, sub.id, 5)
    stub, seen, token = nstub(nserver), [], ""
    while True:
        page = stub.ListDeliveries(
            npb.ListDeliveriesRequest(subscription_id=sub.id, page_size=2, page_token=token)
        )
        seen += list(page.deliveries)
        token = page.next_page_token
        if not token:
            break
    assert [d.revision for d in seen] == sorted((d.revision for d in seen), reverse=True)
    assert len(seen) == 5


def test_old_settled_deliveries_are_pruned(nserver, receiver):
    sub = subscribe(nserver, receiver, "old")
    record(nserver.stub)
    wait_settled(nserver, sub.id, 1)
    notifications = nserver.server.store.notifications
    assert nserver.run(notifications.prune(0)) == 0, "recent ones stay"
    assert nserver.run(notifications.prune(int(time.time() * 1e6) + 1)) == 1
    assert deliveries(nserver, sub.id) == []


# Scopes and metrics ------------------------------------------------------------------


def test_managing_needs_notifications_admin_and_listing_needs_deployments_read(
    notify_config, tmp_path
):
    from tests.test_security import new_token, write_auth_file

    reader, admin = new_token(), new_token()
    path = write_auth_file(
        tmp_path / "tokens.toml",
        {"reader": (reader, ["deployments:read"]), "ops": (admin, ["notifications:admin"])},
    )
    server = start_server(notify_config, auth_file=str(path))
    try:
        stub = nstub(server)
        create = npb.CreateSubscriptionRequest(
            name="a", url="https://example.com/hook", format=WEBHOOK
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateSubscription(create, metadata=[("authorization", f"Bearer {reader}")])
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            stub.ListSubscriptions(npb.ListSubscriptionsRequest())
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.CreateSubscription(create, metadata=[("authorization", f"Bearer {admin}")])
        listed = stub.ListSubscriptions(
            npb.ListSubscriptionsRequest(), metadata=[("authorization", f"Bearer {reader}")]
        )
        assert [s.name for s in listed.subscriptions] == ["a"]
    finally:
        server.stop()


def test_metrics_count_attempts_by_result_and_export_lag(nserver, receiver):
    import urllib.request

    receiver.script("metered", 500)
    sub = subscribe(nserver, receiver, "metered")
    record(nserver.stub)
    wait_settled(nserver, sub.id, 1)
    with urllib.request.urlopen(nserver.metrics_url, timeout=10) as response:
        text = response.read().decode()
    assert 'versioner_notification_deliveries_total{result="retry",subscription="metered"} 1.0' in (
        text
    )
    assert (
        'versioner_notification_deliveries_total{result="success",subscription="metered"} 1.0'
        in text
    )
    assert "versioner_notification_delivery_seconds_count 2.0" in text
    assert 'versioner_notification_lag_seconds{subscription="metered"} 0.0' in text


def test_the_connections_own_dns_answers_are_checked_too():
    """DNS rebinding between the check and the connect: the connector's resolver refuses."""
    import asyncio

    from versioner_grpc.notify.sender import _PublicOnlyResolver

    async def resolve() -> None:
        resolver = _PublicOnlyResolver()
        try:
            await resolver.resolve("localhost", 80)
        finally:
            await resolver.close()

    with pytest.raises(OSError, match="loopback"):
        asyncio.run(resolve())


def test_lag_grows_while_an_endpoint_keeps_failing(nserver, receiver):
    import urllib.request

    receiver.script("failing", *[503] * 1000)
    subscribe(nserver, receiver, "failing")
    record(nserver.stub)
    receiver.wait_for("failing", 2)
    time.sleep(0.1)  # not a timing assertion: lets the event age measurably
    with urllib.request.urlopen(nserver.metrics_url, timeout=10) as response:
        text = response.read().decode()
    (line,) = [
        x for x in text.splitlines()
        if x.startswith('versioner_notification_lag_seconds{subscription="failing"}')
    ]  # fmt: skip
    assert float(line.split()[-1]) > 0
