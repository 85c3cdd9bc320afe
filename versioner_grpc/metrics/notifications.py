"""Notification metrics: attempts and their latency counted here, lag read at scrape time.

Attempts are counted by the replica that made them (sum across instances);
lag comes from the database, so every replica exports the same value (take
the max across instances).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from versioner_grpc.domain.errors import Unavailable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Lag(Collector):
    def __init__(self, lag: Callable[[], dict[str, float]]) -> None:
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "versioner_notification_lag_seconds",
            "How long the oldest event not yet delivered to a subscription has waited "
            "(0 when caught up).",
            labels=["subscription"],
        )
        try:
            values = self.lag()
        except Unavailable:
            return  # no numbers beat wrong ones; the database-health alert covers it
        for name, seconds in sorted(values.items()):
            family.add_metric([name], seconds)
        yield family


class NotificationMetrics:
    def __init__(self, registry: CollectorRegistry, lag: Callable[[], dict[str, float]]) -> None:
        self.deliveries = Counter(
            "versioner_notification_deliveries",
            "Delivery attempts by subscription and result (success, retry or failed).",
            ["subscription", "result"],
            registry=registry,
        )
        self.seconds = Histogram(
            "versioner_notification_delivery_seconds",
            "Time from sending a notification to the receiver's answer.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(_Lag(lag))

    def observe(self, subscription: str, result: str, seconds: float) -> None:
        self.deliveries.labels(subscription, result).inc()
        self.seconds.observe(seconds)
