"""Server configuration: flags, each with a VERSIONER_* environment variable.

Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    database_url: str = "sqlite:///versioner.db"
    sqlite_synchronous: str = "NORMAL"
    log_level: str = "info"
    health_interval: float = 2.0
    shutdown_grace: float = 10.0
    progress_interval: float = 5.0
    max_watchers: int = 10_000
    watch_buffer: int = 1_000
    poll_interval: float = 2.0
    read_threads: int = 2
    event_retention_days: float = 0.0
    auth_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    insecure: bool = False
    max_message_bytes: int = 4 * 1024 * 1024
    max_metadata_bytes: int = 16 * 1024
    keepalive_seconds: float = 60.0
    skip_metric_projection: bool = False
    # Governance (docs/DESIGN.md section 6).
    rules_file: str = ""
    approval_sweep_interval: float = 10.0
    # HTTP/JSON API (DESIGN.md section 8)
    http_listen: str = "127.0.0.1:8080"
    # Notifications (DESIGN.md §7)
    secrets_key: str = ""
    allow_private_webhooks: bool = False
    delivery_retention_days: float = 7.0
    notification_timeout: float = 10.0
    notification_retry_base: float = 1.0
    notification_retry_cap: float = 300.0
    notification_retry_window: float = 86_400.0
    notification_lease_seconds: float = 15.0
    # Reliability: how long any database call may take before it fails as UNAVAILABLE.
    database_timeout: float = 5.0
    # Performance: benchmarking switches (DESIGN.md §9)
    read_cache: bool = True
    grpc_metrics: bool = True


HELP = {
    "listen": "gRPC address, host:port (port 0 picks a free port)",
    "metrics_listen": "Prometheus /metrics address, host:port; 'off' disables it",
    "database_url": "sqlite:///relative/path.db, sqlite:////absolute/path.db or "
    "postgresql://user[:password]@host[:port]/database",
    "sqlite_synchronous": "SQLite synchronous mode: NORMAL (survives a crash of the process) "
    "or FULL (also survives power loss)",
    "log_level": "debug, info, warning or error",
    "health_interval": "seconds between database health checks",
    "shutdown_grace": "seconds in-flight calls get to finish on SIGTERM/SIGINT",
    "progress_interval": "seconds between progress messages on an idle or filtered watch",
    "max_watchers": "most concurrent WatchDeployments streams; more get RESOURCE_EXHAUSTED",
    "watch_buffer": "recent events kept for live watchers: one that falls further behind "
    "is cut off (it resumes from its last revision)",
    "poll_interval": "seconds between polls for events written by other replicas",
    "read_threads": "threads (and database connections) serving reads; more than 2 only adds "
    "GIL contention on SQLite (measured), PostgreSQL may gain from a few more",
    "auth_file": "TOML file of token hashes and scopes (see `versioner-server token create`); "
    "without it every call is allowed",
    "tls_cert": "PEM certificate chain for TLS on the gRPC port (and the HTTP port)",
    "tls_key": "PEM private key for --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "insecure": "allow listening beyond loopback without an auth file (not recommended)",
    "max_message_bytes": "largest request or response message accepted",
    "max_metadata_bytes": "largest request metadata (headers) accepted",
    "keepalive_seconds": "ping idle connections this often to detect dead peers (clients may "
    "ping no more often than every 10 s)",
    "skip_metric_projection": "benchmarking only: do not maintain the deployment-metric "
    "tables (events recorded meanwhile are missing from the metrics for good)",
    "rules_file": "TOML file of deployment rules (approval, freeze, flow, concurrency); "
    "reloaded on SIGHUP, a broken file keeps the old rules (check one with "
    "`versioner-server rules check FILE`)",
    "approval_sweep_interval": "seconds between marking expired approval requests EXPIRED "
    "(an expired request never lets anything through, swept or not)",
    "http_listen": "HTTP/JSON API address, host:port (the seed's REST API: POST "
    "/deployment-events/, /deployments/..., /docs); 'off' disables it",
    "event_retention_days": "delete events older than this many days (0 keeps them forever); "
    "deployments, current state and metrics are kept, but watchers cannot resume from "
    "before the oldest kept event and event_id replays are recognized only within it",
    # Notifications (DESIGN.md §7)
    "secrets_key": "Fernet key encrypting webhook secrets in the database (prefer the "
    "environment variable); without it secrets are stored in clear",
    "allow_private_webhooks": "allow webhook URLs resolving to loopback, private, link-local "
    "or metadata addresses (refused by default)",
    "delivery_retention_days": "keep the notification delivery log this many days",
    "notification_timeout": "seconds a webhook receiver gets to answer",
    "notification_retry_base": "seconds before the first retry of a failed delivery (doubling)",
    "notification_retry_cap": "longest wait between two retries of a delivery, in seconds",
    "notification_retry_window": "seconds after which a delivery still failing is given up",
    "notification_lease_seconds": "a replica's hold on a subscription expires this long after "
    "its last renewal (renewed every third of it); another replica then takes over",
    # Reliability
    "database_timeout": "seconds any database call may take (connect, statement, write "
    "batch); then it fails with UNAVAILABLE and health turns NOT_SERVING (0: no limit)",
    # Performance: benchmarking switches (DESIGN.md §9)
    "read_cache": "answer repeated GetCurrent/ListHistory questions from encoded answers while "
    "the head revision is unchanged (--no-read-cache: benchmarking, every read cold)",
    "grpc_metrics": "count and time every call in grpc_server_* metrics (--no-grpc-metrics: "
    "benchmarking, the interceptor still logs and maps errors)",
}


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="versioner-server",
        description="Versioner gRPC: records deployments, answers what runs where, streams "
        "them live and exports Prometheus metrics.",
        epilog="Every option can also be set by its environment variable "
        "(VERSIONER_LISTEN, VERSIONER_DATABASE_URL, ...); a flag wins over the variable.",
    )
    for f in fields(Config):
        var = "VERSIONER_" + f.name.upper()
        default = env.get(var, f.default)
        kind: Callable[[Any], Any] = type(f.default)  # every field has a plain default
        if kind is bool:
            truthy = str(default).strip().lower() in ("1", "true", "yes", "on")
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=truthy,
                help=f"{HELP[f.name]} [{var}=true]",
            )
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            default=kind(default),
            metavar=f.name.split("_")[-1].upper(),
            help=f"{HELP[f.name]} [{var}; default: {f.default}]",
        )
    args = parser.parse_args(argv)
    cfg = Config(**vars(args))
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    return cfg
