"""The deployment routes: the seed's POST /deployment-events/ and the reads.

Each route builds the protobuf request and calls the DeploymentService servicer
(or a method beneath it), so validation, lifecycle rules and the store are the
ones gRPC callers get. What is HTTP-only lives here: status words, Versioner's
field names, and where unknown fields go.

Unknown top-level fields of an event are kept, not dropped: they land in
`extra_metadata` under the reserved prefix `_unknown.` (`{"team": "x"}` is kept
as `extra_metadata["_unknown.team"]`). The fields Versioner's own clients send
(`deployed_by_email`, `scm_repository`, `build_number`, ...) are kept in
`extra_metadata` under their own names; a key the client put in
`extra_metadata` itself wins.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

import grpc
from fastapi import Depends, Header, Path, Query, Request
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, StreamingResponse
from versioner.v1 import deployment_service_pb2 as pb
from versioner_client.statuses import ACCEPTED_WORDS, parse_status

from versioner_grpc import convert
from versioner_grpc.auth import SERVICE
from versioner_grpc.cache import LruCache
from versioner_grpc.domain.errors import InvalidArgument, VersionerError, invalid
from versioner_grpc.domain.model import TERMINAL, Status, StoredEvent
from versioner_grpc.domain.validation import metadata_depth_violation
from versioner_grpc.encoded import PreEncoded
from versioner_grpc.rest import errors, schemas, views
from versioner_grpc.rest.routes import ApiRoute
from versioner_grpc.service import DeploymentService

M = TypeVar("M", bound=Message)
UNKNOWN_PREFIX = "_unknown."
CLIENT_FIELDS = (
    "deployed_by_email",
    "deployed_by_name",
    "scm_repository",
    "source_system",
    "build_number",
    "invoke_id",
)
# The unary servicer methods never read their context; HTTP calls have none.
NO_CONTEXT = cast("grpc.aio.ServicerContext[Any, Any]", None)

# The seed's three examples, as its users send them (also the OpenAPI examples).
SEED_EXAMPLES: list[dict[str, Any]] = [
    {
        "product_name": "my-service",
        "version": "1.2.3",
        "environment_name": "production",
        "status": "success",
        "deployed_by": "john.doe",
        "scm_branch": "main",
        "scm_sha": "abc123def456",
        "build_url": "https://ci.example.com/builds/123",
        "extra_metadata": {"deployment_duration_seconds": 120},
    },
    {
        "product_name": "api-gateway",
        "version": "2.0.0",
        "environment_name": "staging",
        "status": "started",
        "deployed_by": "jenkins",
        "scm_branch": "main",
        "scm_sha": "a1b2c3d4e5f6",
        "build_url": "https://ci.example.com/job/api-gateway/42/",
    },
    {
        "product_name": "billing",
        "version": "3.4.5",
        "environment_name": "production",
        "status": "failed",
        "deployed_by": "alice",
        "scm_branch": "release/3.4",
        "scm_sha": "9f8e7d6c5b4a",
        "build_url": "https://github.com/acme/billing/actions/runs/1234",
        "extra_metadata": {"region": "eu-west-1", "reason": "health check timeout"},
    },
]


class DeploymentEvent(BaseModel):
    """One status report, in the seed's JSON (and what Versioner's clients add)."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"examples": cast(Any, SEED_EXAMPLES)}
    )

    product_name: str = Field(description="the product, e.g. my-service")
    version: str = Field(description="the version being deployed, e.g. 1.2.3")
    environment_name: str = Field(description="the environment, e.g. production")
    status: str = Field(
        description="pending, started, completed, failed, aborted, or an alias: "
        + ", ".join(w for w in ACCEPTED_WORDS if w not in ("pending", "started"))
    )
    deployed_by: str | None = None
    scm_branch: str | None = None
    scm_sha: str | None = None
    build_url: str | None = None
    deploy_url: str | None = Field(None, description="alias of build_url")
    extra_metadata: dict[str, Any] | None = None
    event_time: datetime | None = Field(None, description="when it happened (default: now)")
    completed_at: datetime | None = Field(
        None, description="the event time of a terminal status (when event_time is not given)"
    )
    event_id: str | None = Field(None, description="idempotency key: a replay is a duplicate")
    deployment_id: str | None = Field(None, description="the deployment this event is about")
    scm_commit_time: datetime | None = None
    deployed_by_email: str | None = None
    deployed_by_name: str | None = None
    scm_repository: str | None = None
    source_system: str | None = None
    build_number: str | int | None = None
    invoke_id: str | None = None
    override_reason: str | None = Field(
        None, description="passes every rule; needs the deployments:override scope (audited)"
    )


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # no offset given: UTC
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def record_request(body: DeploymentEvent) -> pb.RecordEventRequest:
    """The RecordEventRequest a JSON event stands for.

    An unknown status word goes on as UNSPECIFIED, so the domain reports it
    together with every other violation (see `record_event`).
    """
    try:
        status = parse_status(body.status)
    except ValueError:
        status = pb.DEPLOYMENT_STATUS_UNSPECIFIED
    metadata: dict[str, Any] = {}
    for name, value in (body.model_extra or {}).items():
        metadata[UNKNOWN_PREFIX + name] = value
    for name in CLIENT_FIELDS:
        value = getattr(body, name)
        if value is not None:
            metadata[name] = value
    metadata.update(body.extra_metadata or {})
    # Checked before the Struct is built: building one from a deeply nested value
    # recurses without bound.
    if too_deep := metadata_depth_violation(metadata):
        raise invalid("extra_metadata", too_deep)
    request = pb.RecordEventRequest(
        product_name=body.product_name,
        version=body.version,
        environment_name=body.environment_name,
        status=status,
        deployed_by=body.deployed_by or "",
        scm_branch=body.scm_branch or "",
        scm_sha=body.scm_sha or "",
        build_url=body.build_url or body.deploy_url or "",
        event_id=body.event_id or "",
        deployment_id=body.deployment_id or "",
        override_reason=body.override_reason or "",
    )
    if metadata:
        request.extra_metadata.update(metadata)
    event_time = body.event_time
    if body.completed_at is not None:
        if status and Status(status) not in TERMINAL:
            raise invalid("completed_at", "is only for completed, failed or aborted")
        event_time = event_time or body.completed_at
    if event_time is not None:
        request.event_time.CopyFrom(_timestamp(event_time))
    if body.scm_commit_time is not None:
        request.scm_commit_time.CopyFrom(_timestamp(body.scm_commit_time))
    return request


