"""The /metrics HTTP endpoint, on a thread of its own."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import ThreadingWSGIServer

from versioner_grpc.metrics.deployments import DeploymentMetrics


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


class _Server6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


def metrics_app(registry: CollectorRegistry, deployments: DeploymentMetrics) -> WSGIApplication:
    """/metrics (and / for a quick look in a browser): the registry's metrics (gRPC,
    process) followed by the deployment families; 404 for any other path."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: metrics are at /metrics\n"]
        body = generate_latest(registry) + deployments.exposition().encode()
        headers = [("Content-Type", CONTENT_TYPE_LATEST)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app


class MetricsServer:
    """Serves the metrics at host:port/metrics. Unlike prometheus_client's
    start_http_server it stops promptly (a short poll), which keeps restarts and
    tests fast.
    """

    def __init__(
        self, address: str, registry: CollectorRegistry, deployments: DeploymentMetrics
    ) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server_class = _Server6 if ":" in host else ThreadingWSGIServer
        self.httpd = make_server(
            host,
            int(port),
            metrics_app(registry, deployments),
            server_class,
            handler_class=_Quiet,
        )
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="versioner-metrics",
            daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
