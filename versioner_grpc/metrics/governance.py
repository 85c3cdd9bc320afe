"""Governance metrics: rule decisions, approvals pending, approval wait.

`versioner_rule_decisions_total` and `versioner_approval_wait_seconds` count what
this replica decided (sum them across replicas); `versioner_approvals_pending`
is read from the database at scrape time, so every replica exports the same
value (aggregate it with `max without(instance)`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from versioner_grpc.domain.errors import Unavailable
from versioner_grpc.store.store import Store

# Seconds from request to approval: a minute to a day.
WAIT_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, float("inf"))


class _Pending(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time_ns() // 1000
        try:
            count, oldest = self.store.pending_approvals(now)
        except Unavailable:
            return
        pending = GaugeMetricFamily(
            "versioner_approvals_pending", "Approval requests waiting for a decision (unexpired)."
        )
        pending.add_metric([], count)
        yield pending
        age = GaugeMetricFamily(
            "versioner_approval_oldest_pending_seconds",
            "How long the oldest pending approval request has been waiting (0: none).",
        )
        age.add_metric([], (now - oldest) / 1e6 if oldest is not None else 0.0)
        yield age


class GovernanceMetrics:
    def __init__(self, registry: CollectorRegistry, store: Store) -> None:
        self.decisions = Counter(
            "versioner_rule_decisions",
            "Rule evaluations on deployment attempts, by rule and outcome "
            "(pass, block, report, override).",
            ["rule", "outcome"],
            registry=registry,
        )
        self.wait = Histogram(
            "versioner_approval_wait_seconds",
            "Time from an approval request to its approval.",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        registry.register(_Pending(store))

    def count(self, rule: str, outcome: str) -> None:
        self.decisions.labels(rule, outcome).inc()

    def approved_after(self, seconds: float) -> None:
        self.wait.observe(max(0.0, seconds))
