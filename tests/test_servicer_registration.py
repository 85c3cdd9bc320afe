"""The servicer stands on its own: registered without the interceptor, every RPC works.

Pre-encoded answers (cached reads, fanned-out watch events) are sent by the
serializers `add_to_server` registers, not by a serializer swap in the
interceptor, so a server built with no interceptor at all answers correctly.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from versioner_grpc.service import DeploymentService, add_to_server
from versioner_grpc.store.store import Store
from versioner_grpc.watch import WatchHub

pytestmark = pytest.mark.postgres


async def _exercise(database_url: str) -> None:
    loop = asyncio.get_running_loop()
    store = Store(database_url)
    await loop.run_in_executor(None, store.open)
    hub = WatchHub(store, progress_interval=60, poll_interval=0.5)
    await hub.start()
    server = grpc.aio.server()  # no interceptors
    add_to_server(DeploymentService(store, hub), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DeploymentServiceStub(channel)
            recorded = await stub.RecordEvent(
                pb.RecordEventRequest(
                    product_name="shop",
                    version="1.0.0",
                    environment_name="production",
                    status=pb.DEPLOYMENT_STATUS_COMPLETED,
                ),
                timeout=10,
            )
            assert recorded.event.revision == 1

            current = await stub.GetCurrent(pb.GetCurrentRequest(), timeout=10)
            assert [(s.product_name, s.current.version) for s in current.states] == [
                ("shop", "1.0.0")
            ]
            assert current.revision == 1
            again = await stub.GetCurrent(pb.GetCurrentRequest(), timeout=10)  # cached answer
            assert again == current

            history = await stub.ListHistory(pb.ListHistoryRequest(), timeout=10)
            assert [d.version for d in history.deployments] == ["1.0.0"]
            assert history.revision == 1

            watch = stub.WatchDeployments(pb.WatchDeploymentsRequest(after_revision=0), timeout=10)
            first = await watch.read()
            watch.cancel()
            assert first.revision == 1
            assert first.event.deployment.version == "1.0.0"
    finally:
        await hub.close()
        await server.stop(0)
        await loop.run_in_executor(None, store.close)


def test_servicer_answers_every_rpc_without_the_interceptor(database_url: str) -> None:
    asyncio.run(_exercise(database_url))
