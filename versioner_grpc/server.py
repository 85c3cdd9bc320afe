"""Wiring: builds the gRPC server, starts it, and drains it on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from versioner_grpc import convert
from versioner_grpc.auth import TokenFile
from versioner_grpc.config import Config
from versioner_grpc.domain.errors import Unavailable
from versioner_grpc.interceptors import ObservingInterceptor
from versioner_grpc.logs import fields
from versioner_grpc.metrics.deployments import DeploymentMetrics
from versioner_grpc.metrics.grpc_metrics import GrpcMetrics
from versioner_grpc.metrics.http import MetricsServer
from versioner_grpc.service import DeploymentService
from versioner_grpc.store.store import Store
from versioner_grpc.store.writer import now_us
from versioner_grpc.watch import WatchHub

log = logging.getLogger("versioner.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DeploymentService"].full_name
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def check_exposure(config: Config) -> None:
    """Secure by default: beyond loopback only with an auth file, or --insecure."""
    host = config.listen.rpartition(":")[0]
    if host in LOOPBACK or host.startswith("127."):
        return
    if config.auth_file:
        if not config.tls_cert:
            log.warning(
                "tokens travel in clear text: add --tls-cert/--tls-key",
                extra=fields(event="insecure_transport"),
            )
        return
    if not config.insecure:
        raise ValueError(
            f"refusing to listen on {config.listen} without --auth-file: anyone who can "
            "reach it could write deployments (pass --insecure to allow it anyway)"
        )
    log.warning(
        "listening on %s with no authentication (--insecure)",
        config.listen,
        extra=fields(event="insecure"),
    )


def server_options(config: Config) -> list[tuple[str, int]]:
    """Message and metadata limits, and keepalive suited to long watch streams."""
    keepalive_ms = int(config.keepalive_seconds * 1000)
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # The soft limit alone rejects only some oversized requests; the hard
        # (absolute) limit at the same size rejects every one.
        ("grpc.max_metadata_size", config.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", config.max_metadata_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def tls_credentials(config: Config) -> grpc.ServerCredentials | None:
    if not config.tls_cert:
        return None
    key = Path(config.tls_key).read_bytes()
    chain = Path(config.tls_cert).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class Server:
    """A running Versioner: the gRPC server, its store, health and metrics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(
            config.database_url,
            sqlite_synchronous=config.sqlite_synchronous,
            readers=config.read_threads,
            project_metrics=not config.skip_metric_projection,
            read_cache=config.read_cache,
            encode=convert.encoded_deployment,
        )
        disable_created_metrics()  # go-grpc-prometheus has no *_created series
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.deployment_metrics = DeploymentMetrics(self.store.database)
        self.health = HealthServicer()
        self.tokens: TokenFile | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http: MetricsServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watch: WatchHub | None = None

    async def start(self) -> None:
        check_exposure(self.config)
        self.tokens = TokenFile(self.config.auth_file) if self.config.auth_file else None
        loop = asyncio.get_running_loop()
        applied = await loop.run_in_executor(None, self.store.open)
        if applied:
            log.info("schema migrated", extra=fields(event="migrated", migrations=applied))
        server = grpc.aio.server(
            interceptors=[
                ObservingInterceptor(
                    GrpcMetrics(self.registry) if self.config.grpc_metrics else None, self.tokens
                )
            ],
            options=server_options(self.config),
        )
        self.watch = WatchHub(
            self.store,
            progress_interval=self.config.progress_interval,
            max_watchers=self.config.max_watchers,
            buffer=self.config.watch_buffer,
            poll_interval=self.config.poll_interval,
        )
        await self.watch.start()
        pb_grpc.add_DeploymentServiceServicer_to_server(
            DeploymentService(self.store, self.watch), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        host = self.config.listen.rpartition(":")[0]
        try:
            credentials = tls_credentials(self.config)
            if credentials is None:
                self.grpc_port = server.add_insecure_port(self.config.listen)
            else:
                self.grpc_port = server.add_secure_port(self.config.listen, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.config.listen}: address in use?") from exc
        await server.start()
        self._grpc = server
        if self.config.metrics_listen.lower() != "off":
            mhost = self.config.metrics_listen.rpartition(":")[0]
            self._metrics_http = MetricsServer(
                self.config.metrics_listen, self.registry, self.deployment_metrics
            )
            self.metrics_port = self._metrics_http.port
        await self._set_health(True)
        self._tasks.append(asyncio.create_task(self._watch_database()))
        if self.config.event_retention_days > 0:
            self._tasks.append(asyncio.create_task(self._compact_periodically()))
        log.info(
            "serving",
            extra=fields(
                event="serving",
                grpc_address=f"{host}:{self.grpc_port}",
                metrics_address=f"{mhost}:{self.metrics_port}" if self.metrics_port else "",
                database=_redacted(self.config.database_url),
            ),
        )

    def reload_tokens(self) -> None:
        """SIGHUP: re-read the auth file; a broken file keeps the old tokens."""
        if self.tokens is None:
            return
        try:
            count = self.tokens.reload()
        except (OSError, ValueError) as exc:
            log.error("auth file not reloaded: %s", exc, extra=fields(event="auth_reload_failed"))
            return
        log.info("auth file reloaded", extra=fields(event="auth_reloaded", tokens=count))

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch_database(self) -> None:
        """Health follows the database: NOT_SERVING while it is unreachable."""
        healthy = True
        while True:
            await asyncio.sleep(self.config.health_interval)
            ok = await self.store.ping()
            if ok != healthy:
                healthy = ok
                await self._set_health(ok)
                log.warning(
                    "database %s",
                    "reachable" if ok else "unreachable",
                    extra=fields(event="database_health", serving=ok),
                )

    async def _compact_periodically(self) -> None:
        """Apply the event retention once at start, then hourly."""
        while True:
            cutoff = now_us() - int(self.config.event_retention_days * 86_400 * 1e6)
            try:
                deleted = await self.store.compact(cutoff)
                if deleted:
                    log.info("compacted events", extra=fields(event="compacted", deleted=deleted))
            except Unavailable as exc:
                log.warning("compaction skipped: %s", exc)
            await asyncio.sleep(3600)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace` seconds), close."""
        grace = self.config.shutdown_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        if self.watch is not None:
            await self.watch.close()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._metrics_http is not None:
            self._metrics_http.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.store.close)
        log.info("stopped", extra=fields(event="stopped"))


def _redacted(url: str) -> str:
    """The database URL without its password, for logs."""
    if "@" in url and ":" in url.split("://", 1)[-1].split("@", 1)[0]:
        scheme, rest = url.split("://", 1)
        userinfo, host = rest.split("@", 1)
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
    return url


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    server = Server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, server.reload_tokens)
    await stop.wait()
    log.info("shutting down", extra=fields(event="shutdown"))
    await server.stop()