def _with_status_words(exc: InvalidArgument, word: str) -> InvalidArgument:
    """The domain names the enum; an HTTP caller sent a word: say which words work."""
    try:
        parse_status(word)
        return exc
    except ValueError as bad:
        why = str(bad)
    return InvalidArgument([(f, why if f == "status" else w) for f, w in exc.violations])


def _statuses(words: list[str]) -> list[pb.DeploymentStatus]:
    found: list[pb.DeploymentStatus] = []
    for word in words:
        try:
            found.append(parse_status(word))
        except ValueError as exc:
            raise invalid("status", str(exc)) from exc
    return found


def _message(raw: object, kind: type[M]) -> M:
    """A servicer answer: cached reads come back already encoded."""
    if isinstance(raw, PreEncoded):
        return kind.FromString(raw.data)
    return cast(M, raw)


async def require_json(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """The body must be JSON: anything else is 415 before it is looked at."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(
            415, f"Content-Type must be application/json (got {content_type or 'none'!r})"
        )


async def require_json_when_body(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
    content_length: Annotated[str | None, Header(include_in_schema=False)] = None,
    transfer_encoding: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """An optional body (approve, reject): none at all is fine, any other must be JSON."""
    if (content_length or "0").strip() != "0" or transfer_encoding:
        await require_json(content_type)


ProductQ = Annotated[str, Query(description="a product name; empty = all")]
EnvironmentQ = Annotated[str, Query(description="an environment name; empty = all")]
StatusQ = Annotated[
    list[str], Query(description="repeatable: ?status=failed&status=aborted (words or aliases)")
]


def deployment_routes(service: DeploymentService) -> list[ApiRoute]:
    """POST /deployment-events/, the three reads and the event stream."""
    encodings = _SseEncodings()

    async def record_event(body: DeploymentEvent) -> JSONResponse:
        request = record_request(body)
        try:
            response = await service.RecordEvent(request, NO_CONTEXT)
        except InvalidArgument as exc:
            raise _with_status_words(exc, body.status) from None
        return JSONResponse(views.recorded(response))

    async def get_current(
        product_name: ProductQ = "", environment_name: EnvironmentQ = ""
    ) -> JSONResponse:
        raw = await service.GetCurrent(
            pb.GetCurrentRequest(product_name=product_name, environment_name=environment_name),
            NO_CONTEXT,
        )
        answer = _message(raw, pb.GetCurrentResponse)
        return JSONResponse(
            {"states": [views.state(s) for s in answer.states], "revision": answer.revision}
        )

    async def list_history(
        product_name: ProductQ = "",
        environment_name: EnvironmentQ = "",
        status: StatusQ = [],  # noqa: B006 (FastAPI copies defaults)
        version: str = "",
        deployed_by: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 50,
        cursor: Annotated[str, Query(description="next_cursor of the previous page")] = "",
    ) -> JSONResponse:
        request = pb.ListHistoryRequest(
            product_name=product_name,
            environment_name=environment_name,
            statuses=_statuses(status),
            version=version,
            deployed_by=deployed_by,
            page_size=limit,
            page_token=cursor,
        )
        if since is not None:
            request.since.CopyFrom(_timestamp(since))
        if until is not None:
            request.until.CopyFrom(_timestamp(until))
        answer = _message(await service.ListHistory(request, NO_CONTEXT), pb.ListHistoryResponse)
        return JSONResponse(
            {
                "deployments": [views.deployment(d) for d in answer.deployments],
                "next_cursor": answer.next_page_token or None,
                "revision": answer.revision,
            }
        )

    async def get_deployment(
        deployment_id: Annotated[str, Path(description="the deployment's id")],
    ) -> JSONResponse:
        return JSONResponse(views.deployment(await service.get_deployment(deployment_id)))

    async def watch(
        request: Request,
        product_name: ProductQ = "",
        environment_name: EnvironmentQ = "",
        status: StatusQ = [],  # noqa: B006
        after_revision: Annotated[
            int | None, Query(ge=0, description="first every stored event above it, then live")
        ] = None,
        last_event_id: Annotated[
            str | None, Header(description="resume point of a reconnecting EventSource")
        ] = None,
    ) -> StreamingResponse:
        watch_request = pb.WatchDeploymentsRequest(
            product_name=product_name,
            environment_name=environment_name,
            statuses=_statuses(status),
        )
        if last_event_id is not None and last_event_id.strip():
            if not last_event_id.strip().isdigit():
                raise invalid("last-event-id", "must be a revision (a non-negative integer)")
            watch_request.after_revision = int(last_event_id)  # wins: it is the newer point
        elif after_revision is not None:
            watch_request.after_revision = after_revision
        items = service.watch_items(watch_request)
        return StreamingResponse(
            _sse(items, request, encodings),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    reads = ("deployments",)
    record = ApiRoute(
        "POST",
        "/deployment-events/",
        record_event,
        "Record a deployment event (the seed's API)",
        rpc=SERVICE + "RecordEvent",
        tags=reads,
        dependencies=[Depends(require_json)],
        responses={
            200: {
                "description": "the deployment after the event, its revision, duplicate",
                "model": schemas.RecordedOut,
            },
            409: {"description": "conflicts with what is stored, or a concurrent deployment"},
            413: {"description": "body over the size limit"},
            415: {"description": "not JSON"},
            423: {"description": "a deploy freeze window"},
            428: {"description": "an approval or an earlier environment is missing"},
        },
    )
    return [
        record,
        # Without the slash too: a redirect would turn many clients' POST into a GET.
        replace(record, path="/deployment-events", include_in_schema=False),
        ApiRoute(
            "GET",
            "/deployments/current",
            get_current,
            "What runs where: current and latest per product and environment",
            rpc=SERVICE + "GetCurrent",
            tags=reads,
            responses={200: {"model": schemas.CurrentOut}},
        ),
        ApiRoute(
            "GET",
            "/deployments/watch",
            watch,
            "Server-Sent Events: id = revision; Last-Event-ID or after_revision resumes",
            rpc=SERVICE + "WatchDeployments",
            tags=reads,
            response_class=StreamingResponse,
            responses={
                200: {
                    "description": "`id: <revision>`, `event: deployment` (data: the event "
                    "and its deployment), `event: progress` (data: {revision}), "
                    "`event: error` (then it ends)",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                }
            },
        ),
        ApiRoute(
            "GET",
            "/deployments/",
            list_history,
            "Deployment history, newest first (keyset pages: cursor)",
            rpc=SERVICE + "ListHistory",
            tags=reads,
            responses={200: {"model": schemas.HistoryOut}},
        ),
        ApiRoute(
            "GET",
            "/deployments/{deployment_id:path}",
            get_deployment,
            "One deployment by id",
            rpc=SERVICE + "ListHistory",
            tags=reads,
            responses={
                200: {"model": schemas.DeploymentOut},
                404: {"description": "no deployment has this id"},
            },
        ),
    ]


class _SseEncodings:
    """Recent events' SSE messages, encoded once for every stream (like the gRPC watch)."""

    def __init__(self, size: int = 4096) -> None:
        self._messages: LruCache[int, str] = LruCache(size)

    def message(self, event: StoredEvent) -> str:
        cached = self._messages.get(event.revision)
        if cached is None:
            data = json.dumps(views.event(convert.event(event)), separators=(",", ":"))
            cached = f"id: {event.revision}\nevent: deployment\ndata: {data}\n\n"
            self._messages.put(event.revision, cached)
        return cached


async def _sse(
    items: AsyncIterator[list[StoredEvent] | int], request: Request, encodings: _SseEncodings
) -> AsyncIterator[str]:
    """Events as `event: deployment`, progress as `event: progress`; `id:` is the revision.

    An error after the stream began (a watcher too slow, a shutdown, a compacted
    revision) arrives as `event: error` with the HTTP error body; the client
    reconnects with Last-Event-ID and loses nothing.
    """
    yield "retry: 1000\n\n"
    try:
        async for item in items:
            if isinstance(item, int):
                yield f"id: {item}\nevent: progress\ndata: {json.dumps({'revision': item})}\n\n"
            else:
                for event in item:
                    yield encodings.message(event)
    except VersionerError as exc:
        code, body = errors.error_body(exc, request)
        body["status"] = code
        yield f"event: error\ndata: {json.dumps(body)}\n\n"
