"""The HTTP API cells: POST /deployment-events/ vs the null HTTP service, and gRPC beside it.

- Throughput of POST /deployment-events/ on Versioner and on bench.null_http
  (same framework, middleware and server; a handler that does no work), back to
  back at each in-flight level, as a ratio (target ≥ 0.5x).
- RecordEvent over gRPC alone, then again while a second load process keeps
  HTTP posts in flight against the same server: what HTTP traffic costs gRPC
  callers in the shared event loop and writer.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bench.procs import ServerProc
from bench.runner import LoadPool, _Child, measure_unary
from bench.stats import ratio
from bench.suites import Settings, _median_cell

ROUTE = "POST /deployment-events/"
MIXED_INFLIGHT = 16


def _say(text: str) -> None:
    print(text, flush=True)


def http_suite(
    s: Settings, pool: LoadPool, versioner: ServerProc, null_http: ServerProc, label: str
) -> dict[str, Any]:
    rows = []
    tag = label.replace(" ", "")
    for inflight in s.concurrency:
        runs: dict[str, list[dict[str, Any]]] = {"null": [], "versioner": []}
        for rep in range(s.repeat):
            order = [("null", null_http), ("versioner", versioner)]
            if rep % 2:
                order.reverse()
            for name, target in order:
                other = versioner if target is null_http else null_http
                runs[name].append(
                    measure_unary(
                        pool,
                        target,
                        [other],
                        rpc=ROUTE,
                        inflight=inflight,
                        seconds=s.seconds,
                        warmup=s.warmup,
                        tag=f"{tag}h{inflight}r{rep}{name[0]}{int(time.time())}",
                        op="http",
                        address=target.http_address,
                    )
                )
        n, v = _median_cell(runs["null"]), _median_cell(runs["versioner"])
        row = {
            "rpc": ROUTE,
            "inflight": inflight,
            "null": n,
            "versioner": v,
            "ratio": ratio(v["calls_per_s"], n["calls_per_s"]),
            "cpu_ratio": ratio(n["cpu_us_per_call"], v["cpu_us_per_call"]),
        }
        rows.append(row)
        _say(
            f"  {label:<14} HTTP POST {inflight:>3} in flight: "
            f"null {n['calls_per_s']:>8.0f}/s  versioner {v['calls_per_s']:>8.0f}/s  "
            f"ratio {row['ratio']} (cpu {row['cpu_ratio']})  "
            f"p99 {n['p99_ms']:.2f}/{v['p99_ms']:.2f} ms  client cores {v['client_cores']:.2f}"
            + (f"  errors {v['errors']}" if v["errors"] else "")
        )
    return {"post": rows, "mixed": _mixed(s, pool, versioner, tag)}


def _mixed(s: Settings, pool: LoadPool, versioner: ServerProc, tag: str) -> dict[str, Any]:
    """gRPC RecordEvent alone, then with HTTP posts in flight on the same server."""

    def grpc_cell(suffix: str) -> dict[str, Any]:
        return measure_unary(
            pool,
            versioner,
            [],
            rpc="RecordEvent",
            inflight=MIXED_INFLIGHT,
            seconds=s.seconds,
            warmup=s.warmup,
            tag=f"{tag}g{suffix}{int(time.time())}",
        )

    alone = grpc_cell("a")
    background = _Child(["-m", "bench.load"])
    try:
        background.send(
            json.dumps(
                {
                    "op": "http",
                    "address": versioner.http_address,
                    "inflight": MIXED_INFLIGHT,
                    "seconds": s.warmup + s.seconds + 0.5,
                    "warmup": 0.0,
                    "tag": f"{tag}bg{int(time.time())}",
                }
            )
        )
        time.sleep(0.3)  # the HTTP load is in flight before the gRPC cell starts
        beside = grpc_cell("b")
        http = background.receive(timeout=120)
    finally:
        background.close()
    http_per_s = round(len(http.get("latencies_us", [])) / max(http.get("seconds", 1), 1e-9), 1)
    out = {
        "inflight": MIXED_INFLIGHT,
        "grpc_alone": alone,
        "grpc_with_http": beside,
        "http_per_s": http_per_s,
        "http_errors": http.get("errors", {}),
        "ratio": ratio(beside["calls_per_s"], alone["calls_per_s"]),
        "combined_ratio": ratio(beside["calls_per_s"] + http_per_s, alone["calls_per_s"]),
    }
    _say(
        f"  RecordEvent gRPC {MIXED_INFLIGHT} in flight: alone {alone['calls_per_s']:.0f}/s, "
        f"with HTTP posts {beside['calls_per_s']:.0f}/s (+ {http_per_s:.0f}/s HTTP): "
        f"ratio {out['ratio']}, gRPC + HTTP / alone {out['combined_ratio']}"
    )
    return out
