"""The measurements: unary RPCs, watch fan-out, watch leak check, metrics."""

from __future__ import annotations

import gzip
import re
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from bench.procs import CpuWindow, ServerProc
from bench.runner import LoadPool, WatchersProc, cpu_pids, cpu_summary, measure_unary
from bench.stats import latency_summary, ratio


@dataclass
class Settings:
    seconds: float
    warmup: float
    concurrency: list[int]
    rpcs: list[str]
    hot_concurrency: list[int]
    repeat: int
    watchers: list[int]
    watch_light: float
    watch_light_rate: float
    watch_heavy: float
    watch_heavy_rate: float
    watch_record_inflight: int
    cycles: int
    cycle_rounds: int
    cycle_concurrency: int
    scrapes: int
    scrape_interval: float
    metrics_seconds: float
    metrics_inflight: int


def _say(text: str) -> None:
    print(text, flush=True)


def _median_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its latencies too); all throughputs kept."""
    ordered = sorted(cells, key=lambda c: c["calls_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(cells) > 1:
        chosen["runs_calls_per_s"] = [c["calls_per_s"] for c in cells]
    return chosen


def unary_suite(
    s: Settings, pool: LoadPool, versioner: ServerProc, null: ServerProc, label: str
) -> list[dict[str, Any]]:
    """Every (rpc, in-flight) cell on the null service and on Versioner, back to back."""
    rows = []
    cells = [(rpc, inflight) for rpc in s.rpcs for inflight in s.concurrency]
    cells += [
        (f"{rpc}:hot", inflight)
        for rpc in s.rpcs
        if rpc in ("GetCurrent", "ListHistory")
        for inflight in s.hot_concurrency
    ]
    tag = label.replace(" ", "")
    for rpc, inflight in cells:
        runs: dict[str, list[dict[str, Any]]] = {"null": [], "versioner": []}
        for rep in range(s.repeat):
            order = [("null", null), ("versioner", versioner)]
            if rep % 2:
                order.reverse()
            for name, target in order:
                other = versioner if target is null else null
                cell = measure_unary(
                    pool,
                    target,
                    [other],
                    rpc=rpc,
                    inflight=inflight,
                    seconds=s.seconds,
                    warmup=s.warmup,
                    tag=f"{tag}{rpc[0]}{inflight}r{rep}{name[0]}{int(time.time())}",
                )
                runs[name].append(cell)
        n, v = _median_cell(runs["null"]), _median_cell(runs["versioner"])
        row = {
            "rpc": rpc,
            "inflight": inflight,
            "null": n,
            "versioner": v,
            "ratio": ratio(v["calls_per_s"], n["calls_per_s"]),
            # null CPU per call / Versioner CPU per call (server + PostgreSQL backends)
            "cpu_ratio": ratio(n["cpu_us_per_call"], v["cpu_us_per_call"]),
        }
        rows.append(row)
        _say(
            f"  {label:<14} {rpc:<12} {inflight:>3} in flight: "
            f"null {n['calls_per_s']:>8.0f}/s  versioner {v['calls_per_s']:>8.0f}/s  "
            f"ratio {row['ratio']} (cpu {row['cpu_ratio']})  "
            f"p99 {n['p99_ms']:.2f}/{v['p99_ms']:.2f} ms  "
            f"foreign cpu {v['foreign_cores']:.2f}"
            + (f"  errors {v['errors']}" if v["errors"] else "")
        )
    return rows


def _rate(offered: float, cap: float, watchers: int) -> float:
    return round(min(cap, offered / max(watchers, 1)), 2)


def _paced_window(
    s: Settings,
    pool: LoadPool,
    proc: WatchersProc,
    target: ServerProc,
    other: ServerProc,
    rate: float,
) -> dict[str, Any]:
    """Record at `rate` events/s for one window; what the watchers received meanwhile."""
    t0 = time.time() + 0.3
    t1 = t0 + s.seconds
    proc.window(t0, t1)
    pool.start(
        {
            "op": "paced",
            "address": target.address,
            "rate": rate,
            "seconds": s.seconds,
            "start_at": t0,
            "tag": f"w{proc.count}r{int(rate)}t{int(t0)}",
        },
        first_only=True,
    )
    time.sleep(max(0.0, t0 - time.time()))
    window = CpuWindow(cpu_pids(target, [other], pool) | {"watchers": proc.pid})
    rss = [target.rss_mb()]
    while time.time() < t1:
        time.sleep(0.25)
        rss.append(target.rss_mb())
    raw = window.result()
    recorded = pool.collect()
    seen = proc.receive(timeout=60)
    drained = proc.drain()
    recorded_per_s = recorded.get("sent", 0) / s.seconds
    delivered_per_s = seen["delivered"] / seen["seconds"]
    cpu = cpu_summary(raw)
    cpu["watchers_cores"] = raw.get("watchers_cores", 0.0)
    busy = cpu["server_cores"] + cpu["db_cores"]
    cpu["cpu_us_per_msg"] = round(busy / max(delivered_per_s, 1e-9) * 1e6, 1)
    return {
        "rate": rate,
        "recorded_per_s": round(recorded_per_s, 1),
        "offered_per_s": round(recorded_per_s * proc.count, 1),
        "delivered_per_s": round(delivered_per_s, 1),
        "delivered_fraction": ratio(delivered_per_s, recorded_per_s * proc.count),
        **latency_summary(seen["latencies_us"]),
        "record": latency_summary(recorded["latencies_us"]),
        "record_errors": recorded["errors"],
        "cutoffs": seen["cutoffs"],
        "stream_errors": seen["errors"],
        "backlog_drain_s": drained,
        "rss_mb": round(max(rss), 1),
        **cpu,
    }


def watch_server(
    s: Settings,
    pool: LoadPool,
    target: ServerProc,
    other: ServerProc,
    watchers: int,
    resume: bool,
    record: bool,
    tag: str,
) -> dict[str, Any]:
    """`watchers` live streams on `target`: a light and a heavy recording window, and
    (with `record`) RecordEvent closed-loop throughput without, then with, them."""
    out: dict[str, Any] = {"watchers": watchers}
    record_cell: dict[str, Any] = {
        "rpc": "RecordEvent",
        "inflight": s.watch_record_inflight,
        "seconds": s.seconds,
        "warmup": s.warmup,
    }
    if record:
        out["record_none"] = measure_unary(
            pool, target, [other], **record_cell, tag=f"{tag}n{int(time.time())}"
        )
    out["rss_before_mb"] = round(target.rss_mb(), 1)
    proc = WatchersProc(target.address, watchers, resume)
    try:
        out["ready_s"] = round(proc.wait_ready(target.address), 1)
        time.sleep(0.5)
        out["rss_connected_mb"] = round(target.rss_mb(), 1)
        light = _rate(s.watch_light, s.watch_light_rate, watchers)
        heavy = _rate(s.watch_heavy, s.watch_heavy_rate, watchers)
        out["light"] = _paced_window(s, pool, proc, target, other, light)
        out["heavy"] = _paced_window(s, pool, proc, target, other, heavy)
        if record:
            t0 = time.time() + s.warmup + 0.15
            proc.window(t0, t0 + s.seconds)
            cell = measure_unary(
                pool, target, [other], **record_cell, tag=f"{tag}w{int(time.time())}"
            )
            seen = proc.receive(timeout=60)
            cell["delivered_per_s"] = round(seen["delivered"] / seen["seconds"], 1)
            cell["cutoffs"] = seen["cutoffs"]
            # Every watcher should receive every event recorded in the window.
            offered = cell["calls_per_s"] * watchers
            share = round(cell["delivered_per_s"] / offered, 3) if offered else None
            cell["delivered_share"] = share
            cell["e2e"] = latency_summary(seen["latencies_us"])
            out["record_watched"] = cell
            out["record_ratio"] = ratio(cell["calls_per_s"], out["record_none"]["calls_per_s"])
    finally:
        out["totals"] = proc.stop()
    out["rss_max_mb"] = max(
        [out["rss_connected_mb"]]
        + [out[k]["rss_mb"] for k in ("light", "heavy", "record_watched") if k in out]
    )
    return out


def watch_suite(
    s: Settings, pool: LoadPool, versioner: ServerProc, null: ServerProc, label: str
) -> dict[str, Any]:
    rows = []
    most = max(s.watchers)
    for count in s.watchers:
        stamp = f"{count}t{int(time.time())}"
        n = watch_server(s, pool, null, versioner, count, False, count == most, f"n{stamp}")
        v = watch_server(s, pool, versioner, null, count, True, count == most, f"v{stamp}")
        row = {
            "watchers": count,
            "null": n,
            "versioner": v,
            "light_ratio": ratio(v["light"]["delivered_per_s"], n["light"]["delivered_per_s"]),
            "delivery_ratio": ratio(v["heavy"]["delivered_per_s"], n["heavy"]["delivered_per_s"]),
            "heavy_cpu_ratio": ratio(n["heavy"]["cpu_us_per_msg"], v["heavy"]["cpu_us_per_msg"]),
        }
        rows.append(row)
        for phase in ("light", "heavy"):
            a, b = n[phase], v[phase]
            _say(
                f"  {label:<14} {count:>5} watchers, {phase} ({b['rate']:g} events/s): "
                f"delivered null {a['delivered_per_s']:>7.0f}/s versioner "
                f"{b['delivered_per_s']:>7.0f}/s; e2e p50 {a['p50_ms']:.1f}/{b['p50_ms']:.1f} "
                f"p99 {a['p99_ms']:.1f}/{b['p99_ms']:.1f} ms; cut-offs "
                f"{a['cutoffs']}/{b['cutoffs']}; rss {b['rss_mb']:.0f} MB; "
                f"foreign {b['foreign_cores']:.2f}"
            )
        if count == most:
            for name, side in (("null", n), ("versioner", v)):
                _say(
                    f"  {label:<14} RecordEvent {s.watch_record_inflight} in flight on {name}: "
                    f"{side['record_none']['calls_per_s']:.0f}/s with no watchers, "
                    f"{side['record_watched']['calls_per_s']:.0f}/s with {count} "
                    f"(ratio {side['record_ratio']}, delivered "
                    f"{side['record_watched']['delivered_per_s']:.0f}/s, cut-offs "
                    f"{side['record_watched']['cutoffs']})"
                )
    return {"fanout": rows, "max_watchers": most}


def head_revision(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.DeploymentServiceStub(channel)
        return stub.ListHistory(pb.ListHistoryRequest(page_size=1), timeout=30).revision


def scrape(metrics_address: str) -> tuple[float, int, str]:
    """One scrape as Prometheus makes it (gzip accepted): seconds, bytes on the wire, text."""
    request = urllib.request.Request(
        f"http://{metrics_address}/metrics", headers={"Accept-Encoding": "gzip"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read()
        encoding = response.headers.get("Content-Encoding", "")
    elapsed = time.perf_counter() - started
    text = gzip.decompress(body) if encoding == "gzip" else body
    return elapsed, len(body), text.decode()


def _watch_calls(text: str) -> tuple[float, float]:
    """(started, handled) WatchDeployments calls in a /metrics exposition."""
    started = handled = 0.0
    for line in text.splitlines():
        if 'grpc_method="WatchDeployments"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("grpc_server_started_total"):
            started += value
        elif line.startswith("grpc_server_handled_total"):
            handled += value
    return started, handled


def leak_check(s: Settings, pool: LoadPool, versioner: ServerProc) -> dict[str, Any]:
    """RSS before and after rounds of `cycles` watch connect / read one / cancel cycles."""
    after = max(head_revision(versioner.address) - 1, 0)
    spec = {"op": "cycles", "address": versioner.address, "after_revision": after}
    pool.start(dict(spec, count=min(1000, s.cycles // 2), concurrency=s.cycle_concurrency))
    warm = pool.collect()
    time.sleep(1.0)
    rss = [round(versioner.rss_mb(), 1)]
    rounds = []
    for _ in range(s.cycle_rounds):
        pool.start(dict(spec, count=s.cycles, concurrency=s.cycle_concurrency), split="count")
        result = pool.collect()
        time.sleep(1.0)
        rss.append(round(versioner.rss_mb(), 1))
        rounds.append({"cycles": result.get("cycles", 0), "per_s": round(result["per_s"], 1)})
        rounds[-1]["errors"] = result["errors"]
    out: dict[str, Any] = {
        "warmup_cycles": warm.get("cycles", 0),
        "cycles_per_round": s.cycles,
        "rss_mb": rss,
        "rounds": rounds,
        "growth_mb": round(rss[-1] - rss[0], 1),
    }
    if versioner.metrics_address:
        started, handled = _watch_calls(scrape(versioner.metrics_address)[2])
        out["watch_calls_started"] = started
        out["watch_calls_handled"] = handled
    _say(
        f"  leak check: RSS {' -> '.join(f'{r:.1f}' for r in rss)} MB over "
        f"{s.cycle_rounds} x {s.cycles} cycles ({rounds[0]['per_s']:.0f}/s); "
        f"watch calls started {out.get('watch_calls_started')}, "
        f"ended {out.get('watch_calls_handled')}"
    )
    return out


_SCRAPE_COST = re.compile(r"^versioner_scrape_duration_seconds (\S+)$", re.MULTILINE)


def _bump_revision(address: str) -> None:
    """Record one event, so the next scrape cannot come from a cache keyed by revision."""
    with grpc.insecure_channel(address) as channel:
        pb_grpc.DeploymentServiceStub(channel).RecordEvent(
            pb.RecordEventRequest(
                product_name="svc-000",
                environment_name="production",
                version=f"scrape.{time.time_ns()}",
                status=pb.DEPLOYMENT_STATUS_COMPLETED,
            ),
            timeout=30,
        )


def scrape_cost(s: Settings, versioner: ServerProc) -> dict[str, Any]:
    """Time and bytes per scrape: right after a write (cold) and repeated (hot)."""
    scrape(versioner.metrics_address)  # warm
    cold, hot, wire, raw, self_reported = [], [], [], [], []
    text = ""
    for _ in range(s.scrapes):
        _bump_revision(versioner.address)
        seconds, size, text = scrape(versioner.metrics_address)
        cold.append(seconds)
        wire.append(size)
        raw.append(len(text.encode()))
        match = _SCRAPE_COST.search(text)
        if match:
            self_reported.append(float(match.group(1)))
        hot.append(scrape(versioner.metrics_address)[0])
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    out: dict[str, Any] = {
        "scrapes": s.scrapes,
        "seconds_median": round(statistics.median(cold), 3),
        "seconds_max": round(max(cold), 3),
        "hot_seconds_median": round(statistics.median(hot), 3),
        "bytes": int(statistics.median(wire)),
        "uncompressed_bytes": int(statistics.median(raw)),
        "series": series,
        "collector_seconds_median": round(statistics.median(self_reported), 3)
        if self_reported
        else None,
    }
    _say(
        f"  scrape: {out['seconds_median'] * 1000:.0f} ms median after a write "
        f"({out['seconds_max'] * 1000:.0f} max), {out['hot_seconds_median'] * 1000:.0f} ms "
        f"repeated; {out['bytes'] / 1e6:.2f} MB on the wire "
        f"({out['uncompressed_bytes'] / 1e6:.2f} MB of text), {series} series"
    )
    return out


class Scraper:
    """Scrapes /metrics on a thread, like a (busy) Prometheus: the first scrape after
    `delay` seconds (the start of the measured window), then one every `interval`."""

    def __init__(self, metrics_address: str, interval: float, delay: float) -> None:
        self.address, self.interval, self.delay = metrics_address, interval, delay
        self.stop_flag = threading.Event()
        self.count = 0
        self.seconds: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        wait = self.delay
        while not self.stop_flag.wait(wait):
            started = time.monotonic()
            try:
                self.seconds.append(round(scrape(self.address)[0], 3))
                self.count += 1
            except OSError:
                pass
            wait = max(0.0, self.interval - (time.monotonic() - started))

    def stop(self) -> int:
        self.stop_flag.set()
        self.thread.join()
        return self.count


def record_metrics_cell(
    s: Settings, pool: LoadPool, versioner: ServerProc, null: ServerProc, tag: str
) -> dict[str, Any]:
    address = versioner.metrics_address
    scraper = Scraper(address, s.scrape_interval, s.warmup + 0.15) if address else None
    try:
        cell = measure_unary(
            pool,
            versioner,
            [null],
            rpc="RecordEvent",
            inflight=s.metrics_inflight,
            seconds=s.metrics_seconds,
            warmup=s.warmup,
            tag=tag,
        )
    finally:
        cell_scrapes = scraper.stop() if scraper else 0
    cell["scrapes"] = cell_scrapes
    cell["scrape_seconds"] = scraper.seconds if scraper else []
    cell["metrics"] = "on" if versioner.metrics_address else "off"
    return cell
