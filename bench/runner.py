"""Driving the load processes and watchers from the benchmark driver."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import grpc
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from bench.procs import CODE, CpuWindow, ServerProc, pg_backend_pids
from bench.stats import latency_summary


class _Child:
    """A Python module as a child process; stdout lines go to a queue."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=CODE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.busy = False  # a load request sent, its answer not yet collected
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise RuntimeError(f"{self.proc.args!r} exited with {self.proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class LoadPool:
    """Persistent `bench.load` processes; a command runs on all of them at once."""

    def __init__(self, processes: int) -> None:
        self.workers = [_Child(["-m", "bench.load"]) for _ in range(processes)]

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def start(
        self, spec: dict[str, Any], split: str | None = None, first_only: bool = False
    ) -> None:
        """Send `spec` to every worker (or the first); `split` names a field divided among them."""
        workers = self.workers[:1] if first_only else self.workers
        n = len(workers)
        for index, worker in enumerate(workers):
            part = dict(spec, worker=index)
            if split:
                total = int(spec[split])
                part[split] = total // n + (1 if index < total % n else 0)
                if part[split] == 0:
                    continue
            worker.send(json.dumps(part))
            worker.busy = True

    def collect(self, timeout: float = 300) -> dict[str, Any]:
        """Merge the workers' answers: latencies concatenated, counts summed."""
        merged: dict[str, Any] = {"latencies_us": [], "errors": Counter()}
        for worker in self.workers:
            if not worker.busy:
                continue
            worker.busy = False
            result = worker.receive(timeout)
            if "failed" in result:
                raise RuntimeError(f"load process failed: {result['failed']}")
            merged["latencies_us"].extend(result.pop("latencies_us", []))
            merged["errors"].update(result.pop("errors", {}))
            for key, value in result.items():
                if isinstance(value, int | float):
                    merged[key] = merged.get(key, 0) + value if key != "seconds" else value
        merged["errors"] = dict(merged["errors"])
        return merged

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


def cpu_pids(target: ServerProc, others: list[ServerProc], pool: LoadPool) -> dict[str, int]:
    pids = {"server": target.pid}
    for index, pid in enumerate(pool.pids):
        pids[f"client{index}"] = pid
    for index, other in enumerate(others):
        pids[f"idle{index}"] = other.pid
    for pid in pg_backend_pids(getattr(target, "database_url", "")):
        pids[f"db{pid}"] = pid
    return pids


def cpu_summary(raw: dict[str, float]) -> dict[str, float]:
    client = sum(v for k, v in raw.items() if k.startswith("client"))
    db = sum(v for k, v in raw.items() if k.startswith("db"))
    return {
        "server_cores": raw.get("server_cores", 0.0),
        "client_cores": round(client, 3),
        "db_cores": round(db, 3),
        "foreign_cores": raw["foreign_cores"],
        "machine_cores": raw["machine_cores"],
    }


def measure_unary(
    pool: LoadPool,
    target: ServerProc,
    others: list[ServerProc],
    *,
    rpc: str,
    inflight: int,
    seconds: float,
    warmup: float,
    tag: str,
    during: Any = None,
    op: str = "unary",
    address: str = "",
) -> dict[str, Any]:
    """One cell: `inflight` calls of `rpc` in flight against `target` for `seconds`.

    `op` "http" posts events to `address` (the server's HTTP API) instead.
    """
    spec = {
        "op": op,
        "address": address or target.address,
        "rpc": rpc,
        "inflight": inflight,
        "seconds": seconds,
        "warmup": warmup,
        "tag": tag,
    }
    pool.start(spec, split="inflight")
    time.sleep(warmup + 0.15)  # the workers' channel setup, then their warm-up
    window = CpuWindow(cpu_pids(target, others, pool))
    rss = [target.rss_mb()]
    end = time.monotonic() + seconds - 0.3
    while time.monotonic() < end:
        time.sleep(0.25)
        if during is not None:
            during()
        rss.append(target.rss_mb())
    cpu = cpu_summary(window.result())
    result = pool.collect()
    calls = len(result["latencies_us"])
    # CPU per call: far less sensitive than calls/s to other work on the machine.
    per_call = (cpu["server_cores"] + cpu["db_cores"]) * seconds / max(calls, 1)
    cpu["cpu_us_per_call"] = round(per_call * 1e6, 1)
    return {
        "rpc": rpc,
        "inflight": inflight,
        "calls": calls,
        "calls_per_s": round(calls / seconds, 1),
        **latency_summary(result["latencies_us"]),
        "errors": result["errors"],
        "rss_mb": round(max(rss), 1),
        **cpu,
    }


class WatchersProc(_Child):
    def __init__(self, address: str, count: int, resume: bool) -> None:
        spec = {"address": address, "count": count, "resume": resume}
        super().__init__(["-m", "bench.watchers", json.dumps(spec)])
        self.count = count

    def wait_ready(self, address: str, timeout: float = 120) -> float:
        """Record sentinel events until every stream has had its first message."""
        started = time.monotonic()
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.DeploymentServiceStub(channel)
            n = 0
            while time.monotonic() - started < timeout:
                n += 1
                stub.RecordEvent(
                    pb.RecordEventRequest(
                        product_name="svc-000",
                        environment_name="production",
                        version=f"sentinel.{time.time_ns()}.{n}",
                        status=pb.DEPLOYMENT_STATUS_COMPLETED,
                    ),
                    timeout=30,
                )
                try:
                    self.receive(timeout=0.3)
                    return time.monotonic() - started
                except queue.Empty:
                    continue
        raise RuntimeError(f"{self.count} watchers not ready after {timeout}s")

    def window(self, t0: float, t1: float) -> None:
        self.send(f"WINDOW {t0} {t1}")

    def drain(self) -> float:
        self.send("DRAIN")
        return float(self.receive(timeout=180)["drained"])

    def stop(self) -> dict[str, Any]:
        try:
            self.send("STOP")
            result = self.receive(timeout=60)
        except (OSError, queue.Empty, RuntimeError):
            result = {}
        self.close()
        return result
