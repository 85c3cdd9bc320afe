"""Deployments keep their encoded protobuf beside their row; reads send those bytes."""

from __future__ import annotations

from versioner.v1 import deployment_service_pb2 as pb

from tests.conftest import start_server
from tests.test_watch import STARTED, record


def _encoded(running, deployment_id: str):
    m = running.server.store.database.models
    row = m.Deployment.get_by_id(deployment_id)
    return bytes(row.encoded) if row.encoded is not None else None


def test_each_write_stores_the_deployment_as_history_and_current_return_it(server, stub):
    started = record(stub, version="1", status=STARTED).event.deployment
    first = _encoded(server, started.id)
    assert pb.Deployment.FromString(first) == started
    done = record(stub, version="1").event.deployment  # same deployment, now completed
    assert done.id == started.id
    stored = _encoded(server, done.id)
    assert stored != first and pb.Deployment.FromString(stored) == done
    page = stub.ListHistory(pb.ListHistoryRequest(product_name="svc"))
    assert list(page.deployments) == [done]
    (state,) = stub.GetCurrent(pb.GetCurrentRequest(product_name="svc")).states
    assert state.current == done and state.latest == done


def test_rows_without_a_stored_encoding_are_converted_from_their_columns(config):
    running = start_server(config, read_cache=False)
    try:
        stub = running.stub
        old = record(stub, version="1").event.deployment
        new = record(stub, version="2").event.deployment
        m = running.server.store.database.models
        # As a row written before migration 5 (or seeded in bulk) would be.
        m.Deployment.update(encoded=None).where(m.Deployment.id == old.id).execute()
        assert _encoded(running, old.id) is None
        page = stub.ListHistory(pb.ListHistoryRequest(product_name="svc"))
        assert list(page.deployments) == [new, old]
        (state,) = stub.GetCurrent(pb.GetCurrentRequest(product_name="svc")).states
        assert state.current == new
        m.Deployment.update(encoded=None).execute()
        (state,) = stub.GetCurrent(pb.GetCurrentRequest(product_name="svc")).states
        assert state.current == new and state.latest == new
    finally:
        running.stop()


def test_paging_over_stored_encodings_visits_every_deployment_once(server, stub):
    ids = [record(stub, version=str(i)).event.deployment.id for i in range(7)]
    seen, token = [], ""
    while True:
        page = stub.ListHistory(
            pb.ListHistoryRequest(product_name="svc", page_size=3, page_token=token)
        )
        seen += [d.id for d in page.deployments]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 7
