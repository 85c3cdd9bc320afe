"""A typed, synchronous Python client for versioner.v1.DeploymentService (and the
GovernanceService calls: approvals, ``check_rules``, ``audit_page``).

What it adds over the raw stubs:

- every ``record`` carries an ``event_id`` (uuid4 unless given) and is retried on
  UNAVAILABLE / DEADLINE_EXCEEDED with exponential backoff and jitter using the
  same ``event_id``, so a retry can never record a deployment twice (the server
  answers a replay with the original result and ``duplicate = true``);
- reads are retried the same way (they are idempotent);
- ``history`` follows ``next_page_token`` for you;
- ``watch`` survives reconnects: it resumes from the last revision it saw (events
  and progress messages alike) so the caller never sees a gap or a duplicate;
- failures arrive as ``versioner_client.errors`` exceptions with the server's
  field violations and ErrorInfo reason already parsed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import Message
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import deployment_service_pb2_grpc as pb_grpc
from versioner.v1 import governance_service_pb2 as gpb
from versioner.v1 import governance_service_pb2_grpc as gpb_grpc

from versioner_client.errors import Unavailable, VersionerError, from_rpc_error
from versioner_client.notifications import NotificationClient
from versioner_client.statuses import parse_status

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Events per watch message asked of the server: a busy store sends batches.
WATCH_BATCH = 500

# Codes after which the same request may simply be sent again. For RecordEvent
# this is only safe because the event_id stays the same across attempts.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A watch ended by these resumes from its last revision instead of failing:
# RESOURCE_EXHAUSTED is how the server cuts off a consumer that fell behind.
_RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})

_BACKOFF_BASE = 0.2
_BACKOFF_CAP = 5.0

# Reconnect quickly after a server restart: grpc's default first reconnect
# backoff is 1 s growing to 120 s, and RPCs fail fast while it waits, which
# would burn through our own retries before the channel even tried again.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", int(_BACKOFF_BASE * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(_BACKOFF_CAP * 1000)),
    # Keepalive that the server accepts (it allows pings every 10 s or more), so a
    # long watch stream notices a dead connection instead of hanging on it.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
)

Pem = bytes | str | PathLike[str]
StatusLike = str | int
T = TypeVar("T", bound=Message)


def backoff_delay(attempt: int, base: float = _BACKOFF_BASE, cap: float = _BACKOFF_CAP) -> float:
    """Exponential backoff with jitter: attempt 0 waits 0.1-0.2 s, doubling up to ``cap``.

    The jitter (50-100 % of the step) keeps many clients that lost the same
    server from reconnecting in lockstep.
    """
    return min(cap, base * 2.0**attempt) * random.uniform(0.5, 1.0)


def _read_pem(value: Pem | None) -> bytes | None:
    """PEM bytes from bytes, a PEM string, or a path to a PEM file."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    return Path(value).read_bytes()


def _timestamp_field(message: Message, field: str, value: datetime | None) -> None:
    """Set a Timestamp field from a datetime; naive datetimes are taken as UTC."""
    if value is None:
        return
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    getattr(message, field).FromDatetime(value.astimezone(UTC))


