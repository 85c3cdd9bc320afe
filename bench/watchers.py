"""Watcher streams: `python -m bench.watchers '<json spec>'`.

Opens `count` WatchDeployments streams (live only, no filters), spread over
one connection per `per_channel` streams, and talks to the driver in lines:

- prints {"ready": n} once every stream has received a first message (the
  driver records sentinel events until then);
- on "WINDOW <t0> <t1>" (wall-clock seconds) it measures the messages received
  in [t0, t1] and, shortly after t1, prints delivered events, end-to-end
  latencies (receipt time minus extra_metadata["bench_sent"]) and cut-offs;
- on "DRAIN" it waits until no event has arrived for 0.5 s (a backlog has
  been delivered) and prints how long that took;
- on "STOP" (or end of input) it cancels every stream and prints totals.

Streams ask for batches (`batch` events per message, as versioner_client
does) and count every event of a message.

A stream ended with RESOURCE_EXHAUSTED (a slow consumer) reconnects after
100-200 ms, as versioner_client does: on Versioner from its last revision
(`resume`), on the null service live.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from typing import Any

import grpc
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

DRAIN = 1.0


class Watchers:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.count = int(spec["count"])
        self.resume = bool(spec.get("resume", True))
        # Events per message asked for (as versioner_client asks); servers that
        # predate batches ignore the field and send one event per message.
        self.batch = int(spec.get("batch", 500))
        self.ready = 0
        self.ready_event = asyncio.Event()
        self.window: tuple[float, float] | None = None
        self.delivered = 0
        self.latencies: list[int] = []
        self.total_events = 0
        self.cutoffs = 0
        self.errors: Counter[str] = Counter()
        self.stopping = False
        self.last_event_at = time.time()

    async def stream(self, stub: pb_grpc.DeploymentServiceAsyncStub) -> None:
        last: int | None = None
        first = True
        while not self.stopping:
            if last is not None and self.resume:
                request = pb.WatchDeploymentsRequest(
                    after_revision=last, max_events_per_message=self.batch
                )
            else:
                request = pb.WatchDeploymentsRequest(max_events_per_message=self.batch)
            call = stub.WatchDeployments(request)
            try:
                async for response in call:
                    now = time.time()
                    last = response.revision
                    if first:
                        first = False
                        self.ready += 1
                        if self.ready >= self.count:
                            self.ready_event.set()
                    events = (response.event,) if response.HasField("event") else response.events
                    if not events:
                        continue
                    self.total_events += len(events)
                    self.last_event_at = now
                    window = self.window
                    if window is not None and window[0] <= now <= window[1]:
                        self.delivered += len(events)
                        for event in events:
                            metadata = event.deployment.extra_metadata.fields
                            sent = metadata.get("bench_sent")
                            if sent is not None:
                                self.latencies.append(int((now - sent.number_value) * 1e6))
                return
            except grpc.aio.AioRpcError as exc:
                if self.stopping or exc.code() == grpc.StatusCode.CANCELLED:
                    return
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.cutoffs += 1
                else:
                    self.errors[exc.code().name] += 1
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        return
                await asyncio.sleep(random.uniform(0.1, 0.2))

    async def run(self) -> None:
        per_channel = int(self.spec.get("per_channel", 50))
        channels = []
        tasks = []
        for start in range(0, self.count, per_channel):
            channel = grpc.aio.insecure_channel(
                self.spec["address"],
                options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", start)],
            )
            channels.append(channel)
            stub = pb_grpc.DeploymentServiceStub(channel)
            for _ in range(min(per_channel, self.count - start)):
                tasks.append(asyncio.create_task(self.stream(stub)))
        await self.ready_event.wait()
        emit({"ready": self.ready})
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            words = line.split()
            if not words or words[0] == "STOP":
                break
            if words[0] == "DRAIN":
                started = time.time()
                while time.time() - self.last_event_at < 0.5 and time.time() - started < 120:
                    await asyncio.sleep(0.1)
                emit({"drained": round(time.time() - started, 2)})
            elif words[0] == "WINDOW":
                t0, t1 = float(words[1]), float(words[2])
                self.delivered, self.latencies = 0, []
                cutoffs, errors = self.cutoffs, sum(self.errors.values())
                self.window = (t0, t1)
                await asyncio.sleep(max(0.0, t1 - time.time()) + DRAIN)
                emit(
                    {
                        "delivered": self.delivered,
                        "seconds": t1 - t0,
                        "latencies_us": self.latencies,
                        "cutoffs": self.cutoffs - cutoffs,
                        "errors": sum(self.errors.values()) - errors,
                    }
                )
        self.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        emit(
            {
                "stopped": True,
                "events": self.total_events,
                "cutoffs": self.cutoffs,
                "errors": dict(self.errors),
            }
        )


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    asyncio.run(Watchers(json.loads(sys.argv[1])).run())


if __name__ == "__main__":
    main()
