"""Notification tables: subscriptions, cursors with their leases, deliveries, attempts.

Reads run on a thread of their own (one connection), so they never take an
RPC reader thread; writes run on the writer thread between event batches, each
in a transaction of its own: on SQLite a second writing thread would wait for
the file lock in sleeps of milliseconds and slow RecordEvent down, and events
go first.

Fencing: the engine's writes (cursor moves, delivery outcomes) are conditional
on its lease, so a replica that lost its lease (paused, partitioned) cannot move
a cursor another replica now owns.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import peewee as pw

from versioner_grpc.domain.environments import environment_type
from versioner_grpc.domain.errors import FailedPrecondition, NotFound
from versioner_grpc.domain.filters import PageKey
from versioner_grpc.domain.model import EnvironmentType, StoredEvent
from versioner_grpc.domain.notifications import (
    Attempt,
    Delivery,
    DeliveryState,
    Format,
    Subscription,
    SubscriptionFields,
)
from versioner_grpc.governance import audit
from versioner_grpc.governance.audit import AuditEntry
from versioner_grpc.governance.notices import (
    GOVERNANCE_KINDS,
    GovernanceEvent,
    after_revision,
    approval_as_of,
)
from versioner_grpc.store import governance, reads
from versioner_grpc.store.sql import Sql

if TYPE_CHECKING:
    from versioner_grpc.store.database import Database
    from versioner_grpc.store.writer import Writer

T = TypeVar("T")
# An attempt to log: (delivery id, attempt, the delivery's new state, next attempt time).
Settled = tuple[str, Attempt, DeliveryState, int]
# render(event) -> (event type, body) for a subscription, or None when filtered out.
Render = Callable[[StoredEvent | GovernanceEvent, str], tuple[str, str] | None]


def audit_head(sql: Sql) -> int:
    """The newest audit entry id (0 for none)."""
    return int(sql.value("SELECT id FROM audit_entry ORDER BY id DESC LIMIT 1") or 0)


def governance_event(sql: Sql, entry: AuditEntry) -> GovernanceEvent | None:
    """What a notified audit entry shows, read as of that entry; None for other kinds."""
    kind = GOVERNANCE_KINDS.get(entry.kind)
    if kind is None:
        return None
    if entry.kind in (audit.DEPLOYMENT_BLOCKED, audit.DEPLOYMENT_OVERRIDE):
        env_type = environment_type(entry.environment)
        deployment = None
        if entry.kind == audit.DEPLOYMENT_OVERRIDE:
            # The overridden event is the next one in the log (same transaction).
            following = reads.events_after(sql, after_revision(entry), 1)
            if following and following[0].event_id == entry.details.get("event_id"):
                deployment = following[0].deployment
                env_type = deployment.environment_type
        return GovernanceEvent(kind, entry, env_type, deployment=deployment)
    approval = governance.get_approval(sql, entry.approval_id)
    return GovernanceEvent(
        kind,
        entry,
        environment_type(entry.environment),
        approval=approval_as_of(approval, entry) if approval is not None else None,
    )


class LeaseLost(Exception):
    """This replica no longer holds the subscription's lease: stop delivering it."""


def _subscription(row: Any, cursor: int) -> Subscription:
    return Subscription(
        id=row.id,
        fields=SubscriptionFields(
            name=row.name,
            url=row.url,
            format=Format(row.format),
            products=tuple(json.loads(row.products)),
            environments=tuple(json.loads(row.environments)),
            environment_types=tuple(EnvironmentType(t) for t in json.loads(row.environment_types)),
            event_types=tuple(json.loads(row.event_types)),
            enabled=bool(row.enabled),
        ),
        has_secret=bool(row.secret),
        cursor=cursor,
        create_time=row.create_time,
        update_time=row.update_time,
        sealed_secret=row.secret,
    )


def _columns(f: SubscriptionFields) -> dict[str, Any]:
    return {
        "name": f.name,
        "url": f.url,
        "format": int(f.format),
        "products": json.dumps(list(f.products)),
        "environments": json.dumps(list(f.environments)),
        "environment_types": json.dumps([int(t) for t in f.environment_types]),
        "event_types": json.dumps(list(f.event_types)),
        "enabled": f.enabled,
    }


