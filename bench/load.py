"""The load process: `python -m bench.load`, one JSON command per stdin line.

Each command runs to completion on a fresh grpc.aio channel and answers one
JSON line on stdout. Latencies go back raw (microseconds) so the driver can
merge several load processes. Commands:

- unary: `inflight` closed loops calling `rpc` for `warmup` + `seconds`; only
  calls started inside the measured window count. Reads come cold or hot
  (see READS): Versioner keeps a revision-keyed cache of encoded answers.
- paced: RecordEvent at a steady `rate` from wall time `start_at` for
  `seconds` (at most `max_inflight` outstanding), each event carrying its send
  time in extra_metadata["bench_sent"] for the watchers' end-to-end latency.
- cycles: `count` WatchDeployments connect / read one message / cancel cycles,
  `concurrency` at a time (the leak check).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
import uuid
from collections import Counter
from typing import Any

import grpc
import h11
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from bench.fixtures import HISTORY_PAGE, PAIRS, PRODUCTS, sha_for

# The reads, by name. Versioner answers a repeated question from a cache of encoded
# responses while the head revision is unchanged, so each read comes two ways:
# - cold ("GetCurrent", "ListHistory"): questions the cache cannot answer. GetCurrent
#   walks all 1,000 pairs in one cycle (shared by the process's loops), more distinct
#   questions than the server's LRU cache holds (512 today); ListHistory asks for one
#   product's newest 50 with a distinct, unbounded `until` each time (same rows).
# - hot ("GetCurrent:hot", "ListHistory:hot"): the same 8 questions over and over.
READS = ("GetCurrent", "ListHistory", "GetCurrent:hot", "ListHistory:hot")
HOT_KEYS = 8
FAR_FUTURE = 4_102_444_800  # 2100-01-01: `until` this late filters nothing out

STATUS_STARTED = pb.DEPLOYMENT_STATUS_STARTED
STATUS_COMPLETED = pb.DEPLOYMENT_STATUS_COMPLETED


def record_request(
    product: str, env: str, version: str, status: pb.DeploymentStatus
) -> pb.RecordEventRequest:
    """A CI pipeline's report: every field a real one sends, a fresh event_id."""
    request = pb.RecordEventRequest(
        product_name=product,
        version=version,
        environment_name=env,
        status=status,
        deployed_by="bench",
        scm_branch="main",
        scm_sha=sha_for(product, version),
        build_url=f"https://ci.example.com/{product}/builds/{version}",
        event_id=uuid.uuid4().hex,
    )
    request.extra_metadata.update({"pipeline": "bench", "bench_sent": time.time()})
    return request


class _Recorder:
    """Deployments for RecordEvent load: half STARTED+COMPLETED pairs, half single COMPLETED.

    Versions are unique per (tag, slot, n), so each is a new deployment and a new
    version binding, spread over the seeded product/environment pairs.
    """

    def __init__(self, tag: str, slot: int) -> None:
        self.tag, self.slot, self.n = tag, slot, 0
        self.pending: list[tuple[str, str, str, pb.DeploymentStatus]] = []

    def next(self) -> pb.RecordEventRequest:
        if not self.pending:
            self.n += 1
            product, env = PAIRS[(self.slot * 7919 + self.n * 104_729) % len(PAIRS)]
            version = f"9.{self.tag}.{self.slot}.{self.n}"
            if self.n % 2:
                self.pending = [(product, env, version, STATUS_COMPLETED)]
            else:
                self.pending = [
                    (product, env, version, STATUS_STARTED),
                    (product, env, version, STATUS_COMPLETED),
                ]
        return record_request(*self.pending.pop(0))


