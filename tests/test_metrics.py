"""The /metrics exposition: every DESIGN.md section 4 metric, with exact values.

Deployment metrics are a projection of the store (written in each event's transaction,
read at scrape time), so each test records deployments with explicit event times in the
past and checks the exact numbers a scrape shows. gRPC metrics follow go-grpc-prometheus:
same names, labels and label values (`grpc_code` is Go's `codes.Code.String()`, e.g.
"InvalidArgument", "Canceled").
"""

from __future__ import annotations

import os
import platform
import queue
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families
from versioner.v1 import deployment_service_pb2 as pb

from tests.conftest import start_server
from versioner_grpc import __version__

PENDING = pb.DEPLOYMENT_STATUS_PENDING
STARTED = pb.DEPLOYMENT_STATUS_STARTED
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
FAILED = pb.DEPLOYMENT_STATUS_FAILED
ABORTED = pb.DEPLOYMENT_STATUS_ABORTED

SERVICE = "versioner.v1.DeploymentService"
TERMINAL = {"completed", "failed", "aborted"}
# A whole second, ten days ago: every event time below is in the past.
T0 = int(time.time()) - 10 * 86400

# DESIGN.md section 4 (sample name, type, labels). current_version_info may carry
# environment_type too (the rules join on it); everything else is exactly as listed.
DEPLOYMENT_METRICS = {
    "versioner_deployments_total": (
        "counter",
        {"product", "environment", "environment_type", "status"},
    ),
    "versioner_deployment_duration_seconds": ("histogram", {"product", "environment", "status"}),
    "versioner_time_between_deployments_seconds": ("histogram", {"product", "environment"}),
    "versioner_rollbacks_total": ("counter", {"product", "environment"}),
    "versioner_deployments_in_progress": ("gauge", {"product", "environment"}),
    "versioner_last_deployment_timestamp_seconds": (
        "gauge",
        {"product", "environment", "status"},
    ),
    "versioner_current_version_info": ("gauge", {"product", "environment", "version"}),
    # The issue adds the DORA histograms and the build info.
    "versioner_lead_time_seconds": ("histogram", {"product", "environment"}),
    "versioner_time_to_restore_seconds": ("histogram", {"product", "environment"}),
}
GRPC_METRICS = {
    "grpc_server_started_total": ("counter", {"grpc_type", "grpc_service", "grpc_method"}),
    "grpc_server_handled_total": (
        "counter",
        {"grpc_type", "grpc_service", "grpc_method", "grpc_code"},
    ),
    "grpc_server_handling_seconds": ("histogram", {"grpc_type", "grpc_service", "grpc_method"}),
    "grpc_server_msg_received_total": ("counter", {"grpc_type", "grpc_service", "grpc_method"}),
    "grpc_server_msg_sent_total": ("counter", {"grpc_type", "grpc_service", "grpc_method"}),
}
OTHER_METRICS = {
    "versioner_build_info": ("gauge", {"version", "python_version"}),
}

T = TypeVar("T")


# --- helpers ------------------------------------------------------------------------------


def ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def record(
    stub,
    status=COMPLETED,
    *,
    product: str = "shop",
    version: str = "1.0.0",
    env: str = "production",
    at: float | None = None,
    commit_at: float | None = None,
    **fields,
) -> pb.RecordEventResponse:
    """One RecordEvent; `at` is the event time and `commit_at` the scm_commit_time."""
    if at is not None:
        fields["event_time"] = ts(at)
    if commit_at is not None:
        fields["scm_commit_time"] = ts(commit_at)
    return stub.RecordEvent(
        pb.RecordEventRequest(
            product_name=product, version=version, environment_name=env, status=status, **fields
        )
    )


def deploy(stub, start: float, seconds: float, status=COMPLETED, **kw) -> pb.RecordEventResponse:
    """A deployment STARTED at `start` that ends with `status` `seconds` later."""
    record(stub, STARTED, at=start, **kw)
    return record(stub, status, at=start + seconds, **kw)


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


