"""Notifications across crashes, replicas and database outages, with real server processes."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import peewee as pw
import pytest
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from tests.conftest import empty_postgres
from tests.processes import ServerProcess
from tests.receiver import Receiver
from tests.test_server_process import TcpProxy, postgres_database  # noqa: F401 (fixture)
from tests.test_watch import record

SECRET = "process-test-secret-123"
FAST = [
    "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--allow-private-webhooks",
    "--notification-retry-base", "0.2", "--notification-retry-cap", "0.5",
    "--notification-lease-seconds", "2", "--poll-interval", "0.5",
]  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver({"hook": SECRET})
    try:
        yield r
    finally:
        r.close()


def subscribe(server: ServerProcess, receiver: Receiver) -> npb.Subscription:
    stub = npb_grpc.NotificationServiceStub(server.channel)
    return stub.CreateSubscription(
        npb.CreateSubscriptionRequest(
            name="hook", url=receiver.url("hook"), secret=SECRET,
            format=npb.NOTIFICATION_FORMAT_WEBHOOK,
        ),
        timeout=10,
    ).subscription  # fmt: skip


def assert_in_order_at_least_once(receiver: Receiver, revisions: list[int]) -> None:
    got = [r.json["revision"] for r in receiver.on("hook")]
    assert got == sorted(got), f"out of order: {got}"
    assert set(got) == set(revisions), f"missing: {set(revisions) - set(got)}"
    assert receiver.bad_signatures == []


def wait_all(receiver: Receiver, revisions: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while {r.json["revision"] for r in receiver.on("hook")} < set(revisions):
        if time.monotonic() > deadline:
            raise AssertionError("not every event reached the receiver")
        time.sleep(0.05)


def test_kill_9_with_pending_deliveries_loses_nothing_and_keeps_order(database_url, receiver):
    server = ServerProcess(*FAST, "--database-url", database_url)
    restarted = None
    try:
        subscribe(server, receiver)
        receiver.script("hook", *[503] * 4)
        revisions = [record(server.stub, version=str(i)).event.revision for i in range(20)]
        receiver.wait_for("hook", 2)  # deliveries are pending, being retried
        server.stop(signal.SIGKILL)
        delivered_before = {r.json["revision"] for r in receiver.on("hook")}
        assert delivered_before < set(revisions), "the crash came with deliveries pending"
        restarted = ServerProcess(*FAST, "--database-url", database_url)
        try:
            wait_all(receiver, revisions)
        except AssertionError:
            print([line for line in restarted.lines if line.get("event") != "rpc"][-20:])
            print("received", [r.json["revision"] for r in receiver.on("hook")], revisions)
            stub = npb_grpc.NotificationServiceStub(restarted.channel)
            print(stub.ListDeliveries(npb.ListDeliveriesRequest(page_size=100)))
            print(stub.ListSubscriptions(npb.ListSubscriptionsRequest()))
            raise
        assert_in_order_at_least_once(receiver, revisions)
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


def lease_holder_pid(url: str) -> int:
    parts = urlsplit(url)
    db = pw.PostgresqlDatabase(
        parts.path.lstrip("/"), user=parts.username, host=parts.hostname, port=parts.port
    )
    with db:
        holder = db.execute_sql("SELECT lease_holder FROM notification_cursor").fetchone()[0]
    return int(holder.split(":")[1]) if holder else 0


@pytest.mark.postgres
def test_one_replica_delivers_a_subscription_and_another_takes_over_when_it_dies(
    postgres_url, receiver
):
    empty_postgres(postgres_url)
    a = ServerProcess(*FAST, "--database-url", postgres_url)
    b = ServerProcess(*FAST, "--database-url", postgres_url)
    try:
        subscribe(a, receiver)
        first = [record((a, b)[i % 2].stub, version=f"a{i}").event.revision for i in range(10)]
        wait_all(receiver, first)
        deliveries = [r.delivery for r in receiver.on("hook")]
        assert len(deliveries) == len(set(deliveries)) == 10, "each delivered once, by one replica"
        holder = lease_holder_pid(postgres_url)
        assert holder in (a.proc.pid, b.proc.pid)
        dead, survivor = (a, b) if holder == a.proc.pid else (b, a)
        dead.stop(signal.SIGKILL)
        second = [record(survivor.stub, version=f"b{i}").event.revision for i in range(10)]
        wait_all(receiver, first + second)
        assert_in_order_at_least_once(receiver, first + second)
        assert lease_holder_pid(postgres_url) == survivor.proc.pid
    finally:
        a.stop()
        b.stop()


def test_deliveries_pause_while_postgresql_is_unreachable_and_resume(
    postgres_database,  # noqa: F811 (fixture)
    receiver,
):
    parts = urlsplit(postgres_database)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    server = ServerProcess(*FAST, "--database-url", via_proxy)
    try:
        subscribe(server, receiver)
        receiver.script("hook", 503, 503)
        revisions = [record(server.stub, version="before").event.revision]
        receiver.wait_for("hook", 1)
        proxy.stop()  # the delivery is pending; the database goes away for a while
        time.sleep(3)
        proxy = TcpProxy(proxy.upstream, port=proxy.port)
        wait_all(receiver, revisions)
        deadline = time.monotonic() + 30
        while True:  # RecordEvent is UNAVAILABLE until the pool reconnects
            try:
                revisions.append(record(server.stub, version="after").event.revision)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait_all(receiver, revisions)
        assert_in_order_at_least_once(receiver, revisions)
    finally:
        server.stop()
        proxy.stop()