def _delivery(row: Any, attempts: Sequence[Any] = ()) -> Delivery:
    return Delivery(
        id=row.id,
        subscription_id=row.subscription_id,
        revision=row.revision,
        event_type=row.event_type,
        state=DeliveryState(row.state),
        create_time=row.create_time,
        update_time=row.update_time,
        next_attempt_time=row.next_attempt_time,
        body=row.body,
        event_record_time=row.event_record_time,
        redelivery_of=row.redelivery_of,
        attempts=tuple(
            Attempt(
                a.number, a.time, a.http_status, a.latency_us, a.error, a.response_body, a.result
            )
            for a in attempts
        ),
    )


class NotificationStore:
    """The notification questions and changes, as async methods."""

    def __init__(self, database: Database, writer: Writer) -> None:
        self._writer = writer
        self.database = database
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="versioner-notify")
        # The models' columns are dynamic attributes: typed as Any on purpose.
        self.m: Any = database.models

    async def _run(self, fn: Callable[[], T], *, write: bool = True) -> T:
        """Writes on the writer thread (between event batches), reads on our own thread."""
        if write:
            return await self._writer.run_job(fn)
        db = self.database

        def transaction() -> T:
            with db.db.atomic():
                return fn()

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, db.call, transaction)

    def close(self) -> None:
        self._thread.submit(self.database.close).result()
        self._thread.shutdown(wait=True)

    def _name_free(self, name: str, own_id: str = "") -> None:
        S = self.m.NotificationSubscription
        clash = S.select(S.id).where((S.name == name) & (S.id != own_id)).first()
        if clash is not None:
            raise FailedPrecondition(
                "SUBSCRIPTION_NAME_TAKEN",
                f"a subscription named {name!r} exists already",
                {"name": name},
            )

    # Subscriptions --------------------------------------------------------------

    async def create(self, f: SubscriptionFields, sealed_secret: str, now: int) -> Subscription:
        """A new subscription, starting at the current head revision."""
        m = self.m

        def run() -> Subscription:
            self._name_free(f.name)
            sid = uuid.uuid4().hex
            m.NotificationSubscription.create(
                id=sid, secret=sealed_secret, create_time=now, update_time=now, **_columns(f)
            )
            sql = self.database.sql
            m.NotificationCursor.create(
                subscription_id=sid, revision=reads.head_revision(sql), audit_id=audit_head(sql)
            )
            return self._get(sid)

        return await self._run(run)

    def _get(self, sid: str) -> Subscription:
        S, C = self.m.NotificationSubscription, self.m.NotificationCursor
        row = S.get_or_none(S.id == sid)
        if row is None:
            raise NotFound(f"no subscription {sid!r}")
        cursor = C.get_or_none(C.subscription_id == sid)
        return _subscription(row, cursor.revision if cursor else 0)

    async def get(self, sid: str) -> Subscription:
        return await self._run(lambda: self._get(sid), write=False)

    async def subscriptions(self) -> list[Subscription]:
        S, C = self.m.NotificationSubscription, self.m.NotificationCursor

        def run() -> list[Subscription]:
            cursors = {c.subscription_id: c.revision for c in C.select()}
            rows = S.select().order_by(S.create_time, S.id)
            return [_subscription(r, cursors.get(r.id, 0)) for r in rows]

        return await self._run(run, write=False)

    async def update(
        self, sid: str, f: SubscriptionFields, sealed_secret: str | None, now: int
    ) -> Subscription:
        """Replace the fields (and the secret unless None). Re-enabling starts at the head."""
        S, C = self.m.NotificationSubscription, self.m.NotificationCursor

        def run() -> Subscription:
            before = self._get(sid)
            self._name_free(f.name, sid)
            values = {**_columns(f), "update_time": now}
            if sealed_secret is not None:
                values["secret"] = sealed_secret
            S.update(**values).where(S.id == sid).execute()
            if f.enabled and not before.fields.enabled:
                sql = self.database.sql
                C.update(revision=reads.head_revision(sql), audit_id=audit_head(sql)).where(
                    C.subscription_id == sid
                ).execute()
            return self._get(sid)

        return await self._run(run)

    async def delete(self, sid: str) -> None:
        m = self.m

        def run() -> None:
            S, D, A = m.NotificationSubscription, m.NotificationDelivery, m.NotificationAttempt
            if S.delete().where(S.id == sid).execute() == 0:
                raise NotFound(f"no subscription {sid!r}")
            C = m.NotificationCursor
            C.delete().where(C.subscription_id == sid).execute()
            ids = D.select(D.id).where(D.subscription_id == sid)
            A.delete().where(A.delivery_id.in_(ids)).execute()
            D.delete().where(D.subscription_id == sid).execute()

        await self._run(run)

    # Leases ---------------------------------------------------------------------

    async def acquire_leases(self, holder: str, now: int, until: int) -> set[str]:
        """Take or renew the lease of every enabled subscription that is free or ours.

        One conditional UPDATE per subscription: two replicas racing for a free
        lease cannot both win, the database serializes them.
        """
        S, C = self.m.NotificationSubscription, self.m.NotificationCursor

        def run() -> set[str]:
            enabled = [r.id for r in S.select(S.id).where(S.enabled == True)]  # noqa: E712
            held = set()
            for sid in enabled:
                taken = (
                    C.update(lease_holder=holder, lease_until=until)
                    .where(
                        (C.subscription_id == sid)
                        & ((C.lease_holder == holder) | (C.lease_until < now))
                    )
                    .execute()
                )
                if taken:
                    held.add(sid)
            return held

        return await self._run(run)

    async def release_leases(self, holder: str) -> None:
        C = self.m.NotificationCursor

        def run() -> None:
            C.update(lease_holder="", lease_until=0).where(C.lease_holder == holder).execute()

        await self._run(run)

    def _fence(self, sid: str, holder: str, now: int) -> int:
        """The cursor, if `holder` still holds the lease; else LeaseLost (fixed SQL)."""
        lock = " FOR UPDATE" if self.database.is_postgres else ""
        revision = self.database.sql.value(
            "SELECT revision FROM notification_cursor WHERE subscription_id = ? "
            f"AND lease_holder = ? AND lease_until >= ?{lock}",
            (sid, holder, now),
        )
        if revision is None:
            raise LeaseLost(sid)
        return int(revision)

    # Deliveries -----------------------------------------------------------------

    async def enqueue(
        self, sid: str, holder: str, now: int, limit: int, render: Render
    ) -> tuple[int, int]:
        """Turn what happened after the cursors into pending deliveries, and move them.

        Two sources, two cursors: the event log (revision) and governance's
        audit trail (audit id). They interleave in commit order: an audit entry
        goes right after the event revision it records as `after_revision`
        (both are written under the append lock), before the next event.
        Returns (deliveries created, items read). Everything happens in one
        transaction, so a crash either keeps the cursors and repeats nothing,
        or keeps both.
        """
        D, C = self.m.NotificationDelivery, self.m.NotificationCursor

        def run() -> tuple[int, int]:
            sql = self.database.sql
            cursor = self._fence(sid, holder, now)
            audit_cursor = int(
                sql.value(
                    "SELECT audit_id FROM notification_cursor WHERE subscription_id = ?", (sid,)
                )
                or 0
            )
            # Only as far as the events read: the head read in a later statement
            # (another snapshot, under READ COMMITTED) could be past an event
            # committed in between, and the cursor would skip it.
            events = reads.events_after(sql, cursor, limit)
            entries, _ = governance.list_audit(
                sql, since=None, until=None, principal="", kinds=(), after_id=audit_cursor,
                limit=limit,
            )  # fmt: skip
            if len(entries) == limit:  # more may follow: no event past the last entry read
                bound = after_revision(entries[-1])
                events = [e for e in events if e.revision <= bound]
            covered = events[-1].revision if events else cursor
            # A prefix (after_revision grows with the id): entries that follow
            # events not read yet wait for them.
            entries = [e for e in entries if after_revision(e) <= covered]
            audit_covered = entries[-1].id if entries else audit_cursor
            items: list[tuple[tuple[int, int, int], StoredEvent | GovernanceEvent]] = [
                ((e.revision, 0, 0), e) for e in events
            ]
            for entry in entries:
                gov = governance_event(sql, entry)
                if gov is not None:
                    items.append(((after_revision(entry), 1, entry.id), gov))
            items.sort(key=lambda item: item[0])
            created = 0
            for _, item in items:
                delivery_id = uuid.uuid4().hex
                rendered = render(item, delivery_id)
                if rendered is None:
                    continue
                kind, body = rendered
                D.create(
                    id=delivery_id,
                    subscription_id=sid,
                    revision=item.revision,
                    event_type=kind,
                    body=body,
                    state=int(DeliveryState.PENDING),
                    create_time=now,
                    update_time=now,
                    next_attempt_time=now,
                    event_record_time=(
                        item.record_time if isinstance(item, StoredEvent) else item.entry.time
                    ),
                )
                created += 1
            if covered > cursor or audit_covered > audit_cursor:
                C.update(revision=covered, audit_id=audit_covered).where(
                    C.subscription_id == sid
                ).execute()
            return created, len(events) + len(entries)

        return await self._run(run)

    async def pending(self, sid: str, limit: int) -> list[Delivery]:
        """The oldest deliveries of `sid` not yet settled, in order, with their attempts."""
        D, A = self.m.NotificationDelivery, self.m.NotificationAttempt

        def run() -> list[Delivery]:
            rows = list(
                D.select()
                .where((D.subscription_id == sid) & (D.state == int(DeliveryState.PENDING)))
                .order_by(D.seq)
                .limit(limit)
            )
            attempts: dict[str, list[Any]] = {r.id: [] for r in rows}
            if any(r.next_attempt_time != r.create_time for r in rows):  # retried ones only
                for a in A.select().where(A.delivery_id.in_(list(attempts))).order_by(A.number):
                    attempts[a.delivery_id].append(a)
            return [_delivery(r, attempts[r.id]) for r in rows]

        return await self._run(run, write=False)

    def _record(
        self, delivery_id: str, attempt: Attempt, state: DeliveryState, next_at: int
    ) -> None:
        """Log an attempt and set the delivery's state (fixed SQL: once per attempt)."""
        sql = self.database.sql
        sql.run(
            "INSERT INTO notification_attempt (delivery_id, number, time, http_status, "
            "latency_us, error, response_body, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (delivery_id, attempt.number, attempt.time, attempt.http_status, attempt.latency_us,
             attempt.error, attempt.response_body, attempt.result),
        )  # fmt: skip
        sql.run(
            "UPDATE notification_delivery SET state = ?, update_time = ?, next_attempt_time = ? "
            "WHERE id = ?",
            (int(state), attempt.time, next_at, delivery_id),
        )

    async def record_attempts(self, sid: str, holder: str, settled: Sequence[Settled]) -> None:
        """Log attempts and the deliveries' new states, fenced by the lease, in one transaction."""
        rows = list(settled)

        def run() -> None:
            self._fence(sid, holder, rows[-1][1].time)
            for delivery_id, attempt, state, next_at in rows:
                self._record(delivery_id, attempt, state, next_at)

        await self._run(run)

    async def add_delivery(
        self,
        sid: str,
        revision: int,
        kind: str,
        body: str,
        now: int,
        *,
        delivery_id: str = "",
        redelivery_of: str = "",
        event_record_time: int = 0,
        settled: tuple[Attempt, DeliveryState] | None = None,
    ) -> Delivery:
        """A delivery outside the cursor: a redelivery (pending), or a test already sent.

        `settled` records the attempt and final state in the same transaction, so
        a test message is never picked up (and sent again) by the engine.
        """
        D = self.m.NotificationDelivery

        def run() -> str:
            self._get(sid)
            did = delivery_id or uuid.uuid4().hex
            D.create(
                id=did,
                subscription_id=sid,
                revision=revision,
                event_type=kind,
                body=body,
                state=int(DeliveryState.PENDING),
                create_time=now,
                update_time=now,
                next_attempt_time=now,
                event_record_time=event_record_time,
                redelivery_of=redelivery_of,
            )
            if settled is not None:
                self._record(did, settled[0], settled[1], 0)
            return did

        did = await self._run(run)
        return await self.get_delivery(did)

    async def get_delivery(self, delivery_id: str) -> Delivery:
        D, A = self.m.NotificationDelivery, self.m.NotificationAttempt

        def run() -> Delivery:
            row = D.get_or_none(D.id == delivery_id)
            if row is None:
                raise NotFound(f"no delivery {delivery_id!r}")
            attempts = A.select().where(A.delivery_id == delivery_id).order_by(A.number)
            return _delivery(row, list(attempts))

        return await self._run(run, write=False)

    async def deliveries_page(
        self, sid: str, after: PageKey | None, limit: int
    ) -> tuple[list[Delivery], PageKey | None]:
        """Deliveries newest first (keyset on seq, the order they were queued in).

        The page key carries the last seq in its `create_time` slot: deliveries
        made in one transaction share a create time, their seq tells them apart.
        """
        D, A = self.m.NotificationDelivery, self.m.NotificationAttempt

        def run() -> tuple[list[Delivery], PageKey | None]:
            query = D.select()
            if sid:
                query = query.where(D.subscription_id == sid)
            if after is not None:
                query = query.where(D.seq < after.create_time)
            rows = list(query.order_by(D.seq.desc()).limit(limit + 1))
            page = rows[:limit]
            by_delivery: dict[str, list[Any]] = {r.id: [] for r in page}
            if page:
                for a in A.select().where(A.delivery_id.in_(list(by_delivery))).order_by(A.number):
                    by_delivery[a.delivery_id].append(a)
            out = [_delivery(r, by_delivery[r.id]) for r in page]
            more = len(rows) > limit
            return out, (PageKey(page[-1].seq, page[-1].id) if more and page else None)

        return await self._run(run, write=False)

    async def prune(self, older_than: int) -> int:
        """Delete settled deliveries (and their attempts) last updated before `older_than`."""
        D, A = self.m.NotificationDelivery, self.m.NotificationAttempt

        def run() -> int:
            old = D.select(D.id).where(
                (D.state != int(DeliveryState.PENDING)) & (D.update_time < older_than)
            )
            ids = [r.id for r in old]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                A.delete().where(A.delivery_id.in_(chunk)).execute()
                D.delete().where(D.id.in_(chunk)).execute()
            return len(ids)

        return await self._run(run)

    def lag_seconds_sync(self, now: int) -> dict[str, float]:
        """Per enabled subscription (by name): how long its oldest undelivered event waits.

        Runs on the scrape thread. Undelivered means a pending delivery, or an
        event or notified audit entry after the cursors not yet looked at; 0
        when caught up.
        """
        S, C, D = (
            self.m.NotificationSubscription,
            self.m.NotificationCursor,
            self.m.NotificationDelivery,
        )
        sql = self.database.sql

        def run() -> dict[str, float]:
            out: dict[str, float] = {}
            cursors = {c.subscription_id: (c.revision, c.audit_id) for c in C.select()}
            kinds = ", ".join("?" * len(GOVERNANCE_KINDS))
            for sub in S.select(S.id, S.name).where(S.enabled == True):  # noqa: E712
                oldest = (
                    D.select(pw.fn.MIN(D.event_record_time))
                    .where(
                        (D.subscription_id == sub.id)
                        & (D.state == int(DeliveryState.PENDING))
                        & (D.redelivery_of == "")
                        & (D.revision > 0)
                    )
                    .scalar()
                )
                if oldest is None:
                    cursor = cursors.get(sub.id, (0, 0))
                    waiting = [
                        sql.value(
                            "SELECT record_time FROM event WHERE revision > ? "
                            "ORDER BY revision LIMIT 1",
                            (cursor[0],),
                        ),
                        sql.value(
                            f"SELECT time FROM audit_entry WHERE id > ? AND kind IN ({kinds}) "
                            "ORDER BY id LIMIT 1",
                            (cursor[1], *GOVERNANCE_KINDS),
                        ),
                    ]
                    oldest = min((w for w in waiting if w is not None), default=None)
                out[sub.name] = max(0.0, (now - oldest) / 1e6) if oldest else 0.0
            return out

        return self.database.call(run)
