"""The null service: Versioner's gRPC stack with handlers that do no work.

Same grpc.aio server, same server options, same ObservingInterceptor with
GrpcMetrics (so the same per-call log line and counters), health and
reflection. The unary handlers return prebuilt responses shaped like the real
ones (bench.fixtures), so the difference to Versioner is the store and the
conversions, not the bytes on the wire.

WatchDeployments is a fan-out with no store: each RecordEvent builds one
WatchDeploymentsResponse (the request's product, version, environment and
extra_metadata on a prebuilt deployment) and puts it on every watcher's
bounded queue; a watcher whose queue overflows is ended with
RESOURCE_EXHAUSTED, as Versioner ends a slow consumer. A watcher that asks for
batches (max_events_per_message > 1) gets everything queued in one message.

`python -m bench.null_service --listen 127.0.0.1:0` logs the same JSON
"serving" line as Versioner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from bench.fixtures import null_responses
from versioner_grpc import logs
from versioner_grpc import server as versioner_server
from versioner_grpc.config import Config
from versioner_grpc.interceptors import ObservingInterceptor
from versioner_grpc.logs import fields
from versioner_grpc.metrics.grpc_metrics import GrpcMetrics

if TYPE_CHECKING:  # grpc's classes are not subscriptable at runtime
    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger("bench.null")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DeploymentService"].full_name


def server_options() -> list[tuple[str, int]]:
    """Versioner's own server options (whichever way this version of it builds them)."""
    build = getattr(versioner_server, "server_options", None)
    if build is not None:
        return list(build(Config()))
    limit = getattr(versioner_server, "MAX_MESSAGE_BYTES", 4 * 1024 * 1024)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ]


class _Watcher:
    __slots__ = ("overflowed", "queue")

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[pb.WatchDeploymentsResponse] = asyncio.Queue(size)
        self.overflowed = False


class NullDeploymentService(pb_grpc.DeploymentServiceServicer):
    def __init__(self, buffer: int) -> None:
        responses = null_responses()
        self.record_response = responses.record
        self.current_response = responses.current
        self.history_response = responses.history
        self.deployment = self.record_response.event.deployment
        self.buffer = buffer
        self.revision = 0
        self.watchers: set[_Watcher] = set()

    async def RecordEvent(
        self, request: pb.RecordEventRequest, context: Context
    ) -> pb.RecordEventResponse:
        if self.watchers:
            self._fan_out(request)
        return self.record_response

    async def GetCurrent(
        self, request: pb.GetCurrentRequest, context: Context
    ) -> pb.GetCurrentResponse:
        return self.current_response

    async def ListHistory(
        self, request: pb.ListHistoryRequest, context: Context
    ) -> pb.ListHistoryResponse:
        return self.history_response

    def _fan_out(self, request: pb.RecordEventRequest) -> None:
        self.revision += 1
        now = time.time_ns()
        message = pb.WatchDeploymentsResponse(revision=self.revision)
        event = message.event
        event.revision = self.revision
        event.event_id = request.event_id
        event.status = request.status
        event.event_time.FromNanoseconds(now)
        event.record_time.FromNanoseconds(now)
        event.deployment.CopyFrom(self.deployment)
        event.deployment.product_name = request.product_name
        event.deployment.version = request.version
        event.deployment.environment_name = request.environment_name
        event.deployment.status = request.status
        event.deployment.extra_metadata.CopyFrom(request.extra_metadata)
        for watcher in self.watchers:
            if watcher.overflowed:
                continue
            try:
                watcher.queue.put_nowait(message)
            except asyncio.QueueFull:
                watcher.overflowed = True

    async def WatchDeployments(
        self, request: pb.WatchDeploymentsRequest, context: Context
    ) -> AsyncIterator[pb.WatchDeploymentsResponse]:
        watcher = _Watcher(self.buffer)
        self.watchers.add(watcher)
        limit = request.max_events_per_message
        try:
            while True:
                if watcher.overflowed:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher fell behind")
                message = await watcher.queue.get()
                if limit <= 1:
                    yield message
                    continue
                # A batch: everything queued, in one message.
                batch = pb.WatchDeploymentsResponse(events=[message.event])
                while len(batch.events) < limit and not watcher.queue.empty():
                    batch.events.append(watcher.queue.get_nowait().event)
                batch.revision = batch.events[-1].revision
                yield batch
        finally:
            self.watchers.discard(watcher)


async def serve(listen: str, buffer: int) -> None:
    server = grpc.aio.server(
        interceptors=[ObservingInterceptor(GrpcMetrics(CollectorRegistry()))],
        options=server_options(),
    )
    pb_grpc.add_DeploymentServiceServicer_to_server(NullDeploymentService(buffer), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    port = server.add_insecure_port(listen)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = listen.rpartition(":")[0]
    log.info("serving", extra=fields(event="serving", grpc_address=f"{host}:{port}"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.null_service")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument(
        "--watch-buffer", type=int, default=Config().watch_buffer, help="per-watcher queue"
    )
    parser.add_argument("--log-level", default=Config().log_level)
    args = parser.parse_args()
    logs.configure(args.log_level)
    asyncio.run(serve(args.listen, args.watch_buffer))


if __name__ == "__main__":
    main()