class Exposition:
    """One scrape, parsed with prometheus_client's parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = list(text_string_to_metric_families(text))
        self.samples = [s for family in self.families for s in family.samples]

    def family(self, sample_name: str):
        """The family a sample name belongs to (counters lose `_total` in the parser)."""
        for family in self.families:
            if sample_name in (family.name, f"{family.name}_total"):
                return family
        return None

    def find(self, name: str, **labels: str) -> list:
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample matching `labels` (a subset), None if none."""
        found = self.find(name, **labels)
        assert len(found) <= 1, f"{name}{labels} matches several samples: {found}"
        return found[0].value if found else None

    def series(self, name: str, *keys: str, **labels: str) -> dict[tuple, float]:
        """{(label values for `keys`): value} for the samples matching `labels`."""
        found = self.find(name, **labels)
        result = {tuple(s.labels.get(k) for k in keys): s.value for s in found}
        assert len(result) == len(found), f"{name}: {keys} do not identify the series"
        return result

    def buckets(self, name: str, **labels: str) -> dict[float, float]:
        """{upper bound: cumulative count} of a histogram series."""
        return {float(s.labels["le"]): s.value for s in self.find(f"{name}_bucket", **labels)}

    def deployment_samples(self) -> dict[tuple, float]:
        """Every deployment-metric sample (versioner_*, not the per-process ones)."""
        per_process = {"versioner_scrape_duration_seconds", "versioner_build_info"}
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for s in self.samples
            if s.name.startswith("versioner_") and s.name not in per_process
        }


def scrape(server) -> Exposition:
    return Exposition(scrape_text(server.metrics_url))


