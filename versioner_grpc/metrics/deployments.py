"""Deployment metrics, read from the store's projection at scrape time.

Nothing is counted in process memory: every number comes from tables written in
the events' transactions, so replicas agree, restarts lose nothing and late
events are included. Versions appear only in versioner_current_version_info.
"""

from __future__ import annotations

import platform
import time
from collections import defaultdict
from collections.abc import Iterator

import peewee as pw
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from versioner_grpc import __version__
from versioner_grpc.domain.errors import Unavailable
from versioner_grpc.domain.model import TERMINAL, EnvironmentType, Status
from versioner_grpc.store import projection
from versioner_grpc.store.database import Database

HISTOGRAMS = {
    projection.DURATION: (
        "versioner_deployment_duration_seconds",
        "Time from start to end of deployments whose start is known, by final status.",
    ),
    projection.BETWEEN: (
        "versioner_time_between_deployments_seconds",
        "Time between consecutive completed deployments of a product in an environment.",
    ),
    projection.LEAD_TIME: (
        "versioner_lead_time_seconds",
        "Time from the deployed commit (scm_commit_time) to the completed deployment.",
    ),
    projection.RESTORE: (
        "versioner_time_to_restore_seconds",
        "Time from a failed deployment to the next completed one in the same place.",
    ),
}


def _status(value: int) -> str:
    return Status(value).name.lower()


def _env_type(value: int) -> str:
    return EnvironmentType(value).name.lower()


class DeploymentCollector(Collector):
    """A prometheus_client collector over the projection tables."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def describe(self) -> list[Metric]:
        return []  # collected dynamically; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        db = self.database
        store_up = GaugeMetricFamily(
            "versioner_store_up", "1 when the last scrape could read the database, else 0."
        )
        try:
            with db.db.connection_context():
                rows = db.call(self._read)
        except Unavailable:
            rows = None
        store_up.add_metric([], 1 if rows else 0)
        yield store_up
        if rows:
            yield from self._families(*rows)
        build = GaugeMetricFamily(
            "versioner_build_info",
            "Versioner server build: always 1.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        cost = GaugeMetricFamily(
            "versioner_scrape_duration_seconds",
            "Time this scrape spent reading deployment metrics from the database.",
        )
        cost.add_metric([], time.perf_counter() - started)
        yield cost

    def _read(self) -> tuple[list, list, list]:
        m = self.database.models
        C, B, S, D = m.MetricCounter, m.MetricBucket, m.CurrentState, m.Deployment
        with self.database.db.atomic():
            counters = list(
                C.select(
                    C.product, C.environment, C.metric, C.status, C.count, C.sum, C.last
                ).tuples()
            )
            buckets = list(
                B.select(B.product, B.environment, B.metric, B.status, B.bucket, B.count).tuples()
            )
            states = list(
                S.select(S.product, S.environment, S.environment_type, S.in_progress, D.version)
                .join(D, join_type=pw.JOIN.LEFT_OUTER, on=(D.id == S.current_id))
                .tuples()
            )
        return counters, buckets, states

    def _families(self, counters: list, buckets: list, states: list) -> Iterator[Metric]:
        env_types = {(p, e): t for p, e, t, _, _ in states}
        deployments = CounterMetricFamily(
            "versioner_deployments",
            "Deployments that reached a terminal status.",
            labels=["product", "environment", "environment_type", "status"],
        )
        last = GaugeMetricFamily(
            "versioner_last_deployment_timestamp_seconds",
            "End time of the newest deployment that reached this status (Unix seconds).",
            labels=["product", "environment", "status"],
        )
        rollbacks = CounterMetricFamily(
            "versioner_rollbacks",
            "Completed deployments of an earlier version than the one running: a version that "
            "had completed there before, other than the current one.",
            labels=["product", "environment"],
        )
        in_progress = GaugeMetricFamily(
            "versioner_deployments_in_progress",
            "Deployments pending or started, not yet ended.",
            labels=["product", "environment"],
        )
        current = GaugeMetricFamily(
            "versioner_current_version_info",
            "The version currently deployed (last completed) per product and environment.",
            labels=["product", "environment", "environment_type", "version"],
        )
        # Every known place exports every terminal status and its rollbacks, at 0 until
        # the first one: rate() cannot see the increment that creates a series.
        counts: dict[tuple, int] = {(p, e, s): 0 for (p, e) in env_types for s in sorted(TERMINAL)}
        rollback_counts: dict[tuple, int] = dict.fromkeys(env_types, 0)
        sums: dict[tuple, tuple[int, float]] = {}
        for product, env, metric, status, count, total, last_time in counters:
            if metric == projection.DEPLOYMENTS:
                counts[(product, env, status)] = count
                last.add_metric([product, env, _status(status)], last_time / 1e6)
            elif metric == projection.ROLLBACKS:
                rollback_counts[(product, env)] = count
            elif metric in HISTOGRAMS:
                sums[(product, env, metric, status)] = (count, total)
        for (product, env, status), count in sorted(counts.items()):
            env_type = _env_type(env_types.get((product, env), 0))
            deployments.add_metric([product, env, env_type, _status(status)], count)
        for (product, env), count in sorted(rollback_counts.items()):
            rollbacks.add_metric([product, env], count)
        for product, env, env_type, busy, version in states:
            in_progress.add_metric([product, env], busy)
            if version is not None:
                current.add_metric([product, env, _env_type(env_type), version], 1)
        yield from (deployments, last, rollbacks, in_progress, current)
        yield from self._histograms(sums, buckets)

    def _histograms(self, sums: dict, buckets: list) -> Iterator[Metric]:
        per_series: dict[tuple, dict[int, int]] = defaultdict(dict)
        for product, env, metric, status, bucket, count in buckets:
            per_series[(product, env, metric, status)][bucket] = count
        for metric, (name, help_text) in HISTOGRAMS.items():
            with_status = metric == projection.DURATION
            labels = ["product", "environment", *(["status"] if with_status else [])]
            family = HistogramMetricFamily(name, help_text, labels=labels)
            bounds = projection.BUCKETS[metric]
            for key, (count, total) in sorted(sums.items()):
                if key[2] != metric:
                    continue
                counts = per_series.get(key, {})
                cumulative, running = [], 0
                for index, bound in enumerate(bounds):
                    running += counts.get(index, 0)
                    cumulative.append((_bound(bound), running))
                cumulative.append(("+Inf", count))
                values = [key[0], key[1], *([_status(key[3])] if with_status else [])]
                family.add_metric(values, cumulative, total)
            yield family


def _bound(seconds: float) -> str:
    return f"{float(seconds)}"
