"""Wiring: builds the gRPC server, starts it, and drains it on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable
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
from versioner.v1 import governance_service_pb2 as gpb
from versioner.v1 import governance_service_pb2_grpc as gpb_grpc
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from versioner_grpc import convert
from versioner_grpc.auth import TokenFile
from versioner_grpc.config import Config
from versioner_grpc.domain.clock import now_us
from versioner_grpc.domain.errors import Unavailable
from versioner_grpc.domain.notifications import RetryPolicy
from versioner_grpc.governance import audit
from versioner_grpc.governance import rules as governance_rules
from versioner_grpc.governance_service import GovernanceService
from versioner_grpc.interceptors import ObservingInterceptor
from versioner_grpc.logs import fields
from versioner_grpc.metrics.deployments import DeploymentMetrics
from versioner_grpc.metrics.governance import GovernanceMetrics
from versioner_grpc.metrics.grpc_metrics import GrpcMetrics
from versioner_grpc.metrics.http import MetricsServer
from versioner_grpc.metrics.http_metrics import HttpMetrics
from versioner_grpc.metrics.notifications import NotificationMetrics
from versioner_grpc.notification_service import NotificationService
from versioner_grpc.notify.engine import NotificationEngine
from versioner_grpc.notify.secrets import SecretBox
from versioner_grpc.notify.sender import Sender
from versioner_grpc.rest.app import create_app
from versioner_grpc.rest.governance import governance_routes
from versioner_grpc.rest.notifications import notification_routes
from versioner_grpc.rest.serve import HttpServer
from versioner_grpc.service import DeploymentService, add_to_server
from versioner_grpc.store.store import Store
from versioner_grpc.watch import WatchHub

log = logging.getLogger("versioner.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DeploymentService"].full_name
GOVERNANCE_SERVICE_NAME = gpb.DESCRIPTOR.services_by_name["GovernanceService"].full_name
NOTIFICATION_SERVICE_NAME = npb.DESCRIPTOR.services_by_name["NotificationService"].full_name
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def check_exposure(config: Config) -> None:
    """Secure by default: beyond loopback only with an auth file, or --insecure.

    Applies to the gRPC and the HTTP address alike: both take the same writes.
    """
    addresses = [config.listen]
    if config.http_listen.lower() != "off":
        addresses.append(config.http_listen)
    exposed = [a for a in addresses if not _loopback(a.rpartition(":")[0])]
    if not exposed:
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
            f"refusing to listen on {exposed[0]} without --auth-file: anyone who can "
            "reach it could write deployments (pass --insecure to allow it anyway)"
        )
    log.warning(
        "listening on %s with no authentication (--insecure)",
        ", ".join(exposed),
        extra=fields(event="insecure"),
    )


def _loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


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
            timeout=config.database_timeout,
            read_cache=config.read_cache,
            encode=convert.encoded_deployment,
        )
        # go-grpc-prometheus has no *_created series.
        # prometheus_client leaves this function unannotated:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.deployment_metrics = DeploymentMetrics(self.store)
        self.governance_metrics = GovernanceMetrics(self.registry, self.store)
        self.store.gate.count = self.governance_metrics.count
        self.health = HealthServicer()
        self.tokens: TokenFile | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self.http_port = 0
        self.serving = False  # what /health answers: the gRPC health status, as a flag
        self._grpc: grpc.aio.Server | None = None
        self._http: HttpServer | None = None
        self._metrics_http: MetricsServer | None = None
        self._tasks: list[asyncio.Task[object]] = []
        self.watch: WatchHub | None = None
        self.secrets = SecretBox(config.secrets_key)
        self.notification_metrics = NotificationMetrics(
            self.registry, lambda: self.store.notifications.lag_seconds_sync(now_us())
        )
        self.notify: NotificationEngine | None = None

    async def start(self) -> None:
        check_exposure(self.config)
        self.tokens = TokenFile(self.config.auth_file) if self.config.auth_file else None
        if self.config.rules_file:
            self.store.gate.rules = governance_rules.load(self.config.rules_file)
        loop = asyncio.get_running_loop()
        applied = await loop.run_in_executor(None, self.store.open)
        if applied:
            log.info("schema migrated", extra=fields(event="migrated", migrations=applied))
        if self.config.rules_file:
            await self._rules_loaded(self.store.gate.rules, "start")
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
        service = DeploymentService(self.store, self.watch)
        add_to_server(service, server)
        governance = GovernanceService(self.store, self.governance_metrics.approved_after)
        gpb_grpc.add_GovernanceServiceServicer_to_server(governance, server)
        self.notify = NotificationEngine(
            self.store,
            box=self.secrets,
            sender=Sender(
                timeout=self.config.notification_timeout,
                allow_private=self.config.allow_private_webhooks,
            ),
            metrics=self.notification_metrics,
            policy=RetryPolicy(
                base=self.config.notification_retry_base,
                cap=self.config.notification_retry_cap,
                window=self.config.notification_retry_window,
            ),
            lease_seconds=self.config.notification_lease_seconds,
            poll_interval=self.config.poll_interval,
            retention_days=self.config.delivery_retention_days,
        )
        notifications = NotificationService(
            self.store.notifications,
            self.notify,
            self.secrets,
            allow_private=self.config.allow_private_webhooks,
        )
        npb_grpc.add_NotificationServiceServicer_to_server(notifications, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                GOVERNANCE_SERVICE_NAME,
                NOTIFICATION_SERVICE_NAME,
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
        if self.config.http_listen.lower() != "off":
            app = create_app(
                service,
                tokens=self.tokens,
                metrics=HttpMetrics(self.registry),
                serving=lambda: self.serving,
                max_body=self.config.max_message_bytes,
                extra_routes=[
                    *governance_routes(governance),
                    *notification_routes(notifications),
                ],
            )
            self._http = HttpServer(app, self.config)  # binds now: a taken port fails early
            self.http_port = self._http.port
        await server.start()
        self._grpc = server
        await self.notify.start()
        if self.config.metrics_listen.lower() != "off":
            mhost = self.config.metrics_listen.rpartition(":")[0]
            self._metrics_http = MetricsServer(
                self.config.metrics_listen, self.registry, self.deployment_metrics
            )
            self.metrics_port = self._metrics_http.port
        if self._http is not None:
            await self._http.start()
        await self._set_health(True)
        self._tasks.append(asyncio.create_task(self._watch_database()))
        self._tasks.append(asyncio.create_task(self._expire_approvals()))
        if self.config.event_retention_days > 0:
            self._tasks.append(asyncio.create_task(self._compact_periodically()))
        log.info(
            "serving",
            extra=fields(
                event="serving",
                grpc_address=f"{host}:{self.grpc_port}",
                metrics_address=f"{mhost}:{self.metrics_port}" if self.metrics_port else "",
                http_address=self.config.http_listen.rpartition(":")[0] + f":{self.http_port}"
                if self._http
                else "",
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

    def reload(self) -> None:
        """SIGHUP: re-read the auth file and the rules file."""
        self.reload_tokens()
        if self.config.rules_file:
            self._tasks.append(asyncio.get_running_loop().create_task(self.reload_rules()))

    async def reload_rules(self) -> bool:
        """Re-read the rules file; a broken file keeps the old rules and logs an error."""
        try:
            loaded = governance_rules.load(self.config.rules_file)
        except governance_rules.RulesError as exc:
            log.error("rules not reloaded: %s", exc, extra=fields(event="rules_reload_failed"))
            return False
        self.store.gate.rules = loaded
        await self._rules_loaded(loaded, "reload")
        return True

    async def _rules_loaded(self, loaded: governance_rules.RuleSet, why: str) -> None:
        details = {
            "path": loaded.source,
            "sha256": loaded.sha256,
            "rules": [r.name for r in loaded.rules],
            "trigger": why,
        }
        try:
            await self.store.audit(now_us(), audit.RULES_RELOADED, details)
        except Unavailable as exc:
            log.warning("rules load not audited: %s", exc)
        log.info(
            "rules loaded",
            extra=fields(event="rules_loaded", rules=len(loaded), sha256=loaded.sha256),
        )

    async def _expire_approvals(self) -> None:
        """Mark approval requests EXPIRED once past their expire time (audited once)."""
        while True:
            await asyncio.sleep(self.config.approval_sweep_interval)
            try:
                await self.store.expire_approvals(now_us())
            except Unavailable as exc:
                log.warning("approval expiry skipped: %s", exc)

    async def _set_health(self, serving: bool) -> None:
        self.serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME, GOVERNANCE_SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch_database(self) -> None:
        """Health follows the database: NOT_SERVING while it is unreachable, does not
        answer within --database-timeout, or refuses writes (disk full, read-only)."""
        healthy = True
        limit = self.config.database_timeout or None
        check: asyncio.Future[bool] | None = None
        while True:
            await asyncio.sleep(self.config.health_interval)
            if check is None:  # one check at a time: a hung one is not piled onto
                probe = self.store.probe_write if self.store.write_problem else self.store.ping
                check = probe()
            done, _ = await asyncio.wait({check}, timeout=limit)
            if check in done:
                ok = not check.cancelled() and check.exception() is None and check.result()
                check = None
            else:
                ok = False  # no answer within the limit: the store is hung
            ok = ok and not self.store.write_problem
            if ok != healthy:
                healthy = ok
                await self._set_health(ok)
                log.warning(
                    "database %s",
                    "healthy" if ok else f"unhealthy: {self.store.write_problem or 'unreachable'}",
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
        self.serving = False
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        if self.watch is not None:
            await self.watch.close()  # ends gRPC and SSE watch streams alike
        draining: list[Awaitable[None]] = []
        if self._http is not None:
            draining.append(self._http.stop(grace))
        if self._grpc is not None:
            draining.append(self._grpc.stop(grace))
        await asyncio.gather(*draining)  # both APIs drain at once, within one grace
        if self.notify is not None:
            await self.notify.close()
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
        loop.add_signal_handler(signal.SIGHUP, server.reload)
    await stop.wait()
    log.info("shutting down", extra=fields(event="shutdown"))
    await server.stop()
