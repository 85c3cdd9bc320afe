"""End to end: a real Prometheus scrapes a real Versioner and evaluates deploy/'s PromQL.

A Versioner server (SQLite) records a known set of deployments in two phases; a real
Prometheus (Debian's `prometheus` package) scrapes it every second with deploy/'s rule
files loaded. The test then asserts, through Prometheus' HTTP API, that the stored series
are exactly what was recorded, that every rule evaluates cleanly, and that every PromQL
expression of the dashboard and the rule files evaluates without error and returns data
where it should.

Why two phases: a counter series enters Prometheus at its current value, so increase()
and rate() only see what changes *after* the first scrape. Phase A (before Prometheus
starts) creates every series the expressions read; phase B (after Prometheus has scraped
phase A) adds failures, completions with durations, lead and restore times, a rollback
and an abort, so the windowed expressions have increments to show.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from tests.conftest import RunningServer
from tests.promql_exprs import RULE_FILES, dashboard_and_rule_expressions, rule_expressions
from tests.receiver import Receiver
from versioner_grpc.config import Config

STARTED = pb.DEPLOYMENT_STATUS_STARTED
COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED
FAILED = pb.DEPLOYMENT_STATUS_FAILED
ABORTED = pb.DEPLOYMENT_STATUS_ABORTED

T = TypeVar("T")

# What the two phases below leave in the store.
EXPECTED_DEPLOYMENTS = {
    ("shop", "production", "completed"): 4,
    ("shop", "production", "failed"): 2,
    ("shop", "production", "aborted"): 1,
    ("shop", "staging", "completed"): 2,
    ("shop", "staging", "failed"): 1,
    ("shop", "staging", "aborted"): 0,
    ("api", "production", "completed"): 0,
    ("api", "production", "failed"): 0,
    ("api", "production", "aborted"): 0,
}
EXPECTED_CURRENT = {
    ("shop", "production", "1.0.0"): 1,
    ("shop", "staging", "1.2.0"): 1,
}
EXPECTED_IN_PROGRESS = {
    ("shop", "production"): 1,
    ("shop", "staging"): 0,
    ("api", "production"): 1,
}
EXPECTED_ROLLBACKS = {
    ("shop", "production"): 1,
    ("shop", "staging"): 0,
    ("api", "production"): 0,
}

# Expressions whose result must be EMPTY for this data: alert conditions that are false.
MUST_BE_EMPTY = {
    "alerts.yml VersionerExporterDown": "the target is up",
    "alerts.yml VersionerExporterAbsent": "the target exists",
    "alerts.yml VersionerDeploymentFailureRateHigh": "no place has 3 failures",
    "alerts.yml VersionerNoRecentProductionDeployment": "the last completion was 1h ago",
    "alerts.yml VersionerGrpcServerErrors": "no call ended Unknown/Internal/...",
    "alerts.yml VersionerApprovalWaitingTooLong": "no approval request waited 4 hours",
    "alerts.yml VersionerNotificationLagHigh": "the subscription is caught up",
}
# Expressions that may legitimately be empty. The dashboard annotations compare the last
# deployment timestamp with its value `offset 1m`: Prometheus has been running for less
# than a minute, so the offset side has no samples yet.
#
# Everything else must return data, including the rate()/increase() expressions over long
# windows ([5m], [1d], [7d]): such a window only needs two samples of a series inside it,
# and histogram_quantile() over rate() only needs one increment inside it (it is NaN, and
# dropped by `>= 0`, without one). Phase A creates every series, phase B increments them
# after the first scrape, so a rate-based expression that stays empty is a real problem.
MAY_BE_EMPTY = {
    "dashboard annotation 'Deployments'": "compares with `offset 1m`",
    "dashboard annotation 'Failed deployments'": "compares with `offset 1m`",
}


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or next(
        (path for path in ("/usr/bin/prometheus",) if os.access(path, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def eventually(check: Callable[[], T], timeout: float) -> T:
    """`check()` once it stops raising AssertionError; its last error after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


