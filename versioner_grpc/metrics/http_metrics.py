"""HTTP API request metrics: the grpc_server_* pair under HTTP names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from versioner_grpc.metrics.grpc_metrics import LATENCY_BUCKETS


class HttpMetrics:
    """`versioner_http_requests_total{method, route, code}` and its latency histogram.

    `route` is the route template (`/deployments/{deployment_id}`), never the raw
    path, so the label stays bounded whatever clients send.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "versioner_http_requests_total",
            "HTTP API requests completed, by method, route template and status code.",
            ("method", "route", "code"),
            registry=registry,
        )
        self.duration = Histogram(
            "versioner_http_request_duration_seconds",
            "HTTP API request latency (seconds), to the end of the response body.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str, code: int, seconds: float) -> None:
        self.requests.labels(method, route, str(code)).inc()
        self.duration.labels(method, route).observe(seconds)
