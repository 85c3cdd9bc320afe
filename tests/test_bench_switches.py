"""Benchmarking switches: every read cold (--no-read-cache), no interceptor metrics."""

from __future__ import annotations

from versioner.v1 import deployment_service_pb2 as pb

from tests.conftest import start_server
from tests.test_metrics import scrape_text
from tests.test_watch import record


def test_without_the_read_cache_repeated_reads_are_answered_fresh_and_nothing_is_kept(config):
    running = start_server(config, read_cache=False)
    try:
        stub = running.stub
        record(stub, version="1")
        first = stub.GetCurrent(pb.GetCurrentRequest(product_name="svc"))
        again = stub.GetCurrent(pb.GetCurrentRequest(product_name="svc"))
        assert first == again and first.states[0].current.version == "1"
        page = stub.ListHistory(pb.ListHistoryRequest(product_name="svc"))
        assert [d.version for d in page.deployments] == ["1"]
        assert running.server.store.cached_answers == 0
    finally:
        running.stop()


def test_the_read_cache_keeps_answers_by_default(server, stub):
    record(stub, version="1")
    stub.GetCurrent(pb.GetCurrentRequest(product_name="svc"))
    assert server.server.store.cached_answers == 1


def test_without_grpc_metrics_no_call_is_counted_but_calls_still_work(config):
    running = start_server(config, grpc_metrics=False)
    try:
        assert record(running.stub, version="1").event.revision == 1
        text = scrape_text(running.metrics_url)
        assert "grpc_server_started_total{" not in text
        assert "versioner_deployments" in text  # the deployment metrics are still served
    finally:
        running.stop()
