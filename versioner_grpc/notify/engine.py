"""The delivery engine: durable, at least once, in order per subscription.

Driven by the event log's revisions. Each subscription has a cursor in the
database; a worker (one asyncio task per subscription, so a slow or dead
endpoint delays nobody else, and never RecordEvent, which runs on the writer
thread) turns the events after its cursor into pending deliveries and moves the
cursor in one transaction, then sends the pending deliveries one at a time in
order, retrying each with backoff until it succeeds, fails for good, or 24 h
pass. A crash loses nothing: the cursor and pending deliveries are stored, and a
resent delivery carries the same X-Versioner-Delivery id.

Replicas: a subscription is delivered only by the replica holding its lease (a
row in notification_cursor, renewed every lease/3 seconds, expiring after
`lease_seconds`, 15 s by default). When its holder dies, another replica takes
it over within one lease period and continues from the stored cursor.

Wake-ups: this replica's commits (Store.subscribe, on the writer thread, hopped
to the loop thread-safely), PostgreSQL NOTIFY for other replicas' commits, and
a poll as a safety net.

Event sources: the event log (deployment events, cursor: a revision) and
governance's audit trail (blocked attempts, overrides, approval requests and
outcomes; cursor: an audit id), interleaved in commit order (see
NotificationStore.enqueue), both moved in the transaction that queues their
deliveries. Governance writes wake delivery like event commits do
(Store.subscribe_audit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable

from versioner_grpc.domain.clock import now_us
from versioner_grpc.domain.errors import NotFound, Unavailable
from versioner_grpc.domain.model import StoredEvent
from versioner_grpc.domain.notifications import (
    TEST_EVENT_TYPE,
    Attempt,
    Delivery,
    DeliveryState,
    RetryPolicy,
    Subscription,
    event_type,
)
from versioner_grpc.governance.notices import GovernanceEvent
from versioner_grpc.logs import fields
from versioner_grpc.metrics.notifications import NotificationMetrics
from versioner_grpc.notify import payloads
from versioner_grpc.notify.secrets import SecretBox, SecretUnavailable
from versioner_grpc.notify.sender import Outcome, Sender
from versioner_grpc.store.notifications import LeaseLost, NotificationStore, Settled
from versioner_grpc.store.store import Store

log = logging.getLogger("versioner.notify")
ENQUEUE_PAGE = 200
PENDING_BATCH = 100
FLUSH_EVERY = 20  # attempts logged per transaction, at most
UNAVAILABLE_PAUSE = 1.0
MAX_DEFER = 0.2  # seconds a delivery step waits at most for queued RecordEvents
DEFER_STEP = 0.002


def _renderer(
    sub: Subscription,
) -> Callable[[StoredEvent | GovernanceEvent, str], tuple[str, str] | None]:
    def render(event: StoredEvent | GovernanceEvent, delivery_id: str) -> tuple[str, str] | None:
        if isinstance(event, GovernanceEvent):
            e = event.entry
            if not sub.matches_place(event.kind, e.product, e.environment, event.environment_type):
                return None
            return payloads.render_governance(sub.fields.format, event)
        if not sub.matches(event_type(event.status), event.deployment):
            return None
        return payloads.render_event(sub.fields.format, event)

    return render


class NotificationEngine:
    """Runs the workers of the subscriptions this replica holds the lease of."""

    def __init__(
        self,
        store: Store,
        *,
        box: SecretBox,
        sender: Sender,
        metrics: NotificationMetrics,
        policy: RetryPolicy,
        lease_seconds: float = 15.0,
        poll_interval: float = 2.0,
        retention_days: float = 7.0,
    ) -> None:
        self.store = store
        self.notifications: NotificationStore = store.notifications
        self.box = box
        self.sender = sender
        self.metrics = metrics
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retention_days = retention_days
        self.holder = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rng = random.Random()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._manage_wake = asyncio.Event()
        self._version = 0  # bumped when subscriptions change: workers reload theirs
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_listening: Callable[[], None] = lambda: None
        self._closed = False

    @property
    def held(self) -> set[str]:
        """Subscriptions this replica delivers right now."""
        return {sid for sid, task in self._workers.items() if not task.done()}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.store.subscribe(self._committed)
        self.store.subscribe_audit(self._poke)
        self._tasks = [
            asyncio.create_task(self._manage(), name="notify-manage"),
            asyncio.create_task(self._prune(), name="notify-prune"),
        ]
        # Other replicas' commits (PostgreSQL LISTEN/NOTIFY) wake delivery too.
        self._stop_listening = self.store.on_external_write(self._poke)

    async def close(self) -> None:
        self._closed = True
        self._stop_listening()
        tasks = [*self._tasks, *self._workers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Unavailable):
            await self.notifications.release_leases(self.holder)  # hand over at once
        await self.sender.close()

    # Wake-ups -------------------------------------------------------------------

    def _committed(self, events: list[StoredEvent]) -> None:
        """On the writer thread, after a commit."""
        self._poke()

    def _poke(self) -> None:
        if self._loop is not None and not self._closed:
            self._loop.call_soon_threadsafe(self.wake)

    def wake(self) -> None:
        """New events or deliveries may be waiting (call on the loop)."""
        for event in self._wakes.values():
            event.set()

    def changed(self) -> None:
        """Subscriptions were created, changed or deleted: revisit the leases now."""
        self._version += 1
        self._manage_wake.set()
        self.wake()

    # Leases and workers ----------------------------------------------------------

    async def _manage(self) -> None:
        while True:
            self._manage_wake.clear()
            try:
                now = now_us()
                until = now + int(self.lease_seconds * 1e6)
                held = await self.notifications.acquire_leases(self.holder, now, until)
            except Unavailable as exc:
                log.warning("notification leases not renewed: %s", exc)
                held = None  # keep the workers: their writes are fenced by the lease
            except Exception:
                log.exception("notification lease manager failed")
                held = None
            if held is not None:
                for sid in list(self._workers):
                    if sid not in held or self._workers[sid].done():
                        self._workers.pop(sid).cancel()
                        self._wakes.pop(sid, None)
                for sid in held - set(self._workers):
                    self._wakes[sid] = asyncio.Event()
                    self._workers[sid] = asyncio.create_task(self._work(sid), name=f"notify-{sid}")
                    log.info(
                        "delivering subscription",
                        extra=fields(event="lease_taken", subscription=sid, holder=self.holder),
                    )
            # asyncio.timeout, not wait_for: no helper task comes and goes each cycle.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_seconds / 3):
                    await self._manage_wake.wait()

    async def _defer_to_ingestion(self) -> None:
        """RecordEvent first: while events wait for the writer, delivery steps aside.

        Bounded, so deliveries still progress under sustained load; the backlog
        shows as lag and drains when the burst is over.
        """
        waited = 0.0
        while self.store.writes_waiting() and waited < MAX_DEFER:
            await asyncio.sleep(DEFER_STEP)
            waited += DEFER_STEP

    async def _work(self, sid: str) -> None:
        wake = self._wakes[sid]
        sub: Subscription | None = None
        seen, loaded_at = -1, 0.0
        while True:
            try:
                if (
                    sub is None
                    or seen != self._version
                    or (time.monotonic() - loaded_at > self.lease_seconds / 3)
                ):  # changed here, or maybe on another replica
                    seen, loaded_at = self._version, time.monotonic()
                    sub = await self.notifications.get(sid)
                if not sub.fields.enabled:
                    return
                await self._defer_to_ingestion()
                batch = await self.notifications.pending(sid, PENDING_BATCH)
                if not batch:
                    wake.clear()
                    _, read = await self.notifications.enqueue(
                        sid, self.holder, now_us(), ENQUEUE_PAGE, _renderer(sub)
                    )
                    if read == 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.poll_interval):
                                await wake.wait()
                    continue
                # Sent in order; their attempts are logged together, in one
                # transaction, before the next batch is read (a crash in between
                # sends them again, same ids: at least once).
                done: list[Settled] = []
                wait = 0.0
                for delivery in batch:
                    wait = (delivery.next_attempt_time - now_us()) / 1e6
                    if wait > 0 or seen != self._version:
                        break
                    done.append(await self._attempt(sub, delivery))
                    if done[-1][2] is DeliveryState.PENDING:
                        break  # to be retried: read it again, with its attempts
                    if len(done) >= FLUSH_EVERY:
                        await self._flush(sid, done)
                    await self._defer_to_ingestion()
                await self._flush(sid, done)
                if wait > 0:
                    await asyncio.sleep(min(wait, self.lease_seconds / 3))
            except (LeaseLost, NotFound):
                return
            except Unavailable as exc:
                log.warning("notifications paused: %s", exc, extra=fields(subscription=sid))
                await asyncio.sleep(UNAVAILABLE_PAUSE)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivering subscription %s failed", sid)
                await asyncio.sleep(UNAVAILABLE_PAUSE)

    async def _send(self, sub: Subscription, delivery_id: str, kind: str, body: str) -> Outcome:
        try:
            secret = self.box.open(sub.sealed_secret)
        except SecretUnavailable as exc:
            return Outcome(0, 0, str(exc), "", "retry")
        return await self.sender.send(sub.fields.url, kind, delivery_id, body.encode(), secret)

    async def _flush(self, sid: str, done: list[Settled]) -> None:
        if done:
            await self.notifications.record_attempts(sid, self.holder, done)
            done.clear()

    async def _attempt(self, sub: Subscription, delivery: Delivery) -> Settled:
        """One attempt at `delivery`: what to log, and the delivery's new state."""
        outcome = await self._send(sub, delivery.id, delivery.event_type, delivery.body)
        now = now_us()
        result, error, state, next_at = outcome.result, outcome.error, DeliveryState.PENDING, 0
        number = len(delivery.attempts) + 1
        if result == "success":
            state = DeliveryState.SUCCEEDED
        elif result == "retry":
            delay = self.policy.delay(number, outcome.retry_after, self._rng)
            next_at = now + int(delay * 1e6)
            if next_at > delivery.create_time + int(self.policy.window * 1e6):
                result, state = "failed", DeliveryState.FAILED
                error = f"{error}; gave up: retried for {self.policy.window:g} s"
        else:
            state = DeliveryState.FAILED
        attempt = Attempt(
            number, now, outcome.http_status, outcome.latency_us, error,
            outcome.response_body, result,
        )  # fmt: skip
        self.metrics.observe(sub.fields.name, result, outcome.latency_us / 1e6)
        if state is DeliveryState.FAILED:
            log.warning(
                "delivery failed",
                extra=fields(
                    event="delivery_failed", subscription=sub.id, delivery=delivery.id,
                    error=error,
                ),
            )  # fmt: skip
        return delivery.id, attempt, state, next_at

    # Requests from the service ------------------------------------------------------

    async def send_test(self, sub: Subscription) -> Delivery:
        """Send a test message now (no retries) and log it as a delivery."""
        now = now_us()
        delivery_id = uuid.uuid4().hex
        body = payloads.render(
            sub.fields.format, TEST_EVENT_TYPE, 0, now, payloads.test_deployment(now)
        )
        outcome = await self._send(sub, delivery_id, TEST_EVENT_TYPE, body)
        result = "success" if outcome.result == "success" else "failed"
        self.metrics.observe(sub.fields.name, result, outcome.latency_us / 1e6)
        state = DeliveryState.SUCCEEDED if result == "success" else DeliveryState.FAILED
        attempt = Attempt(
            1, now_us(), outcome.http_status, outcome.latency_us, outcome.error,
            outcome.response_body, result,
        )  # fmt: skip
        return await self.notifications.add_delivery(
            sub.id, 0, TEST_EVENT_TYPE, body, now, delivery_id=delivery_id,
            settled=(attempt, state),
        )  # fmt: skip

    async def redeliver(self, delivery_id: str) -> Delivery:
        """Queue the delivery's event again, as a new delivery (new id, same body)."""
        original = await self.notifications.get_delivery(delivery_id)
        copy = await self.notifications.add_delivery(
            original.subscription_id, original.revision, original.event_type, original.body,
            now_us(), redelivery_of=original.id, event_record_time=original.event_record_time,
        )  # fmt: skip
        self.wake()
        return copy

    async def _prune(self) -> None:
        """Apply --delivery-retention-days at start, then hourly."""
        while True:
            cutoff = now_us() - int(self.retention_days * 86_400 * 1e6)
            try:
                pruned = await self.notifications.prune(cutoff)
                if pruned:
                    log.info("pruned deliveries", extra=fields(event="pruned", deleted=pruned))
            except Unavailable as exc:
                log.warning("delivery pruning skipped: %s", exc)
            await asyncio.sleep(3600)
