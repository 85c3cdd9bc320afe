"""The readable tables, the targets from the issues, and the JSON file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# Issue 2: at 64 in flight; RecordEvent on SQLite.
UNARY_TARGETS = {"RecordEvent": 0.5, "GetCurrent": 0.8, "ListHistory": 0.5}
TARGET_INFLIGHT = 64
SCALE_TARGET = 0.9  # GetCurrent / ListHistory at the large size vs the small one
DELIVERY_TARGET = 0.6  # issue 3, at the most watchers
RECORD_WATCHED_TARGET = 0.5  # issue 13, with every watcher receiving every event ...
DELIVERY_P99_TARGET_MS = 1000  # ... within this p99 (end to end)
RSS_TARGET_MB = 300
METRICS_TARGET = 0.9  # issue 4
HTTP_TARGET = 0.5  # issue 12: POST /deployment-events/ vs the null HTTP service


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _name(rpc: str) -> str:
    """GetCurrent:hot -> GetCurrent (cached)."""
    return rpc.replace(":hot", " (cached)")


def verdict(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return f"{'≥' if higher else '≤'}{target:g} n/a"
    ok = value >= target if higher else value <= target
    return f"{'≥' if higher else '≤'}{target:g} {'PASS' if ok else 'MISS'}"


class Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, value: float | None, target: float, higher: bool = True) -> str:
        text = verdict(value, target, higher)
        self.items.append(
            {"check": name, "value": value, "target": target, "result": text.split()[-1]}
        )
        return text


def render(results: dict[str, Any]) -> str:
    checks = Checks()
    m = results["machine"]
    parts = [
        f"Versioner bench, {results['mode']} mode, {results['started']}, git {results['git']}",
        f"machine: {m['nproc']} x {m['cpu_model']}, {m['memory_gb']} GB, Python {m['python']}, "
        f"load average at start {' '.join(m['loadavg'])}",
        "ratios are Versioner / null service; latencies in ms (null/versioner); cores = CPU "
        "cores busy during the measured window: server (null/versioner), db (PostgreSQL "
        "backends serving Versioner), client (load process), foreign (everything else on the "
        "machine: other people's work, i.e. noise); CPU us/call = (server + db) CPU per call, "
        "cpu ratio = null's / Versioner's: a noise-resistant cross-check of the ratio",
    ]
    revisions = results.get("server_revisions", [])
    if len(revisions) > 1:
        parts.append(
            "WARNING: the server code changed during this run (Versioner processes started from "
            f"{', '.join(revisions)}): figures from different datasets are not comparable"
        )
    for backend, data in results["backends"].items():
        if "skipped" in data:
            parts.append(f"\n{backend}: skipped ({data['skipped']})")
            continue
        sizes = data["sizes"]
        for label, size in sizes.items():
            if "unary" in size:
                parts.append(f"\n{backend}, {label} deployments stored: unary RPCs")
                parts.append(_unary_table(backend, label, size["unary"], checks))
            if "failed" in size:
                parts.append(f"\n{backend}, {label}: FAILED {size['failed']}")
        parts.extend(_scale(backend, sizes, checks))
        for label, size in sizes.items():
            if "http" in size:
                parts.append(_http(backend, label, size["http"], checks))
            if "watch" in size:
                parts.append(_watch(backend, label, size["watch"], checks))
            if "leak" in size:
                parts.append(_leak(backend, label, size["leak"]))
            if "metrics" in size:
                parts.append(_metrics(backend, label, size["metrics"], checks))
            if "rules" in size and "cells" in size["rules"]:
                parts.append(_rules(backend, label, size["rules"], checks))
    parts.append("\nseeding (bulk SQL, server stopped)")
    rows = []
    for backend, data in results["backends"].items():
        for label, size in data.get("sizes", {}).items():
            seeded = size.get("seeding")
            if not seeded:
                continue
            rows.append(
                [
                    backend,
                    label,
                    seeded["rows"].get("event", 0),
                    sum(seeded["rows"].values()),
                    seeded["seconds"],
                    round(sum(seeded["rows"].values()) / max(seeded["seconds"], 1e-9)),
                    seeded.get("db_mb"),
                    size.get("start_seconds"),
                ]
            )
    parts.append(
        table(["backend", "size", "events", "rows", "seconds", "rows/s", "DB MB", "start s"], rows)
    )
    parts.append("\ntargets")
    parts.append(
        table(
            ["check", "value", "target", "result"],
            [
                [
                    c["check"],
                    "-" if c["value"] is None else f"{c['value']:.3g}",
                    c["target"],
                    c["result"],
                ]
                for c in checks.items
            ],
        )
    )
    results["checks"] = checks.items
    return "\n".join(parts)


def _unary_table(backend: str, label: str, rows: list[dict[str, Any]], checks: Checks) -> str:
    out = []
    for row in rows:
        n, v, rpc = row["null"], row["versioner"], row["rpc"]
        target = ""
        applies = (
            row["inflight"] == TARGET_INFLIGHT
            and rpc in UNARY_TARGETS
            and (rpc != "RecordEvent" or backend == "sqlite")
        )
        if applies:
            target = checks.add(
                f"{rpc} vs null, {backend} {label}, {TARGET_INFLIGHT} in flight",
                row["ratio"],
                UNARY_TARGETS[rpc],
            )
        errors = sum(v["errors"].values()) + sum(n["errors"].values())
        out.append(
            [
                _name(rpc),
                row["inflight"],
                n["calls_per_s"],
                v["calls_per_s"],
                row["ratio"],
                target,
                f"{n['p50_ms']:.2f}/{v['p50_ms']:.2f}",
                f"{n['p99_ms']:.2f}/{v['p99_ms']:.2f}",
                f"{n['cpu_us_per_call']:.0f}/{v['cpu_us_per_call']:.0f}",
                row.get("cpu_ratio"),
                f"{n['server_cores']:.2f}/{v['server_cores']:.2f}",
                v.get("db_cores") if backend == "postgres" else None,
                v["client_cores"],
                v["foreign_cores"],
                errors,
            ]
        )
    return table(
        [
            "rpc",
            "in flight",
            "null/s",
            "versioner/s",
            "ratio",
            "target",
            "p50 ms",
            "p99 ms",
            "CPU us/call",
            "cpu ratio",
            "server cores",
            "db cores",
            "client cores",
            "foreign",
            "errors",
        ],
        out,
    )


def _scale(backend: str, sizes: dict[str, Any], checks: Checks) -> list[str]:
    labels = [label for label, size in sizes.items() if "unary" in size]
    if len(labels) < 2:
        return []
    small, large = labels[0], labels[-1]
    by = {label: {(r["rpc"], r["inflight"]): r for r in sizes[label]["unary"]} for label in labels}
    rows = []
    for (rpc, inflight), row in by[small].items():
        if (rpc, inflight) not in by[large]:
            continue
        big = by[large][(rpc, inflight)]["versioner"]
        a, b = row["versioner"]["calls_per_s"], big["calls_per_s"]
        value = round(b / a, 3) if a else None
        target = ""
        if inflight == TARGET_INFLIGHT and rpc in ("GetCurrent", "ListHistory"):
            target = checks.add(
                f"{rpc} {large} vs {small}, {backend}, {inflight} in flight", value, SCALE_TARGET
            )
        rows.append(
            [
                _name(rpc),
                inflight,
                a,
                b,
                value,
                target,
                f"{row['versioner']['p99_ms']:.2f}/{big['p99_ms']:.2f}",
            ]
        )
    return [
        f"\n{backend}: Versioner's throughput with {large} deployments stored vs {small} "
        "(target for the reads only)",
        table(["rpc", "in flight", f"{small}/s", f"{large}/s", "ratio", "target", "p99 ms"], rows),
    ]


def _watch(backend: str, label: str, watch: dict[str, Any], checks: Checks) -> str:
    most = watch["max_watchers"]
    rows = []
    for row in watch["fanout"]:
        for phase in ("light", "heavy"):
            n, v = row["null"][phase], row["versioner"][phase]
            value = row["light_ratio" if phase == "light" else "delivery_ratio"]
            target = ""
            if row["watchers"] == most and phase == "heavy":
                target = checks.add(
                    f"watch delivery vs null, {backend}, {most} watchers", value, DELIVERY_TARGET
                )
            rows.append(
                [
                    row["watchers"],
                    phase,
                    f"{n['recorded_per_s']:.0f}/{v['recorded_per_s']:.0f}",
                    n["delivered_per_s"],
                    v["delivered_per_s"],
                    value,
                    target,
                    f"{n['p50_ms']:.1f}/{v['p50_ms']:.1f}",
                    f"{n['p99_ms']:.1f}/{v['p99_ms']:.1f}",
                    f"{n['cutoffs']}/{v['cutoffs']}",
                    f"{n['cpu_us_per_msg']:.0f}/{v['cpu_us_per_msg']:.0f}",
                    f"{n['server_cores']:.2f}/{v['server_cores']:.2f}",
                    v["watchers_cores"],
                    v["rss_mb"],
                    v["foreign_cores"],
                ]
            )
    top = watch["fanout"][-1] if watch["fanout"] else None
    lines = [
        f"\n{backend}, {label}: watch fan-out (live streams, no filters; events recorded at a "
        "steady rate; e2e = RecordEvent sent -> event received; null/versioner)",
        table(
            [
                "watchers",
                "window",
                "recorded/s",
                "null deliv/s",
                "vers deliv/s",
                "ratio",
                "target",
                "e2e p50 ms",
                "e2e p99 ms",
                "cut-offs",
                "CPU us/msg",
                "server cores",
                "client cores",
                "RSS MB",
                "foreign",
            ],
            rows,
        ),
    ]
    if top is not None:
        v = top["versioner"]
        rss_text = checks.add(
            f"server RSS MB, {backend}, {most} watchers", v["rss_max_mb"], RSS_TARGET_MB, False
        )
        lines.append(
            f"server RSS: {v['rss_before_mb']} MB before, {v['rss_connected_mb']} MB with "
            f"{most} watchers connected, {v['rss_max_mb']} MB at most while delivering "
            f"({rss_text}); null service: {top['null']['rss_max_mb']} MB at most"
        )
        record_rows = []
        for name in ("null", "versioner"):
            side = top[name]
            if "record_watched" not in side:
                continue
            target = ""
            if name == "versioner":
                target = checks.add(
                    f"RecordEvent with {most} watchers vs none, {backend}",
                    side["record_ratio"],
                    RECORD_WATCHED_TARGET,
                )
                if "e2e" in side["record_watched"]:
                    checks.add(
                        f"delivery p99 ms with {most} watchers under RecordEvent, {backend}",
                        side["record_watched"]["e2e"]["p99_ms"],
                        DELIVERY_P99_TARGET_MS,
                        False,
                    )
            none, watched = side["record_none"], side["record_watched"]
            record_rows.append(
                [
                    name,
                    none["calls_per_s"],
                    watched["calls_per_s"],
                    side["record_ratio"],
                    target,
                    f"{none['p99_ms']:.1f}/{watched['p99_ms']:.1f}",
                    watched.get("delivered_per_s"),
                    watched.get("delivered_share", "-"),
                    (
                        f"{watched['e2e']['p50_ms']:.0f}/{watched['e2e']['p99_ms']:.0f}"
                        if "e2e" in watched
                        else "-"
                    ),
                    watched.get("cutoffs"),
                    watched["rss_mb"],
                    watched["foreign_cores"],
                ]
            )
        if record_rows:
            inflight = top["versioner"]["record_none"]["inflight"]
            lines.append(
                f"\n{backend}, {label}: RecordEvent, {inflight} in flight (closed loop), "
                f"with {most} watchers vs none"
            )
            lines.append(
                table(
                    [
                        "server",
                        "none/s",
                        f"{most} watchers/s",
                        "ratio",
                        "target",
                        "p99 ms",
                        "delivered/s",
                        "share",
                        "e2e p50/p99 ms",
                        "cut-offs",
                        "RSS MB",
                        "foreign",
                    ],
                    record_rows,
                )
            )
    return "\n".join(lines)


def _leak(backend: str, label: str, leak: dict[str, Any]) -> str:
    rss = " -> ".join(f"{r:.1f}" for r in leak["rss_mb"])
    rounds = ", ".join(f"{r['per_s']:.0f}/s" for r in leak["rounds"])
    return (
        f"\n{backend}, {label}: watch connect/read one/cancel, {len(leak['rounds'])} round(s) of "
        f"{leak['cycles_per_round']:,} after {leak['warmup_cycles']:,} warm-up cycles ({rounds}): "
        f"server RSS {rss} MB (growth {leak['growth_mb']:+.1f} MB); WatchDeployments calls "
        f"started {leak.get('watch_calls_started')}, ended {leak.get('watch_calls_handled')}"
    )


def _http(backend: str, label: str, data: dict[str, Any], checks: Checks) -> str:
    rows = []
    for row in data["post"]:
        n, v = row["null"], row["versioner"]
        target = ""
        if row["inflight"] == max(r["inflight"] for r in data["post"]):
            target = checks.add(
                f"HTTP POST /deployment-events/ vs null, {row['inflight']} in flight, "
                f"{backend} {label}",
                row["ratio"],
                HTTP_TARGET,
            )
        rows.append(
            [
                row["inflight"],
                n["calls_per_s"],
                v["calls_per_s"],
                row["ratio"],
                row["cpu_ratio"],
                f"{n['p50_ms']:.2f}/{v['p50_ms']:.2f}",
                f"{n['p99_ms']:.2f}/{v['p99_ms']:.2f}",
                v["client_cores"],
                target,
            ]
        )
    m = data["mixed"]
    return "\n".join(
        [
            f"\n{backend}, {label}: HTTP API, POST /deployment-events/ (null = same FastAPI, "
            "middleware and uvicorn, a handler that does nothing)",
            table(
                [
                    "in flight",
                    "null/s",
                    "versioner/s",
                    "ratio",
                    "cpu ratio",
                    "p50 ms",
                    "p99 ms",
                    "client cores",
                    "target",
                ],
                rows,
            ),
            f"RecordEvent over gRPC, {m['inflight']} in flight: alone "
            f"{m['grpc_alone']['calls_per_s']:.0f}/s, while {m['inflight']} HTTP posts are in "
            f"flight {m['grpc_with_http']['calls_per_s']:.0f}/s (+ {m['http_per_s']:.0f}/s over "
            f"HTTP): ratio {m['ratio']}; gRPC + HTTP together / gRPC alone {m['combined_ratio']}",
        ]
    )


def _metrics(backend: str, label: str, metrics: dict[str, Any], checks: Checks) -> str:
    sc, rec = metrics["scrape"], metrics["record"]
    target = checks.add(
        f"RecordEvent metrics on vs {rec['baseline']}, {backend} {label}",
        rec["ratio"],
        METRICS_TARGET,
    )
    rows = [
        [
            c["variant"],
            c["calls_per_s"],
            f"{c['p50_ms']:.1f}",
            f"{c['p99_ms']:.1f}",
            c.get("scrapes", 0),
            c["server_cores"],
            c["foreign_cores"],
        ]
        for c in rec["cells"]
    ]
    return "\n".join(
        [
            f"\n{backend}, {label}: metrics ({1000:,} product x environment pairs)",
            f"scrape of /metrics (gzip, as Prometheus asks): {sc['series']:,} series, "
            f"{sc['bytes'] / 1e6:.2f} MB on the wire "
            f"({sc.get('uncompressed_bytes', sc['bytes']) / 1e6:.2f} MB of text); after a write "
            f"{sc['seconds_median'] * 1000:.0f} ms median / {sc['seconds_max'] * 1000:.0f} ms max "
            f"over {sc['scrapes']} scrapes (collector's own reading "
            f"{(sc['collector_seconds_median'] or 0) * 1000:.0f} ms); repeated with no write "
            f"in between {sc.get('hot_seconds_median', 0) * 1000:.0f} ms",
            f"RecordEvent, {rec['inflight']} in flight, in this order (on = /metrics served and "
            f"scraped from the start of the window, every {rec.get('scrape_interval', 5):g} s):",
            table(
                ["metrics", "calls/s", "p50 ms", "p99 ms", "scrapes", "server cores", "foreign"],
                rows,
            ),
            f"on / {rec['baseline']}: {rec['ratio']} ({target}); on / off (no endpoint): "
            f"{rec['ratio_endpoint_only']}"
            + (
                f"; on / off (nothing: no projection, no interceptor metrics): "
                f"{rec['ratio_nothing']}"
                if rec.get("ratio_nothing")
                else ""
            ),
        ]
    )


RULES_TARGET = 0.9


def _rules(backend: str, label: str, rules: dict[str, Any], checks: Checks) -> str:
    target = checks.add(
        f"RecordEvent 10 rules vs none, {backend} {label}", rules["ratio"], RULES_TARGET
    )
    rows = [
        [c["variant"], c["calls_per_s"], f"{c['p50_ms']:.1f}", f"{c['p99_ms']:.1f}",
         c["cpu_us_per_call"], c["server_cores"], c["foreign_cores"]]
        for c in rules["cells"]
    ]  # fmt: skip
    return "\n".join(
        [
            f"\n{backend}, {label}: RecordEvent with a 10-rule governance file "
            "(bench/governance.py)",
            table(
                ["rules", "calls/s", "p50 ms", "p99 ms", "CPU us/call", "server cores", "foreign"],
                rows,
            ),
            f"10 rules / no rules: {rules['ratio']} ({target}); from CPU per call: "
            f"{rules.get('cpu_ratio')}",
        ]
    )


def write(results: dict[str, Any], text: str, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    json_path = directory / f"bench-{results['mode']}-{stamp}.json"
    text_path = json_path.with_suffix(".txt")
    json_path.write_text(json.dumps(results, indent=2, default=str))
    text_path.write_text(text + "\n")
    return json_path, text_path
