"""kill -9 under concurrent writers: every acknowledged event survives, exactly once,
with the revision it was acknowledged with, and revisions stay dense (1..head)."""

from __future__ import annotations

import signal
import threading

import grpc
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from tests.faults.common import event, wait_until
from tests.processes import ServerProcess

WRITERS = 8
ROUNDS = 2
ACKS_PER_ROUND = 150


def server_args(database_url: str) -> list[str]:
    return [
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--database-url",
        database_url,
        "--progress-interval",
        "0.5",
    ]


def write_until_killed(address: str, prefix: str, acked: dict[str, int], lock: threading.Lock):
    """Record events with unique event_ids until the server stops answering."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DeploymentServiceStub(channel)
        i = 0
        while True:
            event_id = f"{prefix}-{i}"
            try:
                response = stub.RecordEvent(
                    event(event_id, event_id=event_id, product_name=prefix), timeout=10
                )
            except grpc.RpcError:
                return  # killed (or refused while dying): not acknowledged
            with lock:
                acked[event_id] = response.event.revision
            i += 1


def all_events(stub) -> list[pb.Event]:
    """Every stored event, in revision order, read through a watch from the start."""
    head = stub.ListHistory(pb.ListHistoryRequest(page_size=1), timeout=30).revision
    events: list[pb.Event] = []
    stream = stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=0), timeout=120)
    for message in stream:
        if message.HasField("event"):
            events.append(message.event)
        if message.revision >= head:
            break
    stream.cancel()
    return events


def test_kill_9_under_concurrent_writers_loses_and_duplicates_nothing(database_url):
    acked: dict[str, int] = {}
    lock = threading.Lock()
    for round_ in range(ROUNDS):
        server = ServerProcess(*server_args(database_url))
        writers = [
            threading.Thread(
                target=write_until_killed,
                args=(server.address, f"r{round_}w{n}", acked, lock),
                daemon=True,
            )
            for n in range(WRITERS)
        ]
        for thread in writers:
            thread.start()
        target = (round_ + 1) * ACKS_PER_ROUND
        wait_until(lambda t=target: len(acked) >= t, 120, f"{target} acknowledged events")
        server.proc.kill()  # SIGKILL while the writers are mid-flight
        assert server.proc.wait(30) == -signal.SIGKILL
        server.channel.close()
        for thread in writers:
            thread.join(30)

    server = ServerProcess(*server_args(database_url))
    try:
        events = all_events(server.stub)
        revisions = [e.revision for e in events]
        assert revisions == list(range(1, len(events) + 1)), "revisions are not dense"
        stored = {e.event_id: e.revision for e in events}
        assert len(stored) == len(events), "an event_id was stored twice"
        lost = {eid: rev for eid, rev in acked.items() if stored.get(eid) != rev}
        assert not lost, f"{len(lost)} acknowledged events lost or moved: {list(lost)[:5]}"
    finally:
        server.stop()