class VersionerClient:
    """A connection to a Versioner server. Use as a context manager, or call close().

    ``timeout`` bounds each attempt of a unary call (seconds); ``retries`` is how
    many more attempts a call gets after UNAVAILABLE / DEADLINE_EXCEEDED.
    ``root_certificates``, ``client_cert`` and ``client_key`` take PEM bytes or a
    path to a PEM file; giving any of them implies ``tls``.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        timeout: float = 10.0,
        retries: int = 5,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retries = max(0, retries)
        # Per-call metadata rather than call credentials: it also works over a
        # plaintext channel (a local server, or TLS terminated by a sidecar).
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        if tls or root_certificates or client_cert or client_key:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(root_certificates),
                private_key=_read_pem(client_key),
                certificate_chain=_read_pem(client_cert),
            )
            self._channel = grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.DeploymentServiceStub(self._channel)
        self._governance = gpb_grpc.GovernanceServiceStub(self._channel)

    def __enter__(self) -> VersionerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; open watch streams end."""
        self._channel.close()

    @property
    def notifications(self) -> NotificationClient:
        """NotificationService calls over this connection (subscriptions, deliveries)."""
        return NotificationClient(self._channel, self._unary)

    def _unary(self, method: Callable[..., T], request: Message) -> T:
        """Call ``method``, retrying connection failures with backoff; map errors."""
        attempt = 0
        while True:
            try:
                return method(request, timeout=self.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                if error.code() in _RETRYABLE and attempt < self.retries:
                    time.sleep(backoff_delay(attempt))
                    attempt += 1
                    continue
                raise from_rpc_error(error) from error

    def record(
        self,
        product: str,
        version: str,
        environment: str,
        status: StatusLike,
        *,
        deployed_by: str = "",
        scm_branch: str = "",
        scm_sha: str = "",
        build_url: str = "",
        metadata: Mapping[str, Any] | None = None,
        event_time: datetime | None = None,
        event_id: str | None = None,
        deployment_id: str = "",
        scm_commit_time: datetime | None = None,
        override_reason: str = "",
    ) -> pb.RecordEventResponse:
        """Record one status report about a deployment; safe to retry.

        ``status`` is an alias ("success", "failed"...), an enum name or value.
        Pass ``deployment_id`` to tie a later event (e.g. COMPLETED after
        STARTED) to the same deployment. After a retry, ``duplicate`` may be true
        because an earlier attempt had already been stored: the result is still
        that one stored event.
        """
        request = pb.RecordEventRequest(
            product_name=product,
            version=version,
            environment_name=environment,
            status=parse_status(status),
            deployed_by=deployed_by,
            scm_branch=scm_branch,
            scm_sha=scm_sha,
            build_url=build_url,
            event_id=event_id or str(uuid.uuid4()),
            deployment_id=deployment_id,
            override_reason=override_reason,
        )
        if metadata:
            request.extra_metadata.update(dict(metadata))
        _timestamp_field(request, "event_time", event_time)
        _timestamp_field(request, "scm_commit_time", scm_commit_time)
        return self._unary(self._stub.RecordEvent, request)

    def current(self, product: str = "", environment: str = "") -> pb.GetCurrentResponse:
        """What runs where: current and latest deployment per product/environment.

        Empty ``product`` / ``environment`` mean all of them.
        """
        request = pb.GetCurrentRequest(product_name=product, environment_name=environment)
        return self._unary(self._stub.GetCurrent, request)

    def history_page(
        self,
        product: str = "",
        environment: str = "",
        *,
        statuses: Iterable[StatusLike] = (),
        version: str = "",
        deployed_by: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListHistoryResponse:
        """One page of deployments, newest first (page_size 0 = the server's 50)."""
        request = pb.ListHistoryRequest(
            product_name=product,
            environment_name=environment,
            statuses=[parse_status(s) for s in statuses],
            version=version,
            deployed_by=deployed_by,
            page_size=page_size,
            page_token=page_token,
        )
        _timestamp_field(request, "since", since)
        _timestamp_field(request, "until", until)
        return self._unary(self._stub.ListHistory, request)

    def history(
        self,
        product: str = "",
        environment: str = "",
        *,
        statuses: Iterable[StatusLike] = (),
        version: str = "",
        deployed_by: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Iterator[pb.Deployment]:
        """Every matching deployment, newest first, fetching pages as you iterate.

        Stop early with ``itertools.islice``; later pages are then never fetched.
        ``page_token`` continues a listing from a page's ``next_page_token``.
        """
        statuses = [parse_status(s) for s in statuses]
        token = page_token
        while True:
            page = self.history_page(
                product,
                environment,
                statuses=statuses,
                version=version,
                deployed_by=deployed_by,
                since=since,
                until=until,
                page_size=page_size,
                page_token=token,
            )
            yield from page.deployments
            token = page.next_page_token
            if not token:
                return

    def watch(
        self,
        product: str = "",
        environment: str = "",
        statuses: Iterable[StatusLike] = (),
        after_revision: int | None = None,
        *,
        idle_timeout: float | None = 60.0,
        on_reconnect: Callable[[VersionerError, float, int], None] | None = None,
        max_events_per_message: int = WATCH_BATCH,
    ) -> Iterator[pb.Event]:
        """Deployment events in revision order, live, surviving reconnects.

        ``after_revision=None`` means events from now on; an int replays every
        stored event after it first. When the stream breaks (UNAVAILABLE, a
        slow-consumer RESOURCE_EXHAUSTED, or no message for ``idle_timeout``
        seconds although the server sends progress every few seconds) it
        reconnects with backoff from the last revision seen, so nothing is lost
        or repeated. Once the server has answered, it keeps reconnecting for as
        long as it takes; before that, ``retries`` bounds the attempts and
        ``Unavailable`` is raised. ``on_reconnect(error, delay, revision)`` is
        told about each reconnect (e.g. to print a notice).

        Other errors are raised, e.g. ``PreconditionFailed`` with reason
        REVISION_COMPACTED: list the history, then watch from its revision.

        The server is asked for up to ``max_events_per_message`` events per
        message (fewer messages when many events arrive at once); events are
        still handed out one at a time.
        """
        status_values = [parse_status(s) for s in statuses]
        reached = False
        last = after_revision
        if last is None:
            # "From now on" as a revision, so that even a stream that breaks
            # before its first message resumes without a gap.
            last = self.history_page(product, environment, page_size=1).revision
            reached = True
        failures = 0
        while True:
            request = pb.WatchDeploymentsRequest(
                product_name=product,
                environment_name=environment,
                statuses=status_values,
                after_revision=last,
                max_events_per_message=max_events_per_message,
            )
            call = self._stub.WatchDeployments(request, metadata=self._metadata)
            watchdog = _IdleWatchdog(call, idle_timeout)
            error: VersionerError
            try:
                for response in call:
                    watchdog.touch()
                    reached = True
                    failures = 0
                    for event in _events(response):
                        if event.revision > last:  # never hand out a duplicate
                            last = event.revision
                            yield event
                    last = max(last, response.revision)
                error = Unavailable(grpc.StatusCode.UNAVAILABLE, "the server ended the stream")
            except grpc.RpcError as rpc_error:
                if watchdog.fired:
                    error = Unavailable(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no message from the server for {idle_timeout:g}s",
                    )
                elif rpc_error.code() in _RESUMABLE:
                    error = from_rpc_error(rpc_error)
                else:
                    raise from_rpc_error(rpc_error) from rpc_error
            finally:
                watchdog.stop()
                call.cancel()
            if not reached and failures >= self.retries:
                raise error
            delay = backoff_delay(failures)
            failures += 1
            if on_reconnect is not None:
                on_reconnect(error, delay, last)
            time.sleep(delay)

    # ------------------------------------------------------------ governance

    def request_approval(
        self, product: str, version: str, environment: str, reason: str = ""
    ) -> gpb.RequestApprovalResponse:
        """Open an approval request (or get the open one for the same triple)."""
        request = gpb.RequestApprovalRequest(
            product_name=product, version=version, environment_name=environment, reason=reason
        )
        return self._unary(self._governance.RequestApproval, request)

    def approve(self, approval_id: str, comment: str = "") -> gpb.Approval:
        request = gpb.ApproveRequest(approval_id=approval_id, comment=comment)
        return self._unary(self._governance.Approve, request).approval

    def reject(self, approval_id: str, comment: str = "") -> gpb.Approval:
        request = gpb.RejectRequest(approval_id=approval_id, comment=comment)
        return self._unary(self._governance.Reject, request).approval

    def get_approval(self, approval_id: str, wait: float = 0.0) -> gpb.Approval:
        """The request; with ``wait`` seconds (at most 60), once decided or after that long."""
        request = gpb.GetApprovalRequest(approval_id=approval_id)
        if wait > 0:
            request.wait.FromNanoseconds(int(wait * 1e9))
        previous, self.timeout = self.timeout, self.timeout + max(0.0, wait)
        try:
            return self._unary(self._governance.GetApproval, request).approval
        finally:
            self.timeout = previous

    def wait_for_approval(self, approval_id: str, timeout: float) -> gpb.Approval:
        """Long-poll until the request is no longer PENDING, or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            approval = self.get_approval(approval_id, wait=min(max(left, 0.0), 30.0))
            if approval.state != gpb.APPROVAL_STATE_PENDING or left <= 0:
                return approval

    def list_approvals(
        self,
        product: str = "",
        environment: str = "",
        states: Iterable[int] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> gpb.ListApprovalsResponse:
        request = gpb.ListApprovalsRequest(
            product_name=product,
            environment_name=environment,
            states=[gpb.ApprovalState.Name(s) for s in states],
            page_size=page_size,
            page_token=page_token,
        )
        return self._unary(self._governance.ListApprovals, request)

    def check_rules(
        self, product: str, version: str, environment: str, deployment_id: str = ""
    ) -> gpb.CheckRulesResponse:
        """What RecordEvent would decide now for starting this deployment."""
        request = gpb.CheckRulesRequest(
            product_name=product,
            version=version,
            environment_name=environment,
            deployment_id=deployment_id,
        )
        return self._unary(self._governance.CheckRules, request)

    def audit_page(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        principal: str = "",
        kinds: Iterable[str] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> gpb.ListAuditResponse:
        request = gpb.ListAuditRequest(
            principal=principal, kinds=list(kinds), page_size=page_size, page_token=page_token
        )
        _timestamp_field(request, "since", since)
        _timestamp_field(request, "until", until)
        return self._unary(self._governance.ListAudit, request)


class _Cancellable(Protocol):
    def cancel(self) -> bool: ...


def _events(response: pb.WatchDeploymentsResponse) -> Sequence[pb.Event]:
    """The events of one watch message, single or batched."""
    if response.HasField("event"):
        return (response.event,)
    return response.events


class _IdleWatchdog:
    """Cancels a stream that has been silent too long.

    The server sends progress messages every few seconds, so a long silence
    means a dead connection (e.g. a half-open TCP socket after a network
    change) that would otherwise block the watcher forever.
    """

    def __init__(self, call: _Cancellable, timeout: float | None) -> None:
        self.fired = False
        self._call = call
        self._timeout = timeout
        self._last = time.monotonic()
        self._stopped = threading.Event()
        if timeout:
            threading.Thread(target=self._run, name="versioner-watch-idle", daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        assert self._timeout
        while not self._stopped.wait(min(1.0, self._timeout / 4)):
            if time.monotonic() - self._last > self._timeout:
                self.fired = True
                self._call.cancel()
                return
