"""The benchmark driver: servers, datasets, suites, report."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import governance, options, procs, report, seed
from bench import notify as notify_bench
from bench.http_suite import http_suite
from bench.options import size_label
from bench.runner import LoadPool
from bench.stats import ratio
from bench.suites import (
    Settings,
    leak_check,
    record_metrics_cell,
    scrape_cost,
    unary_suite,
    watch_suite,
)

_BEGAN = time.monotonic()


def _say(text: str) -> None:
    print(text, flush=True)


def _section(text: str) -> None:
    _say(f"\n== {text}  [{time.monotonic() - _BEGAN:.0f} s]")


class Run:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="versioner-bench-"))
        self.logs = 0
        self.settings = Settings(
            seconds=args.seconds,
            warmup=args.warmup,
            concurrency=args.concurrency,
            rpcs=args.rpcs,
            hot_concurrency=args.hot_concurrency,
            repeat=args.repeat,
            watchers=args.watchers,
            watch_light=args.watch_light,
            watch_light_rate=args.watch_light_rate,
            watch_heavy=args.watch_heavy,
            watch_heavy_rate=args.watch_heavy_rate,
            watch_record_inflight=args.watch_record_inflight,
            cycles=args.cycles,
            cycle_rounds=args.cycle_rounds,
            cycle_concurrency=args.cycle_concurrency,
            scrapes=args.scrapes,
            scrape_interval=args.scrape_interval,
            metrics_seconds=args.metrics_seconds,
            metrics_inflight=args.metrics_inflight,
        )
        self.pg = procs.PostgresDatabases(args.postgres_url)
        self.live: list[procs.ServerProc] = []
        self.revisions: list[str] = []  # the code each Versioner process started from

    def log_path(self, name: str) -> Path:
        self.logs += 1
        return self.tmp / f"{self.logs:02d}-{name}.log"

    def versioner(
        self, url: str, metrics: bool = True, extra: list[str] | None = None
    ) -> procs.ServerProc:
        self.revisions.append(procs.git_revision())
        extra = [*shlex.split(self.args.versioner_args), *(extra or [])]
        server = procs.versioner(url, self.log_path("versioner"), metrics=metrics, extra=extra)
        self.live.append(server)
        return server

    def new_database(self, backend: str, n: int) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self.tmp / f'bench-{size_label(n)}.db'}"
        return self.pg.create(size_label(n))

    def drop_database(self, url: str) -> None:
        if url.startswith("sqlite:"):
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(url.split("sqlite:///", 1)[1] + suffix).unlink()
        else:
            self.pg.drop(url)

    def backend(self, backend: str, pool: LoadPool, null: procs.ServerProc) -> dict[str, Any]:
        args, s = self.args, self.settings
        out: dict[str, Any] = {"sizes": {}}
        for index, n in enumerate(args.sizes):
            label = size_label(n)
            _section(f"{backend}, {label} deployments stored")
            url = self.new_database(backend, n)
            try:
                self.versioner(url, metrics=False).stop()  # creates the schema
                seeded = seed.seed(url, n)
                seeded["db_mb"] = procs.database_size_mb(url)
                _say(
                    f"  seeded {n} deployments ({seeded['rows'].get('event', 0)} events) "
                    f"in {seeded['seconds']} s, {seeded['db_mb']} MB"
                )
                started = time.perf_counter()
                http = ["--http-listen", "127.0.0.1:0"] if "http" in args.suites else []
                server = self.versioner(url, extra=http)
                result: dict[str, Any] = {
                    "deployments": n,
                    "seeding": seeded,
                    "start_seconds": round(time.perf_counter() - started, 2),
                    "rss_idle_mb": round(server.rss_mb(), 1),
                }
                out["sizes"][label] = result
                tag = f"{backend[0]}{label}"
                if "unary" in args.suites:
                    result["unary"] = unary_suite(s, pool, server, null, f"{backend} {label}")
                if index == 0 and "http" in args.suites:
                    null_http = procs.null_http(self.log_path("null-http"))
                    try:
                        result["http"] = http_suite(
                            s, pool, server, null_http, f"{backend} {label}"
                        )
                    finally:
                        null_http.stop()
                if index == 0 and "watch" in args.suites and backend in args.watch_backends:
                    result["watch"] = watch_suite(s, pool, server, null, f"{backend} {label}")
                    result["leak"] = leak_check(s, pool, server)
                if index == 0 and "rules" in args.suites:
                    result["rules"] = self.rules(pool, server, null, url, tag)
                    server = self.live[-1]
                if index == len(args.sizes) - 1 and "metrics" in args.suites:
                    result["metrics"] = self.metrics(pool, server, null, url, tag)
            except Exception as exc:
                traceback.print_exc()
                out["sizes"].setdefault(label, {})["failed"] = f"{type(exc).__name__}: {exc}"
            finally:
                for live in self.live:
                    live.stop()
                self.live.clear()
                self.drop_database(url)
        return out

    def metrics(
        self, pool: LoadPool, server: procs.ServerProc, null: procs.ServerProc, url: str, tag: str
    ) -> dict[str, Any]:
        """Scrape cost, then RecordEvent with metrics on (scraped) and off, alternating.

        "off (no endpoint)": --metrics-listen off, the projection still written;
        "off (no projection)": also --skip-metric-projection, when the server has it:
        the whole cost of the metrics feature on ingestion.
        """
        s = self.settings
        out: dict[str, Any] = {"scrape": scrape_cost(s, server)}
        variants: list[tuple[str, bool, list[str]]] = [("on", True, [])]
        variants.append(("off (no endpoint)", False, []))
        if procs.versioner_has_flag("--skip-metric-projection"):
            variants.append(("off (no projection)", False, ["--skip-metric-projection"]))
        if procs.versioner_has_flag("--no-grpc-metrics"):
            # Also without the interceptor's per-call counters: nothing of metrics at all.
            variants.append(
                ("off (nothing)", False, ["--skip-metric-projection", "--no-grpc-metrics"])
            )
        if not self.args.quick:  # on again: a drift shows as two different "on" figures
            variants.append(("on", True, []))
        cells = []
        for index, (name, listen, extra) in enumerate(variants):
            if index:
                server.stop()
                server = self.versioner(url, metrics=listen, extra=extra)
            cell = record_metrics_cell(s, pool, server, null, f"{tag}m{index}{int(time.time())}")
            cell["variant"] = name
            cells.append(cell)
        rates: dict[str, list[float]] = {}
        for cell in cells:
            rates.setdefault(cell["variant"], []).append(cell["calls_per_s"])
        mean = {name: round(sum(v) / len(v), 1) for name, v in rates.items()}
        base = "off (no projection)" if "off (no projection)" in mean else "off (no endpoint)"
        baseline = mean[base]
        out["record"] = {
            "inflight": s.metrics_inflight,
            "scrape_interval": s.scrape_interval,
            "cells": cells,
            "per_s": mean,
            "baseline": base,
            "ratio": ratio(mean["on"], baseline),
            "ratio_endpoint_only": ratio(mean["on"], mean["off (no endpoint)"]),
            "ratio_nothing": ratio(mean["on"], mean.get("off (nothing)")),
        }
        _say(
            f"  RecordEvent {s.metrics_inflight} in flight: "
            + ", ".join(f"{name} {value:.0f}/s" for name, value in mean.items())
            + f"; on / {out['record']['baseline']} = {out['record']['ratio']}"
        )
        return out

    def rules(
        self, pool: LoadPool, server: procs.ServerProc, null: procs.ServerProc, url: str, tag: str
    ) -> dict[str, Any]:
        """RecordEvent without rules and with the 10-rule file, alternating (issue 10)."""
        s = self.settings
        if not procs.versioner_has_flag("--rules-file"):
            return {"skipped": "this server has no --rules-file"}
        path = governance.write_rules(self.tmp)
        variants = [("no rules", []), ("10 rules", ["--rules-file", str(path)])]
        variants = variants * (2 if self.args.quick else 3)  # alternated: drift shows
        cells = []
        for index, (name, extra) in enumerate(variants):
            server.stop()
            server = self.versioner(url, metrics=False, extra=extra)
            cell = record_metrics_cell(s, pool, server, null, f"{tag}g{index}{int(time.time())}")
            cell["variant"] = name
            cells.append(cell)
        server.stop()
        self.versioner(url)  # as the other suites expect it: metrics on, no rules
        out = governance.summarize(cells)
        _say(
            f"  RecordEvent {s.metrics_inflight} in flight: "
            + ", ".join(f"{name} {value:.0f}/s" for name, value in out["per_s"].items())
            + f"; 10 rules / no rules = {out['ratio']}"
        )
        return out


def _run_on_snapshot(revision: str, argv: Sequence[str] | None) -> int:
    """Run the whole benchmark again with every process on a snapshot of `revision`:
    the servers, the null service, the load and the seeder all import that code, so
    commits landing meanwhile cannot mix versions into one run."""
    code, short = procs.export_snapshot(revision)
    _say(f"server code: {revision} = {short}, exported to {code}")
    env = {
        **os.environ,
        "VERSIONER_BENCH_CODE": str(code),
        "VERSIONER_BENCH_REV": short,
        # `python -m` puts the working directory (the snapshot) first on sys.path; the
        # stubs come from the snapshot too, `bench` from this checkout.
        "PYTHONPATH": os.pathsep.join([str(code / "clients" / "python"), str(procs.REPO)]),
    }
    try:
        command = [sys.executable, "-m", "bench", *(argv or sys.argv[1:])]
        return subprocess.call(command, cwd=code, env=env)
    finally:
        shutil.rmtree(code, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = options.parse(argv)
    if args.render:  # the tables again, from a saved JSON result
        print(report.render(json.loads(Path(args.render).read_text())))
        return 0
    if args.code and "VERSIONER_BENCH_CODE" not in os.environ:
        return _run_on_snapshot(args.code, argv)
    run = Run(args)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": args.mode,
        "args": {k: v for k, v in vars(args).items() if k != "postgres_url"},
        "machine": procs.machine_info(),
        "git": procs.git_revision(),
        "backends": {},
    }
    _say(
        f"Versioner bench ({args.mode}): {args.seconds:g} s cells after {args.warmup:g} s "
        f"warm-up, sizes {', '.join(size_label(n) for n in args.sizes)}, "
        f"backends {', '.join(args.backends)}; temp dir {run.tmp}"
    )
    began = time.perf_counter()
    pool = LoadPool(args.load_procs)
    null = None
    try:
        null = procs.null_service(run.log_path("null"))
        for backend in args.backends:
            if backend == "postgres":
                why = run.pg.reachable()
                if why:
                    _section(f"postgres skipped: {why}")
                    results["backends"]["postgres"] = {"skipped": why}
                    continue
            elif backend != "sqlite":
                raise SystemExit(f"unknown backend {backend!r}")
            results["backends"][backend] = run.backend(backend, pool, null)
        if "notify" in args.suites:
            _section("notifications (SQLite): RecordEvent with 10 webhook subscriptions / none")
            results["notify"] = notify_bench.run(seconds=args.seconds, pool=pool)
    except KeyboardInterrupt:
        _say("interrupted: reporting what was measured")
        results["interrupted"] = True
    finally:
        if null is not None:
            null.stop()
        pool.close()
        run.pg.drop_all()
        if not args.keep:
            shutil.rmtree(run.tmp, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - began, 1)
    results["server_revisions"] = sorted(set(run.revisions))
    results["machine"]["loadavg_end"] = procs.machine_info()["loadavg"]
    text = report.render(results)
    print("\n" + text)
    json_path, text_path = report.write(results, text, procs.REPO / args.out)
    print(f"wrote {json_path} and {text_path} ({results['seconds']:.0f} s)")
    return 0
