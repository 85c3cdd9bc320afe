"""DeploymentService: adapts protobuf requests to the domain and the store.

Thin on purpose: validation lives in domain.validation, rules in domain.lifecycle
and store.events, message conversion in convert, and error mapping in
errors_grpc (applied by the interceptor).

Some answers are sent pre-encoded (see encoded.py), so the servicer is
registered with handlers of its own (`add_to_server`) rather than the generated
add_DeploymentServiceServicer_to_server, whose serializers accept messages only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from versioner.v1 import deployment_service_pb2 as pb

from versioner_grpc import convert, pagetoken
from versioner_grpc.auth import OVERRIDE, has_scope, principal_name
from versioner_grpc.cache import LruCache
from versioner_grpc.domain.clock import now_us
from versioner_grpc.domain.errors import NotFound, PermissionDenied, invalid
from versioner_grpc.domain.filters import Filters, PageKey
from versioner_grpc.domain.model import Deployment, EnvironmentState, StoredEvent
from versioner_grpc.domain.validation import (
    validate_deployment_id,
    validate_event,
    validate_filters,
)
from versioner_grpc.encoded import PreEncoded, serialize
from versioner_grpc.store.store import Store
from versioner_grpc.watch import WatchHub

SERVICE = "versioner.v1.DeploymentService"
ENCODING_CACHE = 4096  # recent events' encoded watch messages
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
if TYPE_CHECKING:  # grpc's classes are not subscriptable at runtime
    Context = grpc.aio.ServicerContext[Any, Any]
WatchMessage = pb.WatchDeploymentsResponse | PreEncoded[pb.WatchDeploymentsResponse]


class DeploymentService:
    """The versioner.v1.DeploymentService servicer."""

    def __init__(self, store: Store, watch: WatchHub) -> None:
        self.store = store
        self.watch = watch
        self._encodings: LruCache[int, PreEncoded[pb.WatchDeploymentsResponse]] = LruCache(
            ENCODING_CACHE
        )

    async def RecordEvent(
        self, request: pb.RecordEventRequest, context: Context
    ) -> pb.RecordEventResponse:
        has_metadata = request.HasField("extra_metadata")
        event = validate_event(
            product=request.product_name,
            version=request.version,
            environment=request.environment_name,
            status=request.status,
            now=now_us(),
            event_time=convert.optional_us(request, "event_time"),
            event_id=request.event_id,
            deployment_id=request.deployment_id,
            deployed_by=request.deployed_by,
            scm_branch=request.scm_branch,
            scm_sha=request.scm_sha,
            build_url=request.build_url,
            metadata=convert.metadata_dict(request.extra_metadata) if has_metadata else None,
            metadata_bytes=request.extra_metadata.ByteSize() if has_metadata else 0,
            scm_commit_time=convert.optional_us(request, "scm_commit_time"),
            recorded_by=principal_name.get(),
            override_reason=request.override_reason,
        )
        if event.override_reason and not has_scope(OVERRIDE):
            raise PermissionDenied(f"override_reason needs the {OVERRIDE} scope")
        # The HTTP API calls without a gRPC context (and without a deadline).
        remaining = context.time_remaining() if context is not None else None
        result = await self.store.record(event, remaining)
        return pb.RecordEventResponse(event=convert.event(result.event), duplicate=result.duplicate)

    async def GetCurrent(
        self, request: pb.GetCurrentRequest, context: Context
    ) -> PreEncoded[pb.GetCurrentResponse]:
        filters = validate_filters(
            product=request.product_name, environment=request.environment_name
        )

        def encode(states: list[EnvironmentState], revision: int) -> bytes:
            response = pb.GetCurrentResponse(
                states=[convert.state(s) for s in states], revision=revision
            )
            return response.SerializeToString()

        return PreEncoded(await self.store.current(filters.product, filters.environment, encode))

    async def ListHistory(
        self, request: pb.ListHistoryRequest, context: Context
    ) -> PreEncoded[pb.ListHistoryResponse]:
        filters = _filters(request)
        if request.page_size < 0:
            raise invalid("page_size", "must not be negative")
        limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = pagetoken.decode(filters.key(), request.page_token) if request.page_token else None

        def encode(page: list[Deployment], next_key: PageKey | None, revision: int) -> bytes:
            response = pb.ListHistoryResponse(
                deployments=[convert.deployment(d) for d in page],
                next_page_token=pagetoken.encode(filters.key(), next_key) if next_key else "",
                revision=revision,
            )
            return response.SerializeToString()

        return PreEncoded(await self.store.history(filters, after, limit, encode))

    async def get_deployment(self, deployment_id: str) -> pb.Deployment:
        """One deployment by id (the HTTP API's GET /deployments/{id}); NOT_FOUND if none."""
        key = validate_deployment_id(deployment_id)
        found = await self.store.deployment(key)
        if found is None:
            raise NotFound(f"deployment_id: no deployment {key!r}")
        return convert.deployment(found)

    def watch_items(self, request: pb.WatchDeploymentsRequest) -> AsyncIterator[StoredEvent | int]:
        """Validate a watch request now; the events and progress revisions it streams.

        Shared by WatchDeployments and the HTTP event stream, so both resume alike.
        """
        filters = validate_filters(
            product=request.product_name,
            environment=request.environment_name,
            statuses=list(request.statuses),
        )
        after = request.after_revision if request.HasField("after_revision") else None
        if after is not None and after < 0:
            raise invalid("after_revision", "must not be negative")
        return self.watch.stream(filters, after)

    async def WatchDeployments(
        self, request: pb.WatchDeploymentsRequest, context: Context
    ) -> AsyncIterator[WatchMessage]:
        async for item in self.watch_items(request):
            if isinstance(item, int):
                yield pb.WatchDeploymentsResponse(revision=item, progress=pb.Progress())
            else:
                yield self._encoded(item)

    def _encoded(self, event: StoredEvent) -> PreEncoded[pb.WatchDeploymentsResponse]:
        """The event's WatchDeploymentsResponse, encoded once for every watcher.

        Fanning an event out to a thousand streams costs one conversion, not a
        thousand.
        """
        cached = self._encodings.get(event.revision)
        if cached is None:
            cached = PreEncoded.of(
                pb.WatchDeploymentsResponse(revision=event.revision, event=convert.event(event))
            )
            self._encodings.put(event.revision, cached)
        return cached


def add_to_server(service: DeploymentService, server: grpc.aio.Server) -> None:
    """Register `service` on `server`, with serializers that send PreEncoded as it is."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "RecordEvent": grpc.unary_unary_rpc_method_handler(
            service.RecordEvent,
            request_deserializer=pb.RecordEventRequest.FromString,
            response_serializer=serialize,
        ),
        "GetCurrent": grpc.unary_unary_rpc_method_handler(
            service.GetCurrent,
            request_deserializer=pb.GetCurrentRequest.FromString,
            response_serializer=serialize,
        ),
        "ListHistory": grpc.unary_unary_rpc_method_handler(
            service.ListHistory,
            request_deserializer=pb.ListHistoryRequest.FromString,
            response_serializer=serialize,
        ),
        "WatchDeployments": grpc.unary_stream_rpc_method_handler(
            service.WatchDeployments,
            request_deserializer=pb.WatchDeploymentsRequest.FromString,
            response_serializer=serialize,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _filters(request: pb.ListHistoryRequest) -> Filters:
    return validate_filters(
        product=request.product_name,
        environment=request.environment_name,
        statuses=list(request.statuses),
        version=request.version,
        deployed_by=request.deployed_by,
        since=convert.optional_us(request, "since"),
        until=convert.optional_us(request, "until"),
    )
