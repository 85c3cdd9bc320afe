"""gRPC server metrics under the go-grpc-prometheus names and labels."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

LABELS = ("grpc_type", "grpc_service", "grpc_method")
# Seconds; shared with the HTTP API's histogram so both compare bucket for bucket.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    60,
    300,
    3600,
)


def go_code(code: grpc.StatusCode) -> str:
    """The status code as go-grpc-prometheus spells it: INVALID_ARGUMENT → InvalidArgument."""
    if code == grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code == grpc.StatusCode.OK:
        return "OK"
    return "".join(word.capitalize() for word in code.name.split("_"))


class GrpcMetrics:
    """The five go-grpc-prometheus server metrics, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            LABELS,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*LABELS, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            LABELS,
            registry=registry,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            LABELS,
            registry=registry,
        )
