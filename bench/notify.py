"""`python -m bench.notify`: what webhook subscriptions cost RecordEvent, and delivery latency.

1. Throughput: RecordEvent at a fixed number of calls in flight against two
   servers side by side on SQLite, one with 10 enabled webhook subscriptions
   (receiver on loopback, in its own process), one with none, alternating and
   repeated; the figure is the ratio of their median calls/s (target >= 0.8).
2. Latency: RecordEvent paced at 50 events/s into the server with 10
   subscriptions; commit-to-receipt latency (the deployment's update_time,
   written in the committing transaction, to the receiver's clock: one
   machine, one clock) p50/p99 over every delivery.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from versioner.v1 import notification_service_pb2 as npb
from versioner.v1 import notification_service_pb2_grpc as npb_grpc

from bench import procs
from bench.runner import LoadPool, measure_unary
from bench.stats import ratio

SUBSCRIPTIONS = 10


def _say(text: str) -> None:
    print(text, flush=True)


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000 if ordered else 0.0


class Receiver:
    def __init__(self, directory: Path) -> None:
        self.out = directory / "received.txt"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.notify_receiver", str(self.out)],
            cwd=procs.CODE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.counted = 0
        threading.Thread(target=self._count, daemon=True).start()

    def _count(self) -> None:
        assert self.proc.stdout is not None
        while self.proc.stdout.read(1):
            self.counted += 1

    def count(self) -> int:
        """Requests received so far (the receiver prints a dot per request)."""
        return self.counted

    def stop(self) -> list[tuple[str, int]]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        lines = self.out.read_text().split("\n") if self.out.exists() else []
        return [(p, int(us)) for p, us in (line.split() for line in lines if line)]


def subscribe(server: procs.ServerProc, port: int) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = npb_grpc.NotificationServiceStub(channel)
        for i in range(SUBSCRIPTIONS):
            stub.CreateSubscription(
                npb.CreateSubscriptionRequest(
                    name=f"bench-{i}",
                    url=f"http://127.0.0.1:{port}/s{i}",
                    format=npb.NOTIFICATION_FORMAT_WEBHOOK,
                    secret="bench-secret-0123456789",
                ),
                timeout=10,
            )


def run(
    *,
    seconds: float = 8.0,
    inflight: int = 16,
    repeat: int = 3,
    rate: float = 50.0,
    latency_seconds: float = 20.0,
    pool: LoadPool | None = None,
) -> dict[str, Any]:
    """Both measurements; `pool` (load processes) is made and closed here unless given."""
    args = argparse.Namespace(
        seconds=seconds, inflight=inflight, repeat=repeat, rate=rate,
        latency_seconds=latency_seconds,
    )  # fmt: skip
    own_pool = pool is None
    pool = pool or LoadPool(2)
    try:
        return _measure(args, pool)
    finally:
        if own_pool:
            pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.notify", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s for latency")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--load-processes", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    pool = LoadPool(args.load_processes)
    try:
        result = _measure(args, pool)
    finally:
        pool.close()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def _measure(args: argparse.Namespace, pool: LoadPool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="versioner-bench-notify-"))
    receiver = Receiver(tmp)
    extra = ["--allow-private-webhooks"]
    with_subs = procs.versioner(f"sqlite:///{tmp}/with.db", tmp / "with.log", extra=extra)
    without = procs.versioner(f"sqlite:///{tmp}/without.db", tmp / "without.log", extra=extra)
    result: dict[str, Any] = {}
    try:
        subscribe(with_subs, receiver.port)
        runs: dict[str, list[float]] = {"with": [], "without": []}
        for rep in range(args.repeat):
            order = [("without", without), ("with", with_subs)]
            if rep % 2:
                order.reverse()
            for name, target in order:
                other = without if target is with_subs else with_subs
                cell = measure_unary(
                    pool, target, [other], rpc="RecordEvent", inflight=args.inflight,
                    seconds=args.seconds, warmup=1.0, tag=f"n{rep}{name[0]}{int(time.time())}",
                )  # fmt: skip
                runs[name].append(cell["calls_per_s"])
                _say(f"  RecordEvent {name:>7} {SUBSCRIPTIONS if name == 'with' else 0:>2} "
                     f"subscriptions: {cell['calls_per_s']:8.0f}/s")  # fmt: skip
        medians = {k: statistics.median(v) for k, v in runs.items()}
        result["throughput"] = {
            "inflight": args.inflight,
            "seconds": args.seconds,
            "runs_calls_per_s": runs,
            "median_calls_per_s": medians,
            "ratio": ratio(medians["with"], medians["without"]),
        }
        _say(f"RecordEvent with {SUBSCRIPTIONS} webhook subscriptions / none: "
             f"{result['throughput']['ratio']} (target >= 0.8)")  # fmt: skip

        # Latency on a fresh server and receiver: no backlog from the runs above.
        receiver.stop()
        with_subs.stop()
        receiver = Receiver(tmp)
        with_subs = procs.versioner(f"sqlite:///{tmp}/latency.db", tmp / "latency.log", extra=extra)
        subscribe(with_subs, receiver.port)
        spec = {"op": "paced", "address": with_subs.address, "rate": args.rate,
                "seconds": args.latency_seconds, "tag": f"lat{int(time.time())}",
                "start_at": time.time() + 1.0}  # fmt: skip
        pool.start(spec, first_only=True)
        sent = pool.collect()
        expected = int(sent.get("sent", 0)) * SUBSCRIPTIONS
        deadline = time.monotonic() + 60
        while receiver.count() < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        got = receiver.stop()
        latencies = [us for _, us in got]
        result["latency"] = {
            "rate": args.rate,
            "seconds": args.latency_seconds,
            "events": int(sent.get("sent", 0)),
            "deliveries_expected": expected,
            "deliveries_received": len(latencies),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": percentile(latencies, 1.0),
        }
        lat = result["latency"]
        _say(f"delivery latency, commit to receipt, {args.rate:g} events/s x {SUBSCRIPTIONS} "
             f"subscriptions: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms "
             f"({lat['deliveries_received']}/{expected} received)")  # fmt: skip
    finally:
        with_subs.stop()
        without.stop()
        receiver.stop()
    return result


if __name__ == "__main__":
    sys.exit(main())