def eventually(check: Callable[[], T], timeout: float = 10.0) -> T:
    """`check()` once it stops raising AssertionError; its last error after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def record_known_set(stub) -> None:
    """Completed, failed, aborted, rolled back and in-progress deployments, with a lead
    time (scm_commit_time) and a time to restore (a failure, then a completion)."""
    deploy(stub, T0, 90, version="1.0.0", commit_at=T0 - 600, scm_sha="c0ffee0000000000000001")
    record(stub, FAILED, version="1.1.0", at=T0 + 3600)
    deploy(stub, T0 + 7200, 30, version="1.2.0")
    deploy(stub, T0 + 9000, 10, ABORTED, version="1.3.0")
    record(stub, COMPLETED, version="1.0.0", at=T0 + 10800)  # rollback to 1.0.0
    record(stub, STARTED, version="1.4.0", at=T0 + 20000)
    record(stub, COMPLETED, version="1.0.0", env="staging", at=T0 + 100)


class StreamReader:
    """Reads a server stream on a thread; messages land in a queue, None at the end."""

    def __init__(self, call) -> None:
        self.call = call
        self.messages: queue.Queue = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for message in self.call:
                self.messages.put(message)
        except grpc.RpcError as exc:
            self.error = exc
        self.messages.put(None)

    def next(self, timeout: float = 10.0):
        message = self.messages.get(timeout=timeout)
        assert message is not None, f"stream ended early: {self.error}"
        return message

    def ended(self, timeout: float = 10.0) -> grpc.RpcError | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream did not end"
        return self.error


def grpc_labels(method: str, grpc_type: str = "unary") -> dict[str, str]:
    return {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}


# --- presence, help, labels ---------------------------------------------------------------


def test_every_design_metric_is_exported_with_help_text_and_samples(server):
    record_known_set(server.stub)
    with pytest.raises(grpc.RpcError):  # a rejected call, for the gRPC metrics
        record(server.stub, COMPLETED, product="")
    exposition = scrape(server)
    problems = []
    expected = {**DEPLOYMENT_METRICS, **GRPC_METRICS, **OTHER_METRICS}
    for name, (kind, _) in expected.items():
        family = exposition.family(name)
        if family is None:
            problems.append(f"{name}: missing")
            continue
        if family.type != kind:
            problems.append(f"{name}: type {family.type}, expected {kind}")
        if not family.documentation.strip():
            problems.append(f"{name}: no HELP text")
        if not family.samples:
            problems.append(f"{name}: no samples after recording the known set")
    assert not problems, "\n".join(problems)


def test_metrics_carry_exactly_the_design_labels(server):
    record_known_set(server.stub)
    server.stub.GetCurrent(pb.GetCurrentRequest())
    exposition = scrape(server)
    problems = []
    expected = {**DEPLOYMENT_METRICS, **GRPC_METRICS, **OTHER_METRICS}
    for name, (_, labels) in expected.items():
        family = exposition.family(name)
        assert family is not None, f"{name} missing"
        for sample in family.samples:
            got = set(sample.labels) - ({"le"} if sample.name.endswith("_bucket") else set())
            allowed = [labels]
            if name == "versioner_current_version_info":
                allowed.append(labels | {"environment_type"})
            if got not in allowed:
                problems.append(f"{sample.name}: labels {sorted(got)}, expected {sorted(labels)}")
    assert not problems, "\n".join(sorted(set(problems)))


def test_versions_appear_only_in_current_version_info_and_shas_nowhere(server):
    sha = "deadbeefcafe0123456789"
    record(server.stub, STARTED, version="9.8.7-rc1", at=T0, scm_sha=sha)
    record(server.stub, COMPLETED, version="9.8.7-rc1", at=T0 + 60, scm_sha=sha)
    record(server.stub, FAILED, version="9.8.8-rc2", at=T0 + 120)
    exposition = scrape(server)
    leaks = [
        f"{s.name}{s.labels}"
        for s in exposition.samples
        if s.name != "versioner_current_version_info"
        and any(value in ("9.8.7-rc1", "9.8.8-rc2") for value in s.labels.values())
    ]
    assert not leaks, f"deployed versions in labels of other metrics: {leaks}"
    assert exposition.series("versioner_current_version_info", "version") == {("9.8.7-rc1",): 1}
    assert sha not in exposition.text
    assert not [s for s in exposition.samples if any("sha" in k for k in s.labels)]


# --- exact deployment values --------------------------------------------------------------


def test_deployments_total_counts_each_terminal_status_exactly(server):
    stub = server.stub
    for n in range(3):
        record(stub, COMPLETED, version=f"1.{n}", at=T0 + n)
    for n in range(2):
        record(stub, FAILED, version=f"2.{n}", at=T0 + 10 + n)
    record(stub, ABORTED, version="3.0", at=T0 + 20)
    record(stub, STARTED, version="4.0", at=T0 + 30)  # in progress: no terminal status yet
    record(stub, PENDING, version="5.0", at=T0 + 31)
    record(stub, COMPLETED, version="1.0", env="staging", at=T0 + 40)

    series = scrape(server).series(
        "versioner_deployments_total", "product", "environment", "environment_type", "status"
    )
    assert series == {
        ("shop", "production", "production", "completed"): 3,
        ("shop", "production", "production", "failed"): 2,
        ("shop", "production", "production", "aborted"): 1,
        ("shop", "staging", "staging", "completed"): 1,
        ("shop", "staging", "staging", "failed"): 0,
        ("shop", "staging", "staging", "aborted"): 0,
    }


def test_zero_valued_counters_are_exported_for_every_terminal_status_of_a_known_place(server):
    record(server.stub, COMPLETED, product="only-completed", at=T0)
    record(server.stub, STARTED, product="only-started", at=T0)
    exposition = scrape(server)
    for product, completed in (("only-completed", 1), ("only-started", 0)):
        statuses = exposition.series("versioner_deployments_total", "status", product=product)
        assert statuses == {
            ("completed",): completed,
            ("failed",): 0,
            ("aborted",): 0,
        }, product
        assert exposition.value("versioner_rollbacks_total", product=product) == 0, product


def test_duration_histogram_places_a_90_second_deployment_in_the_120_second_bucket(server):
    deploy(server.stub, T0, 90)
    record(server.stub, COMPLETED, version="2.0", at=T0 + 500)  # start unknown: no duration
    deploy(server.stub, T0 + 1000, 5, FAILED, version="3.0")  # exactly on the 5 s bound
    exposition = scrape(server)
    name = "versioner_deployment_duration_seconds"
    completed = {"product": "shop", "environment": "production", "status": "completed"}
    assert exposition.value(f"{name}_count", **completed) == 1
    assert exposition.value(f"{name}_sum", **completed) == 90
    buckets = exposition.buckets(name, **completed)
    # Cumulative: 0 in every bucket below 90 s, 1 from the 120 s bucket up to +Inf.
    assert buckets == {le: (1 if le >= 90 else 0) for le in buckets}, buckets
    assert buckets[60] == 0 and buckets[120] == 1 and buckets[float("inf")] == 1

    failed = {**completed, "status": "failed"}
    assert exposition.value(f"{name}_count", **failed) == 1
    assert exposition.value(f"{name}_sum", **failed) == 5
    failed_buckets = exposition.buckets(name, **failed)
    assert failed_buckets[1] == 0 and failed_buckets[5] == 1, failed_buckets


def test_time_between_deployments_observes_gaps_between_consecutive_completions(server):
    stub = server.stub
    record(stub, COMPLETED, version="1", at=T0)
    record(stub, FAILED, version="2", at=T0 + 900)  # failures are not deployments in between
    record(stub, COMPLETED, version="3", at=T0 + 1800)  # gap 1800 s: on the 1800 s bound
    record(stub, COMPLETED, version="4", at=T0 + 1800 + 7200)  # gap 7200 s
    exposition = scrape(server)
    name = "versioner_time_between_deployments_seconds"
    where = {"product": "shop", "environment": "production"}
    assert exposition.value(f"{name}_count", **where) == 2
    assert exposition.value(f"{name}_sum", **where) == 9000
    buckets = exposition.buckets(name, **where)
    assert (buckets[900], buckets[1800], buckets[3600], buckets[10800]) == (0, 1, 1, 2), buckets
    assert buckets[float("inf")] == 2


def test_lead_time_is_commit_time_to_completed_deployment(server):
    stub = server.stub
    deploy(stub, T0, 60, version="1", commit_at=T0 + 60 - 5000)  # lead 5000 s
    record(stub, COMPLETED, version="2", at=T0 + 9000)  # no commit time: no lead time
    record(stub, FAILED, version="3", at=T0 + 9500, commit_at=T0)  # failed: no lead time
    exposition = scrape(server)
    name = "versioner_lead_time_seconds"
    where = {"product": "shop", "environment": "production"}
    assert exposition.value(f"{name}_count", **where) == 1
    assert exposition.value(f"{name}_sum", **where) == 5000
    buckets = exposition.buckets(name, **where)
    assert (buckets[3600], buckets[10800], buckets[float("inf")]) == (0, 1, 1), buckets


def test_time_to_restore_is_a_failure_to_the_next_completion(server):
    stub = server.stub
    record(stub, COMPLETED, version="1", at=T0)
    record(stub, FAILED, version="2", at=T0 + 100)
    record(stub, COMPLETED, version="3", at=T0 + 400)  # restored after 300 s
    record(stub, COMPLETED, version="4", at=T0 + 1000)  # no failure before: no restore
    exposition = scrape(server)
    name = "versioner_time_to_restore_seconds"
    where = {"product": "shop", "environment": "production"}
    assert exposition.value(f"{name}_count", **where) == 1
    assert exposition.value(f"{name}_sum", **where) == 300
    buckets = exposition.buckets(name, **where)
    assert (buckets[60], buckets[300], buckets[float("inf")]) == (0, 1, 1), buckets


def test_rollbacks_total_counts_completions_of_a_version_completed_there_before(server):
    stub = server.stub
    record(stub, COMPLETED, version="1", at=T0)
    record(stub, COMPLETED, version="2", at=T0 + 100)
    back = record(stub, COMPLETED, version="1", at=T0 + 200)
    record(stub, COMPLETED, version="1", at=T0 + 300)  # same as current: a redeploy
    record(stub, COMPLETED, version="1", env="staging", at=T0 + 300)
    assert back.event.deployment.is_rollback
    series = scrape(server).series("versioner_rollbacks_total", "product", "environment")
    assert series == {("shop", "production"): 1, ("shop", "staging"): 0}


def test_deployments_in_progress_counts_open_deployments(server):
    stub = server.stub

    def in_progress() -> dict[tuple, float]:
        return scrape(server).series("versioner_deployments_in_progress", "product", "environment")

    record(stub, STARTED, version="1", at=T0)
    record(stub, PENDING, version="2", at=T0 + 1)
    record(stub, STARTED, version="1", env="staging", at=T0 + 2)
    assert in_progress() == {("shop", "production"): 2, ("shop", "staging"): 1}
    record(stub, COMPLETED, version="1", at=T0 + 10)
    assert in_progress() == {("shop", "production"): 1, ("shop", "staging"): 1}
    record(stub, ABORTED, version="2", at=T0 + 11)
    record(stub, FAILED, version="1", env="staging", at=T0 + 12)
    assert in_progress() == {("shop", "production"): 0, ("shop", "staging"): 0}


def test_last_deployment_timestamp_is_the_newest_end_time_per_status(server):
    stub = server.stub
    record(stub, COMPLETED, version="1", at=T0 + 100.5)
    record(stub, COMPLETED, version="0", at=T0 + 50)  # late: an older completion
    record(stub, FAILED, version="2", at=T0 + 70)
    series = scrape(server).series("versioner_last_deployment_timestamp_seconds", "status")
    assert series == {("completed",): T0 + 100.5, ("failed",): T0 + 70}


def test_current_version_info_is_one_series_for_the_last_completed_version(server):
    stub = server.stub
    record(stub, COMPLETED, version="1.0", at=T0)
    record(stub, COMPLETED, version="2.0", at=T0 + 100)
    record(stub, FAILED, version="3.0", at=T0 + 200)
    record(stub, STARTED, version="4.0", at=T0 + 300)
    record(stub, COMPLETED, version="7.0", env="staging", at=T0 + 300)
    found = scrape(server).find("versioner_current_version_info")
    assert {(s.labels["environment"], s.labels["version"], s.value) for s in found} == {
        ("production", "2.0", 1),
        ("staging", "7.0", 1),
    }
    env_types = {s.labels["environment"]: s.labels.get("environment_type") for s in found}
    assert env_types == {"production": "production", "staging": "staging"}


def test_idempotent_replay_of_an_event_id_counts_once(server):
    stub = server.stub
    started_id, completed_id = uuid.uuid4().hex, uuid.uuid4().hex
    record(stub, STARTED, at=T0, event_id=started_id)
    record(stub, COMPLETED, at=T0 + 90, event_id=completed_id)
    again = record(stub, COMPLETED, at=T0 + 90, event_id=completed_id)
    record(stub, STARTED, at=T0, event_id=started_id)
    assert again.duplicate
    exposition = scrape(server)
    where = {"product": "shop", "environment": "production"}
    assert exposition.value("versioner_deployments_total", **where, status="completed") == 1
    name = "versioner_deployment_duration_seconds_count"
    assert exposition.value(name, **where, status="completed") == 1
    assert exposition.value("versioner_deployments_in_progress", **where) == 0


def test_a_late_event_with_an_old_event_time_is_counted(server):
    stub = server.stub
    record(stub, COMPLETED, version="2.0", at=T0)
    month_ago = T0 - 30 * 86400
    deploy(stub, month_ago, 45, version="1.0")  # arrives now, happened a month earlier
    exposition = scrape(server)
    where = {"product": "shop", "environment": "production"}
    assert exposition.value("versioner_deployments_total", **where, status="completed") == 2
    duration = "versioner_deployment_duration_seconds"
    assert exposition.value(f"{duration}_count", **where, status="completed") == 1
    assert exposition.value(f"{duration}_sum", **where, status="completed") == 45
    # Included in the counts, but it does not replace the newer current version.
    assert exposition.series("versioner_current_version_info", "version") == {("2.0",): 1}
    last = exposition.value("versioner_last_deployment_timestamp_seconds", status="completed")
    assert last == T0


def test_deployment_metrics_survive_a_server_restart(config):
    first = start_server(config)
    try:
        record_known_set(first.stub)
        before = scrape(first).deployment_samples()
    finally:
        first.stop()
    assert (
        before[
            (
                "versioner_deployments_total",
                (
                    ("environment", "production"),
                    ("environment_type", "production"),
                    ("product", "shop"),
                    ("status", "completed"),
                ),
            )
        ]
        == 3
    )
    second = start_server(config)
    try:
        after = scrape(second).deployment_samples()
    finally:
        second.stop()
    assert after == before


def test_two_servers_on_one_database_export_identical_deployment_metrics(config):
    one = start_server(config)
    try:
        two = start_server(config)
        try:
            for n in range(4):
                stub = (one, two)[n % 2].stub
                record(stub, COMPLETED, version=f"1.{n}", at=T0 + 100 * n)
                record(stub, FAILED, version=f"2.{n}", at=T0 + 100 * n + 50, env="staging")
            deploy(two.stub, T0 + 1000, 90, version="1.0")  # a rollback, with a duration
            record(one.stub, STARTED, version="3.0", at=T0 + 2000)
            exposition_one, exposition_two = scrape(one), scrape(two)
        finally:
            two.stop()
    finally:
        one.stop()
    where = {"product": "shop", "environment": "production"}
    assert exposition_one.value("versioner_deployments_total", **where, status="completed") == 5
    assert exposition_one.value("versioner_rollbacks_total", **where) == 1
    assert exposition_one.value("versioner_deployments_in_progress", **where) == 1
    assert exposition_one.deployment_samples() == exposition_two.deployment_samples()


# --- gRPC server metrics (go-grpc-prometheus) ---------------------------------------------


def test_grpc_unary_calls_count_started_handled_latency_and_messages(server):
    record(server.stub, COMPLETED, at=T0)
    record(server.stub, COMPLETED, version="2", at=T0 + 1)
    server.stub.GetCurrent(pb.GetCurrentRequest())

    def check() -> None:
        exposition = scrape(server)
        record_event, get_current = grpc_labels("RecordEvent"), grpc_labels("GetCurrent")
        assert exposition.value("grpc_server_started_total", **record_event) == 2
        assert exposition.value("grpc_server_started_total", **get_current) == 1
        handled = exposition.series("grpc_server_handled_total", "grpc_code", **record_event)
        assert handled == {("OK",): 2}
        assert exposition.value("grpc_server_handling_seconds_count", **record_event) == 2
        buckets = exposition.buckets("grpc_server_handling_seconds", **record_event)
        assert buckets[float("inf")] == 2
        assert list(buckets.values()) == sorted(buckets.values()), "buckets not cumulative"
        assert exposition.value("grpc_server_msg_received_total", **record_event) == 2
        assert exposition.value("grpc_server_msg_sent_total", **record_event) == 2

    eventually(check)


def test_grpc_rejected_call_is_handled_with_the_go_grpc_prometheus_code_invalid_argument(
    server,
):
    with pytest.raises(grpc.RpcError) as rejected:
        record(server.stub, COMPLETED, product="")
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    record(server.stub, COMPLETED, at=T0)

    def check() -> None:
        exposition = scrape(server)
        labels = grpc_labels("RecordEvent")
        assert exposition.value("grpc_server_started_total", **labels) == 2
        handled = exposition.series("grpc_server_handled_total", "grpc_code", **labels)
        # go-grpc-prometheus labels with Go's codes.Code.String(): "InvalidArgument".
        assert handled == {("OK",): 1, ("InvalidArgument",): 1}
        assert exposition.value("grpc_server_handling_seconds_count", **labels) == 2
        assert exposition.value("grpc_server_msg_received_total", **labels) == 2
        # go-grpc-prometheus counts a unary response as sent only when there is one.
        assert exposition.value("grpc_server_msg_sent_total", **labels) == 1

    eventually(check)


def test_watch_stream_is_counted_as_handled_only_when_it_ends(server):
    labels = grpc_labels("WatchDeployments", "server_stream")
    reader = StreamReader(server.stub.WatchDeployments(pb.WatchDeploymentsRequest()))
    try:
        record(server.stub, COMPLETED, at=T0)
        received = 0
        while True:  # progress messages may come first; wait for the event
            received += 1
            if reader.next().WhichOneof("kind") == "event":
                break

        def open_stream() -> None:
            exposition = scrape(server)
            assert exposition.value("grpc_server_started_total", **labels) == 1
            assert exposition.value("grpc_server_msg_received_total", **labels) == 1
            assert (exposition.value("grpc_server_msg_sent_total", **labels) or 0) >= received
            assert not exposition.find("grpc_server_handled_total", **labels)
            assert not exposition.value("grpc_server_handling_seconds_count", **labels)

        eventually(open_stream)
    finally:
        reader.call.cancel()
    reader.ended()

    def ended() -> None:
        exposition = scrape(server)
        handled = exposition.find("grpc_server_handled_total", **labels)
        assert sum(s.value for s in handled) == 1, handled
        assert exposition.value("grpc_server_handling_seconds_count", **labels) == 1
        assert exposition.value("grpc_server_started_total", **labels) == 1

    eventually(ended)


def test_watch_stream_cancelled_by_the_client_is_handled_with_code_canceled(server):
    labels = grpc_labels("WatchDeployments", "server_stream")
    reader = StreamReader(server.stub.WatchDeployments(pb.WatchDeploymentsRequest()))
    try:
        reader.next()  # established: the first (progress) message arrived
    finally:
        reader.call.cancel()
    error = reader.ended()
    assert error is not None and error.code() == grpc.StatusCode.CANCELLED

    def check() -> None:
        handled = scrape(server).series("grpc_server_handled_total", "grpc_code", **labels)
        # go-grpc-prometheus: the handler returns the cancelled context's status, whose
        # codes.Code.String() is "Canceled" (one l).
        assert handled == {("Canceled",): 1}

    eventually(check)


def test_watch_stream_rejected_by_the_server_is_handled_with_its_code_and_sends_nothing(server):
    labels = grpc_labels("WatchDeployments", "server_stream")
    call = server.stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=-1))
    with pytest.raises(grpc.RpcError) as rejected:
        list(call)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    def check() -> None:
        exposition = scrape(server)
        assert exposition.value("grpc_server_started_total", **labels) == 1
        handled = exposition.series("grpc_server_handled_total", "grpc_code", **labels)
        assert handled == {("InvalidArgument",): 1}
        assert not exposition.value("grpc_server_msg_sent_total", **labels)

    eventually(check)


# --- build info and the exposition format -------------------------------------------------


def test_build_info_reports_server_and_python_versions(server):
    found = scrape(server).find("versioner_build_info")
    assert [(s.labels, s.value) for s in found] == [
        ({"version": __version__, "python_version": platform.python_version()}, 1)
    ]


def test_scrape_reports_the_collectors_own_cost(server):
    value = scrape(server).value("versioner_scrape_duration_seconds")
    assert value is not None and value >= 0


def test_promtool_check_metrics_passes_on_the_exposition(server):
    promtool = shutil.which("promtool") or next(
        (path for path in ("/usr/bin/promtool",) if os.path.exists(path)), None
    )
    if promtool is None:
        pytest.skip(
            "!!! promtool not installed (apt-get install prometheus): "
            "`promtool check metrics` NOT run on the exposition !!!"
        )
    record_known_set(server.stub)
    with pytest.raises(grpc.RpcError):
        record(server.stub, COMPLETED, product="")
    reader = StreamReader(server.stub.WatchDeployments(pb.WatchDeploymentsRequest()))
    reader.next()
    reader.call.cancel()
    reader.ended()
    text = scrape_text(server.metrics_url)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"
    assert not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr
