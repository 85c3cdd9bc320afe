"""DeploymentService: adapts protobuf requests to the domain and the store.

Thin on purpose: validation lives in domain.validation, rules in domain.lifecycle
and store.events, message conversion in convert, and error mapping in
errors_grpc (applied by the interceptor).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

import grpc
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc

from versioner_grpc import convert, pagetoken
from versioner_grpc.auth import principal_name
from versioner_grpc.domain.errors import invalid
from versioner_grpc.domain.model import StoredEvent
from versioner_grpc.domain.validation import Filters, validate_event, validate_filters
from versioner_grpc.store import reads
from versioner_grpc.store.sql import Sql
from versioner_grpc.store.store import Store
from versioner_grpc.store.writer import now_us
from versioner_grpc.watch import WatchHub

ENCODING_CACHE = 4096  # recent events' encoded watch messages
BATCH_CACHE = 256  # recent batches, joined
MAX_EVENTS_PER_MESSAGE = 1000
# A batch message stays well under the message size limit (4 MiB by default).
BATCH_BYTES = 1024 * 1024
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class DeploymentService(pb_grpc.DeploymentServiceServicer):
    """The versioner.v1.DeploymentService servicer."""

    def __init__(self, store: Store, watch: WatchHub) -> None:
        self.store = store
        self.watch = watch
        self._encodings = _WatchEncodings(BATCH_BYTES)

    async def RecordEvent(
        self, request: pb.RecordEventRequest, context: grpc.aio.ServicerContext
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
        )
        result = await self.store.record(event)
        return pb.RecordEventResponse(event=convert.event(result.event), duplicate=result.duplicate)

    async def GetCurrent(
        self, request: pb.GetCurrentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCurrentResponse:
        filters = validate_filters(
            product=request.product_name, environment=request.environment_name
        )

        def answer(sql: Sql) -> tuple[bytes, int]:
            states = reads.current_states(sql, filters.product, filters.environment)
            revision = reads.head_revision(sql)
            response = pb.GetCurrentResponse(revision=revision)
            for s in states:
                state = response.states.add(
                    product_name=s.product,
                    environment_name=s.environment,
                    environment_type=int(s.environment_type),
                )
                if s.current is not None:
                    _set(state.current, s.current)
                if s.latest is not None:
                    _set(state.latest, s.latest)
            return response.SerializeToString(), revision

        key = ("GetCurrent", filters.product, filters.environment)
        return await self.store.read_cached(key, answer)  # type: ignore[return-value]

    async def ListHistory(
        self, request: pb.ListHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListHistoryResponse:
        filters = _filters(request)
        if request.page_size < 0:
            raise invalid("page_size", "must not be negative")
        limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = pagetoken.decode(filters.key(), request.page_token) if request.page_token else None

        def answer(sql: Sql) -> tuple[bytes, int]:
            page, next_key = reads.history_page(sql, filters, after, limit)
            revision = reads.head_revision(sql)
            response = pb.ListHistoryResponse(
                next_page_token=pagetoken.encode(filters.key(), next_key) if next_key else "",
                revision=revision,
            )
            for stored in page:
                _set(response.deployments.add(), stored)
            return response.SerializeToString(), revision

        key = ("ListHistory", filters.key(), after, limit)
        return await self.store.read_cached(key, answer)  # type: ignore[return-value]

    async def WatchDeployments(
        self, request: pb.WatchDeploymentsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchDeploymentsResponse | bytes]:
        filters = validate_filters(
            product=request.product_name,
            environment=request.environment_name,
            statuses=list(request.statuses),
        )
        after = request.after_revision if request.HasField("after_revision") else None
        if after is not None and after < 0:
            raise invalid("after_revision", "must not be negative")
        if request.max_events_per_message < 0:
            raise invalid("max_events_per_message", "must not be negative")
        batched = request.max_events_per_message > 1
        limit = min(request.max_events_per_message, MAX_EVENTS_PER_MESSAGE) if batched else 1
        group = filters.key()
        async for item in self.watch.stream(filters, after, limit):
            if isinstance(item, int):
                yield pb.WatchDeploymentsResponse(revision=item, progress=pb.Progress())
            elif not batched:
                for event in item:
                    yield self._encodings.single(event)
            else:
                for message in self._encodings.batches(group, item):
                    yield message


class _WatchEncodings:
    """Encoded watch messages, built once for every stream that needs the same bytes.

    The interceptor passes bytes through unserialized, so fanning an event out to a
    thousand streams costs one conversion, not a thousand. A batch is the
    concatenation of its events' encoded `events` entries and the revision: the
    protobuf encoding of a message is the concatenation of its fields, so the
    parts are encoded by the library once per event and joined per batch, and a
    joined batch is kept for the other streams of the same filters (a filter group)
    that reach the same events.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._events: OrderedDict[int, tuple[pb.Event, bytes | None, bytes | None]] = OrderedDict()
        self._batches: OrderedDict[tuple[str, int, int, int], list[bytes]] = OrderedDict()

    def _entry(self, event: StoredEvent) -> tuple[pb.Event, bytes | None, bytes | None]:
        entry = self._events.get(event.revision)
        if entry is None:
            entry = (convert.event(event), None, None)
            self._events[event.revision] = entry
            if len(self._events) > ENCODING_CACHE:
                self._events.popitem(last=False)
        return entry

    def single(self, event: StoredEvent) -> bytes:
        """The one-event form: `revision` and `event`."""
        message, single, part = self._entry(event)
        if single is None:
            single = pb.WatchDeploymentsResponse(
                revision=event.revision, event=message
            ).SerializeToString()
            self._events[event.revision] = (message, single, part)
        return single

    def _part(self, event: StoredEvent) -> bytes:
        message, single, part = self._entry(event)
        if part is None:
            part = pb.WatchDeploymentsResponse(events=[message]).SerializeToString()
            self._events[event.revision] = (message, single, part)
        return part

    def batches(self, group: str, events: list[StoredEvent]) -> list[bytes]:
        """`events` as few batch messages as the message size limit allows."""
        key = (group, events[0].revision, events[-1].revision, len(events))
        cached = self._batches.get(key)
        if cached is not None:
            return cached
        messages: list[bytes] = []
        parts: list[bytes] = []
        size = 0
        last = events[0].revision
        for event in events:
            part = self._part(event)
            if parts and size + len(part) > self.max_bytes:
                messages.append(self._join(parts, last))
                parts, size = [], 0
            parts.append(part)
            size += len(part)
            last = event.revision
        messages.append(self._join(parts, last))
        self._batches[key] = messages
        if len(self._batches) > BATCH_CACHE:
            self._batches.popitem(last=False)
        return messages

    @staticmethod
    def _join(parts: list[bytes], revision: int) -> bytes:
        parts.append(pb.WatchDeploymentsResponse(revision=revision).SerializeToString())
        return b"".join(parts)


def _set(message: pb.Deployment, stored: reads.Stored) -> None:
    """Fill `message` from a stored deployment: parsed from its stored encoding (in
    the protobuf runtime's C code), or converted when the row has none."""
    if isinstance(stored, bytes):
        message.MergeFromString(stored)
    else:
        message.CopyFrom(convert.deployment(stored))


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