class Prometheus:
    """A Prometheus server in a subprocess, scraping one target every second."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rule_files = "\n".join(f"  - {json.dumps(str(path.resolve()))}" for path in RULE_FILES)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            f"{rule_files}\n"
            "scrape_configs:\n"
            "  - job_name: versioner\n"
            "    scrape_interval: 1s\n"
            "    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n",
            encoding="utf-8",
        )
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path; the JSON body, also for 4xx answers (they carry the error)."""
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {exc.code}: {body[:200]!r}"}

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> None:
            assert self.process.poll() is None, (
                f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}"
            )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    assert response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                raise AssertionError(f"prometheus not ready: {exc}") from exc

        try:
            eventually(ready, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- prometheus log ---\n{self.log_tail()}") from exc

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now; fails the test on any error."""
        answer = self.get("/api/v1/query", query=expr)
        assert answer.get("status") == "success", f"{expr!r}: {answer}"
        assert answer["data"]["resultType"] in ("vector", "scalar"), answer
        result = answer["data"]["result"]
        return result if answer["data"]["resultType"] == "vector" else [{"value": result}]

    def series(self, expr: str, *keys: str) -> dict[tuple, float]:
        """{(label values for `keys`): value} of an instant vector query."""
        result = self.query(expr)
        found = {tuple(s["metric"].get(k) for k in keys): float(s["value"][1]) for s in result}
        assert len(found) == len(result), f"{expr}: {keys} do not identify the series: {result}"
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(seconds))
    return stamp


def record(stub, status, product, env, version, at, commit_at=None) -> pb.RecordEventResponse:
    request = pb.RecordEventRequest(
        product_name=product,
        version=version,
        environment_name=env,
        status=status,
        event_time=ts(at),
    )
    if commit_at is not None:
        request.scm_commit_time.CopyFrom(ts(commit_at))
    return stub.RecordEvent(request)


def record_phase_a(stub, base: float) -> None:
    """Before Prometheus: every series the expressions read, at its first value."""
    record(stub, COMPLETED, "shop", "production", "0.9.0", base, commit_at=base - 7200)
    record(stub, FAILED, "shop", "production", "0.9.1", base + 60)
    record(stub, STARTED, "shop", "production", "1.0.0", base + 100)
    # 120 s duration; time between 220 s; restore 160 s; lead time 3820 s.
    record(stub, COMPLETED, "shop", "production", "1.0.0", base + 220, commit_at=base - 3600)
    record(stub, COMPLETED, "shop", "staging", "1.0.0", base + 300)
    record(stub, STARTED, "api", "production", "9.0.0", base + 400)  # stays in progress
    with pytest.raises(grpc.RpcError):  # a non-OK gRPC code, for the error panels
        stub.RecordEvent(pb.RecordEventRequest(status=COMPLETED))
    record_blocked(stub)


def record_blocked(stub) -> None:
    """An attempt the freeze rule of FROZEN_RULES refuses (the governance panels)."""
    with pytest.raises(grpc.RpcError) as refused:
        record(stub, STARTED, "frozen", "production", "1.0.0", time.time())
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


FROZEN_RULES = """
[[rule]]
name = "frozen-product"
kind = "freeze"
products = ["frozen"]
start = 2020-01-01T00:00:00Z
end = 2999-01-01T00:00:00Z
"""


def record_phase_b(stub, base: float) -> None:
    """After Prometheus has scraped phase A: increments inside every window."""
    record(stub, FAILED, "shop", "production", "1.1.0", base + 1000)
    record(stub, STARTED, "shop", "production", "1.2.0", base + 1500)
    # 90 s duration; time between 1370 s; restore 590 s; lead time 990 s.
    record(stub, COMPLETED, "shop", "production", "1.2.0", base + 1590, commit_at=base + 600)
    record(stub, STARTED, "shop", "production", "1.3.0", base + 1700)
    record(stub, ABORTED, "shop", "production", "1.3.0", base + 1710)
    rollback = record(stub, COMPLETED, "shop", "production", "1.0.0", base + 1800)
    assert rollback.event.deployment.is_rollback
    record(stub, STARTED, "shop", "production", "1.4.0", base + 1900)  # stays in progress
    record(stub, FAILED, "shop", "staging", "1.1.0", base + 1100)
    record(stub, COMPLETED, "shop", "staging", "1.2.0", base + 1200)
    record_blocked(stub)


def stored_numbers(prometheus: Prometheus) -> dict[str, dict]:
    return {
        "versioner_deployments_total": prometheus.series(
            "versioner_deployments_total", "product", "environment", "status"
        ),
        "versioner_current_version_info": prometheus.series(
            "versioner_current_version_info", "product", "environment", "version"
        ),
        "versioner_deployments_in_progress": prometheus.series(
            "versioner_deployments_in_progress", "product", "environment"
        ),
        "versioner_rollbacks_total": prometheus.series(
            "versioner_rollbacks_total", "product", "environment"
        ),
    }


def test_real_prometheus_sees_the_recorded_numbers_and_evaluates_every_expression(
    tmp_path,
):
    binary = prometheus_binary()
    if binary is None:
        pytest.skip(
            "!!! prometheus not installed: apt-get install prometheus. The end-to-end "
            "test against a real Prometheus did NOT run !!!"
        )
    (tmp_path / "rules.toml").write_text(FROZEN_RULES)
    config = Config(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        database_url=f"sqlite:///{tmp_path}/versioner.db",
        health_interval=0.2,
        progress_interval=0.5,
        poll_interval=0.5,
        rules_file=str(tmp_path / "rules.toml"),
        allow_private_webhooks=True,
    )
    server = RunningServer(config)
    prometheus = None
    watch = None
    receiver = Receiver()
    try:
        base = time.time() - 3600
        # A webhook subscription, for the notification panels and alert.
        npb_grpc.NotificationServiceStub(server.channel).CreateSubscription(
            npb.CreateSubscriptionRequest(
                name="hook", url=receiver.url("hook"), format=npb.NOTIFICATION_FORMAT_WEBHOOK
            )
        )
        record_phase_a(server.stub, base)
        receiver.wait_for("hook", 6)
        # An open watch stream, for the 'Open watch streams' panel.
        watch = server.stub.WatchDeployments(pb.WatchDeploymentsRequest())
        next(watch)

        (tmp_path / "prometheus").mkdir()
        target = f"127.0.0.1:{server.server.metrics_port}"
        prometheus = Prometheus(binary, tmp_path / "prometheus", target)
        prometheus.wait_ready()

        def scraped_phase_a() -> None:
            up = prometheus.series('up{job="versioner"}', "instance")
            assert up == {(target,): 1}, f"target not up: {up}\n{prometheus.log_tail()}"
            completed = prometheus.series(
                'versioner_deployments_total{product="shop",environment="production",'
                'status="completed"}',
                "product",
            )
            assert completed == {("shop",): 2}

        eventually(scraped_phase_a, 60)
        record_phase_b(server.stub, base)
        receiver.wait_for("hook", 15)

        # The raw series are exactly what was recorded.
        expected = {
            "versioner_deployments_total": EXPECTED_DEPLOYMENTS,
            "versioner_current_version_info": EXPECTED_CURRENT,
            "versioner_deployments_in_progress": EXPECTED_IN_PROGRESS,
            "versioner_rollbacks_total": EXPECTED_ROLLBACKS,
        }
        eventually(lambda: _assert_equal(stored_numbers(prometheus), expected), 60)

        # The rule-based success ratio, once the rules have evaluated phase B's increments:
        # a place with completions and failures has a ratio strictly between 0 and 1; a
        # place without terminal deployments in the window has no sample.
        def success_ratio() -> None:
            ratios = prometheus.series(
                "product_environment:versioner_deployments_success:ratio1d",
                "product",
                "environment",
            )
            assert set(ratios) == {("shop", "production"), ("shop", "staging")}, ratios
            assert all(0 < ratio < 1 for ratio in ratios.values()), ratios

        eventually(success_ratio, 60)

        # Every expression evaluates without error, and has data where it should.
        expressions = dashboard_and_rule_expressions()
        known = {where for where, _ in expressions}
        assert set(MUST_BE_EMPTY) | set(MAY_BE_EMPTY) <= known, "stale expression names"

        def every_expression() -> dict[str, int]:
            sizes, errors = {}, []
            for where, expr in expressions:
                answer = prometheus.get("/api/v1/query", query=expr)
                if answer.get("status") != "success":
                    errors.append(f"{where}: {answer.get('errorType')}: {answer.get('error')}")
                    continue
                sizes[where] = len(answer["data"]["result"])
            assert not errors, "expressions failing in Prometheus:\n" + "\n".join(errors)
            empty = sorted(w for w, n in sizes.items() if n == 0)
            missing = [w for w in empty if w not in MUST_BE_EMPTY and w not in MAY_BE_EMPTY]
            assert not missing, (
                "expressions without data:\n  "
                + "\n  ".join(missing)
                + "\n(all empty: "
                + ", ".join(empty)
                + ")"
            )
            return sizes

        sizes = eventually(every_expression, 60)
        firing = {where: sizes[where] for where in MUST_BE_EMPTY if sizes[where]}
        assert not firing, f"alert conditions true for data that should not fire them: {firing}"

        # The open watch stream is the one stream started and not yet handled.
        open_streams = next(
            expr for where, expr in expressions if where.startswith("dashboard panel 'Open watch")
        )
        assert prometheus.series(open_streams, "instance") == {(target,): 1}

        # Every rule of both files is loaded, and evaluates without error.
        def rules_healthy() -> None:
            groups = prometheus.get("/api/v1/rules")["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) == len(rule_expressions()), [r["name"] for r in rules]
            bad = [
                f"{r['name']}: {r.get('health')} {r.get('lastError', '')}"
                for r in rules
                if r.get("health") != "ok"
            ]
            assert not bad, "rules not healthy:\n" + "\n".join(bad)

        eventually(rules_healthy, 30)
    finally:
        if watch is not None:
            watch.cancel()
        if prometheus is not None:
            prometheus.stop()
        server.stop()
        receiver.close()


def _assert_equal(got: dict[str, dict], expected: dict[str, dict]) -> None:
    problems = [
        f"{name}: got {got[name]}, expected {want}"
        for name, want in expected.items()
        if got[name] != want
    ]
    assert not problems, "\n".join(problems)
