"""Command-line options of `python -m bench`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SUFFIXES = {"k": 1_000, "m": 1_000_000}


def size(text: str) -> int:
    text = text.strip().lower()
    if text and text[-1] in SUFFIXES:
        return int(float(text[:-1]) * SUFFIXES[text[-1]])
    return int(text)


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Versioner throughput and latency as ratios to a null gRPC service "
        "(see BENCHMARKS.md). Full mode takes about 20 minutes (30 with --repeat 2), "
        "--quick about 3.",
    )
    p.add_argument(
        "--quick", action="store_true", help="short cells, sizes 10k,100k, SQLite-only watch suite"
    )
    p.add_argument("--seconds", type=float, help="measured seconds per cell [4; quick 0.8]")
    p.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each cell [1; quick 0.3]"
    )
    p.add_argument(
        "--sizes",
        type=lambda t: [size(x) for x in t.split(",")],
        help="deployments stored [10k,1m; quick 10k,100k]",
    )
    p.add_argument(
        "--backends", type=_names, default=["sqlite", "postgres"], help="sqlite,postgres"
    )
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("VERSIONER_BENCH_POSTGRES_URL", DEFAULT_PG),
        help="an admin connection; a fresh database is created per dataset and dropped "
        "after [VERSIONER_BENCH_POSTGRES_URL; default: %(default)s]",
    )
    p.add_argument(
        "--suites",
        type=_names,
        default=["unary", "http", "watch", "metrics", "rules", "notify"],
        help="unary,http,watch,metrics,rules,notify (http: POST /deployment-events/ vs a null app)",
    )
    p.add_argument("--rpcs", type=_names, default=["RecordEvent", "GetCurrent", "ListHistory"])
    p.add_argument("--concurrency", type=_ints, default=[1, 16, 64], help="calls in flight")
    p.add_argument(
        "--hot-concurrency",
        type=_ints,
        help="calls in flight for the cached (hot) read cells [64; quick: none]",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per cell (the median is kept)")
    p.add_argument("--load-procs", type=int, default=1, help="load processes sharing each cell")
    p.add_argument("--watchers", type=_ints, default=[1, 100, 1000])
    p.add_argument(
        "--watch-backends", type=_names, help="backends for the watch suite [all; quick sqlite]"
    )
    p.add_argument(
        "--watch-light",
        type=float,
        default=5_000,
        help="light window: messages/s offered to the watchers (events/s = this / watchers, "
        "at most --watch-light-rate); measures end-to-end latency [%(default)s]",
    )
    p.add_argument("--watch-light-rate", type=float, default=50, help="[%(default)s]")
    p.add_argument(
        "--watch-heavy",
        type=float,
        default=40_000,
        help="heavy window: messages/s offered, beyond what either server delivers on a "
        "small machine; measures delivery capacity [%(default)s]",
    )
    p.add_argument("--watch-heavy-rate", type=float, default=200, help="[%(default)s]")
    p.add_argument(
        "--watch-record-inflight",
        type=int,
        default=16,
        help="RecordEvent calls in flight with/without watchers [%(default)s]",
    )
    p.add_argument(
        "--cycles", type=int, help="watch connect/disconnect cycles per round [10000; quick 1000]"
    )
    p.add_argument("--cycle-rounds", type=int, help="rounds of cycles [2; quick 1]")
    p.add_argument("--cycle-concurrency", type=int, default=50)
    p.add_argument("--scrapes", type=int, help="timed /metrics scrapes [10; quick 3]")
    p.add_argument(
        "--scrape-interval",
        type=float,
        help="seconds between scrapes while RecordEvent runs with metrics on [15; quick 2]",
    )
    p.add_argument(
        "--metrics-seconds",
        type=float,
        help="measured seconds of each metrics on/off cell: one scrape interval [15; quick 2]",
    )
    p.add_argument(
        "--metrics-inflight",
        type=int,
        default=64,
        help="RecordEvent calls in flight for metrics on/off [%(default)s]",
    )
    p.add_argument(
        "--code",
        metavar="REV",
        help="benchmark the server code of this git revision (e.g. HEAD), exported to a temp "
        "dir, instead of the working tree (which others may change during a long run)",
    )
    p.add_argument(
        "--versioner-args",
        default="",
        metavar="ARGS",
        help="extra flags for every Versioner process, e.g. '--no-read-cache' (every read "
        "cold) or '--no-grpc-metrics'",
    )
    p.add_argument("--render", metavar="JSON", help="print the tables of a saved result and exit")
    p.add_argument("--out", default="bench-results", help="directory for the JSON and text report")
    p.add_argument(
        "--keep", action="store_true", help="keep the temp directory (databases, server logs)"
    )
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "seconds": 0.8 if quick else 4.0,
        "warmup": 0.3 if quick else 1.0,
        "sizes": [10_000, 100_000] if quick else [10_000, 1_000_000],
        "hot_concurrency": [] if quick else [64],
        "cycles": 1_000 if quick else 10_000,
        "cycle_rounds": 1 if quick else 2,
        "scrapes": 3 if quick else 10,
        "scrape_interval": 2.0 if quick else 15.0,
        "metrics_seconds": 2.0 if quick else 15.0,
        "watch_backends": ["sqlite"] if quick else list(args.backends),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sizes = sorted(set(args.sizes))
    args.mode = "quick" if quick else "full"
    return args
