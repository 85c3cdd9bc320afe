"""Deployment metrics, rendered from the store's projection at scrape time.

Nothing is counted in process memory: every number comes from tables written in
the events' transactions, so replicas agree, restarts lose nothing and late
events are included. Versions appear only in versioner_current_version_info.

The text is rendered here rather than through prometheus_client's metric
families: with 1,000 product-environment pairs a scrape holds ~100k samples,
and building them as library objects took a second of CPU (and the GIL) per
scrape; direct rendering takes a fraction of that. The store caches the result by
its head revision, since the projection changes only when an event does.
"""

from __future__ import annotations

import platform
import time
from collections import defaultdict

from versioner_grpc import __version__
from versioner_grpc.domain.errors import Unavailable
from versioner_grpc.domain.model import TERMINAL, EnvironmentType, Status
from versioner_grpc.store import projection
from versioner_grpc.store.reads import MetricRows
from versioner_grpc.store.store import Store

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
STATUS = {s: s.name.lower() for s in Status}
ENV_TYPE = {t: t.name.lower() for t in EnvironmentType}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _header(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


class DeploymentMetrics:
    """Renders the deployment metric families (Prometheus text format 0.0.4)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def exposition(self) -> str:
        started = time.perf_counter()
        try:
            body = self.store.metrics_text(render)
            up = 1
        except Unavailable:
            body, up = "", 0
        lines: list[str] = []
        _header(lines, "versioner_store_up", "gauge", "1 when this scrape could read the database.")
        lines.append(f"versioner_store_up {up}")
        _header(
            lines,
            "versioner_store_writable",
            "gauge",
            "0 while writes fail for lack of space or a read-only database, else 1.",
        )
        lines.append(f"versioner_store_writable {0 if self.store.write_problem else 1}")
        _header(lines, "versioner_build_info", "gauge", "Versioner server build: always 1.")
        lines.append(
            f'versioner_build_info{{python_version="{platform.python_version()}",'
            f'version="{__version__}"}} 1'
        )
        _header(
            lines,
            "versioner_scrape_duration_seconds",
            "gauge",
            "Time this scrape spent reading and rendering deployment metrics.",
        )
        lines.append(f"versioner_scrape_duration_seconds {time.perf_counter() - started}")
        return body + "\n".join(lines) + "\n"


def render(rows: MetricRows) -> str:
    """The deployment metric families from the projection rows."""
    counters, buckets, places = rows.counters, rows.buckets, rows.places
    where = {(p, e): f'environment="{_escape(e)}",product="{_escape(p)}"' for p, e, *_ in places}
    env_types = {(p, e): ENV_TYPE[EnvironmentType(t)] for p, e, t, _, _ in places}
    # Every known place exports every terminal status and its rollbacks, at 0 until
    # the first one: rate() cannot see the increment that creates a series.
    deployments = {(p, e, int(s)): 0 for (p, e) in where for s in sorted(TERMINAL)}
    rollbacks = dict.fromkeys(where, 0)
    last: dict[tuple[str, str, int], int] = {}
    sums: dict[tuple[str, str, str, int], tuple[int, float]] = {}
    for product, env, metric, status, count, total, last_time in counters:
        if (product, env) not in where:
            continue
        if metric == projection.DEPLOYMENTS:
            deployments[(product, env, status)] = count
            last[(product, env, status)] = last_time
        elif metric == projection.ROLLBACKS:
            rollbacks[(product, env)] = count
        elif metric in HISTOGRAMS:
            sums[(metric, product, env, status)] = (count, total)
    per_bucket: dict[tuple[str, str, str, int], dict[int, int]] = defaultdict(dict)
    for product, env, metric, status, bucket, count in buckets:
        per_bucket[(metric, product, env, status)][bucket] = count

    lines: list[str] = []
    name = "versioner_deployments_total"
    _header(lines, name, "counter", "Deployments that reached a terminal status.")
    for (product, env, status), count in sorted(deployments.items()):
        lines.append(
            f'{name}{{{where[(product, env)]},environment_type="{env_types[(product, env)]}",'
            f'status="{STATUS[Status(status)]}"}} {count}'
        )
    name = "versioner_last_deployment_timestamp_seconds"
    _header(lines, name, "gauge", "End time of the newest deployment that ended with this status.")
    for (product, env, status), end in sorted(last.items()):
        lines.append(
            f'{name}{{{where[(product, env)]},status="{STATUS[Status(status)]}"}} {end / 1e6}'
        )
    name = "versioner_rollbacks_total"
    _header(
        lines,
        name,
        "counter",
        "Completed deployments of an earlier version than the one running: a version that "
        "had completed there before, other than the current one.",
    )
    for place, count in sorted(rollbacks.items()):
        lines.append(f"{name}{{{where[place]}}} {count}")
    name = "versioner_deployments_in_progress"
    _header(lines, name, "gauge", "Deployments pending or started, not yet ended.")
    for product, env, _, busy, _ in places:
        lines.append(f"{name}{{{where[(product, env)]}}} {busy}")
    name = "versioner_current_version_info"
    _header(lines, name, "gauge", "The version currently deployed (last completed) per place: 1.")
    for product, env, _, _, version in places:
        if version is not None:
            lines.append(
                f'{name}{{{where[(product, env)]},environment_type="{env_types[(product, env)]}",'
                f'version="{_escape(version)}"}} 1'
            )
    for metric, (name, help_text) in HISTOGRAMS.items():
        _header(lines, name, "histogram", help_text)
        bounds = [f"{float(b)}" for b in projection.BUCKETS[metric]]
        for key in sorted(k for k in sums if k[0] == metric):
            _, product, env, status = key
            count, total = sums[key]
            labels = where[(product, env)]
            if metric == projection.DURATION:
                labels += f',status="{STATUS[Status(status)]}"'
            counts = per_bucket.get(key, {})
            running = 0
            for index, bound in enumerate(bounds):
                running += counts.get(index, 0)
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
            lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {count}')
            lines.append(f"{name}_sum{{{labels}}} {total}")
            lines.append(f"{name}_count{{{labels}}} {count}")
    return "\n".join(lines) + "\n"