async def unary(spec: dict[str, Any]) -> dict[str, Any]:
    rpc, inflight = spec["rpc"], int(spec["inflight"])
    tag = f"{spec.get('tag', 'x')}w{spec.get('worker', 0)}"
    async with grpc.aio.insecure_channel(spec["address"]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = pb_grpc.DeploymentServiceStub(channel)
        method = getattr(stub, rpc.split(":")[0])
        current = [pb.GetCurrentRequest(product_name=p, environment_name=e) for p, e in PAIRS]
        history = [pb.ListHistoryRequest(product_name=p, page_size=HISTORY_PAGE) for p in PRODUCTS]
        sequence = itertools.count(int(spec.get("worker", 0)) * len(PAIRS) // 2)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        measure_from = begin + float(spec["warmup"])
        stop_at = measure_from + float(spec["seconds"])
        latencies: list[int] = []
        errors: Counter[str] = Counter()

        async def slot(index: int) -> None:
            recorder = _Recorder(tag, index)
            while True:
                n = next(sequence)
                request: pb.RecordEventRequest | pb.GetCurrentRequest | pb.ListHistoryRequest
                if rpc == "RecordEvent":
                    request = recorder.next()
                elif rpc == "GetCurrent":
                    request = current[n % len(current)]
                elif rpc == "GetCurrent:hot":
                    request = current[n % HOT_KEYS]
                elif rpc == "ListHistory:hot":
                    request = history[n % HOT_KEYS]
                else:
                    request = pb.ListHistoryRequest(
                        product_name=PRODUCTS[n % len(PRODUCTS)], page_size=HISTORY_PAGE
                    )
                    request.until.seconds = FAR_FUTURE + n  # a new key each time: no cache hit
                started = loop.time()
                if started >= stop_at:
                    return
                try:
                    await method(request, timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if started >= measure_from:
                        errors[exc.code().name] += 1
                    continue
                if started >= measure_from:
                    latencies.append(int((loop.time() - started) * 1e6))

        await asyncio.gather(*(slot(i) for i in range(inflight)))
    return {"latencies_us": latencies, "errors": dict(errors), "seconds": float(spec["seconds"])}


async def paced(spec: dict[str, Any]) -> dict[str, Any]:
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    max_inflight = int(spec.get("max_inflight", 32))
    async with grpc.aio.insecure_channel(spec["address"]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = pb_grpc.DeploymentServiceStub(channel)
        recorder = _Recorder(spec.get("tag", "p"), 0)
        gate = asyncio.Semaphore(max_inflight)
        latencies: list[int] = []
        errors: Counter[str] = Counter()
        tasks: set[asyncio.Task[None]] = set()
        late = 0

        async def one(request: pb.RecordEventRequest) -> None:
            started = time.perf_counter()
            try:
                await stub.RecordEvent(request, timeout=30)
                latencies.append(int((time.perf_counter() - started) * 1e6))
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
            finally:
                gate.release()

        start_at = float(spec.get("start_at", time.time()))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        sent = 0
        total = int(rate * seconds)
        while sent < total:
            due = start_at + sent / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1
            await gate.acquire()
            task = asyncio.create_task(one(recorder.next()))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        sent_seconds = time.time() - start_at
        if tasks:
            await asyncio.wait(tasks, timeout=30)
    return {
        "sent": sent,
        "sent_per_s": sent / max(sent_seconds, 1e-9),
        "late": late,
        "latencies_us": latencies,
        "errors": dict(errors),
    }


async def cycles(spec: dict[str, Any]) -> dict[str, Any]:
    count, concurrency = int(spec["count"]), int(spec.get("concurrency", 50))
    after = spec.get("after_revision")
    errors: Counter[str] = Counter()
    done = 0
    async with grpc.aio.insecure_channel(spec["address"]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = pb_grpc.DeploymentServiceStub(channel)
        request = (
            pb.WatchDeploymentsRequest(after_revision=int(after))
            if after is not None
            else pb.WatchDeploymentsRequest()
        )
        started = time.perf_counter()
        remaining = count

        async def worker() -> None:
            nonlocal remaining, done
            while remaining > 0:
                remaining -= 1
                call = stub.WatchDeployments(request, timeout=30)
                try:
                    await call.read()
                    done += 1
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1
                finally:
                    call.cancel()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"cycles": done, "per_s": done / max(elapsed, 1e-9), "errors": dict(errors)}


def http_event(recorder: _Recorder) -> bytes:
    """The JSON a CI step posts for the recorder's next event (the seed's field names)."""
    request = recorder.next()
    return json.dumps(
        {
            "product_name": request.product_name,
            "version": request.version,
            "environment_name": request.environment_name,
            "status": "started" if request.status == STATUS_STARTED else "success",
            "deployed_by": request.deployed_by,
            "scm_branch": request.scm_branch,
            "scm_sha": request.scm_sha,
            "build_url": request.build_url,
            "event_id": request.event_id,
            "extra_metadata": {"pipeline": "bench"},
        }
    ).encode()


class _Connection:
    """One keep-alive HTTP/1.1 connection driven by h11 (uvicorn's own HTTP library).

    Lighter than a pooled client: at 64 in flight httpx's pool alone kept the
    load process's core busy, and the client, not the server, set the pace.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None or self.conn.our_state is not h11.IDLE:
            await self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        assert self.reader is not None
        headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        self.writer.write(
            self.conn.send(h11.Request(method="POST", target=path, headers=headers))
            + self.conn.send(h11.Data(data=body))
            + self.conn.send(h11.EndOfMessage())
        )
        status = 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("server closed the connection")
                self.conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                break
        self.conn.start_next_cycle()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


async def http(spec: dict[str, Any]) -> dict[str, Any]:
    """`inflight` closed loops of POST /deployment-events/, one keep-alive connection each."""
    inflight = int(spec["inflight"])
    tag = f"{spec.get('tag', 'h')}w{spec.get('worker', 0)}"
    host, _, port = spec["address"].rpartition(":")
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + float(spec["warmup"])
    stop_at = measure_from + float(spec["seconds"])
    latencies: list[int] = []
    errors: Counter[str] = Counter()

    async def slot(index: int) -> None:
        recorder = _Recorder(tag, index)
        connection = _Connection(host, int(port))
        try:
            while True:
                body = http_event(recorder)
                started = loop.time()
                if started >= stop_at:
                    return
                try:
                    code = await connection.post("/deployment-events/", body)
                    failed = "" if code == 200 else f"HTTP {code}"
                except (OSError, h11.ProtocolError) as exc:
                    failed = type(exc).__name__
                    await connection.close()
                if started < measure_from:
                    continue
                if failed:
                    errors[failed] += 1
                else:
                    latencies.append(int((loop.time() - started) * 1e6))
        finally:
            await connection.close()

    await asyncio.gather(*(slot(i) for i in range(inflight)))
    return {"latencies_us": latencies, "errors": dict(errors), "seconds": float(spec["seconds"])}


COMMANDS = {"unary": unary, "paced": paced, "cycles": cycles, "http": http}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        try:
            result = asyncio.run(COMMANDS[spec["op"]](spec))
        except Exception as exc:
            result = {"failed": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
