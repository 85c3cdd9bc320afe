"""Tables, as Peewee models, and the versioned migrations that create them.

Models are defined per database (`define_models`) rather than bound globally, so
one process can hold several stores (tests run SQLite and PostgreSQL servers
side by side). All times are BIGINT microseconds since the epoch, UTC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import peewee as pw
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as migrate_schema


@dataclass(frozen=True)
class Models:
    """The tables of one database."""

    SchemaMigration: type[pw.Model]
    VersionBinding: type[pw.Model]
    Deployment: type[pw.Model]
    Event: type[pw.Model]
    IgnoredEvent: type[pw.Model]
    CurrentState: type[pw.Model]
    MetricCounter: type[pw.Model]
    MetricBucket: type[pw.Model]
    Approval: type[pw.Model]
    ApprovalDecision: type[pw.Model]
    AuditEntry: type[pw.Model]
    # Notifications (migration 4)
    NotificationSubscription: type[pw.Model]
    NotificationCursor: type[pw.Model]
    NotificationDelivery: type[pw.Model]
    NotificationAttempt: type[pw.Model]

    def all(self) -> list[type[pw.Model]]:
        return [
            self.SchemaMigration,
            self.VersionBinding,
            self.Deployment,
            self.Event,
            self.IgnoredEvent,
            self.CurrentState,
            self.MetricCounter,
            self.MetricBucket,
            self.Approval,
            self.ApprovalDecision,
            self.AuditEntry,
            *self.notification_tables(),
        ]

    def notification_tables(self) -> list[type[pw.Model]]:
        return [
            self.NotificationSubscription,
            self.NotificationCursor,
            self.NotificationDelivery,
            self.NotificationAttempt,
        ]


def define_models(database: pw.Database) -> Models:
    """Model classes bound to `database`."""

    class Base(pw.Model):
        class Meta:
            legacy_table_names = False

    Base._meta.database = database

    class SchemaMigration(Base):
        version = pw.IntegerField(primary_key=True)
        applied_at = pw.BigIntegerField()

    class VersionBinding(Base):
        """The first non-empty scm_sha seen for (product, version) is bound to it."""

        product = pw.CharField(max_length=255)
        version = pw.CharField(max_length=100)
        scm_sha = pw.CharField(max_length=64)

        class Meta:
            primary_key = pw.CompositeKey("product", "version")

    class Deployment(Base):
        id = pw.CharField(max_length=128, primary_key=True)
        product = pw.CharField(max_length=255)
        version = pw.CharField(max_length=100)
        environment = pw.CharField(max_length=100)
        environment_type = pw.SmallIntegerField()
        status = pw.SmallIntegerField()
        deployed_by = pw.CharField(max_length=255, default="")
        scm_branch = pw.CharField(max_length=255, default="")
        scm_sha = pw.CharField(max_length=64, default="")
        build_url = pw.TextField(default="")
        metadata = pw.TextField(default="{}")
        create_time = pw.BigIntegerField()
        update_time = pw.BigIntegerField()
        start_time = pw.BigIntegerField(null=True)
        end_time = pw.BigIntegerField(null=True)
        previous_version = pw.CharField(max_length=100, default="")
        is_rollback = pw.BooleanField(default=False)
        scm_commit_time = pw.BigIntegerField(null=True)
        # Governance (migration 3): what let it through.
        approval_id = pw.CharField(max_length=64, default="")
        override_reason = pw.TextField(default="")
        rule_violations = pw.TextField(default="")
        # The deployment's protobuf encoding (versioner.v1.Deployment), written in
        # the same statement as the columns above, so reads send stored bytes
        # instead of converting field by field. NULL for rows written before
        # migration 5 (or seeded without it): those are converted as before.
        encoded = pw.BlobField(null=True)

        class Meta:
            indexes = (
                # History pages (keyset on create_time, id), by each filter shape.
                (("create_time", "id"), False),
                (("product", "create_time", "id"), False),
                (("environment", "create_time", "id"), False),
                (("product", "environment", "create_time", "id"), False),
                # The open deployment of a (product, version, environment), newest
                # first, and earlier completions of a version (rollbacks): a few
                # rows per version, however long the history.
                (("product", "environment", "version", "create_time", "id"), False),
                # Previous completed deployment by end time (rollbacks).
                (("product", "environment", "status", "end_time"), False),
                # Governance flow rules: where a version completed (migration 3).
                (("product", "version", "status", "end_time"), False),
            )

    class Event(Base):
        """Append-only: every applied status report, with the deployment after it."""

        revision = pw.BigIntegerField(primary_key=True)
        event_id = pw.CharField(max_length=128, unique=True)
        deployment_id = pw.CharField(max_length=128, index=True)
        product = pw.CharField(max_length=255)
        environment = pw.CharField(max_length=100)
        status = pw.SmallIntegerField()
        event_time = pw.BigIntegerField()
        record_time = pw.BigIntegerField()
        snapshot = pw.TextField()
        recorded_by = pw.CharField(max_length=255, default="")

    class IgnoredEvent(Base):
        """Client event_ids of lifecycle duplicates, so that replays stay no-ops."""

        event_id = pw.CharField(max_length=128, primary_key=True)
        deployment_id = pw.CharField(max_length=128)
        product = pw.CharField(max_length=255)
        version = pw.CharField(max_length=100)
        environment = pw.CharField(max_length=100)
        status = pw.SmallIntegerField()
        event_time = pw.BigIntegerField()
        record_time = pw.BigIntegerField()

    class CurrentState(Base):
        """What runs where, kept in the event's transaction: GetCurrent is a lookup."""

        product = pw.CharField(max_length=255)
        environment = pw.CharField(max_length=100)
        environment_type = pw.SmallIntegerField()
        current_id = pw.CharField(max_length=128, null=True)
        current_end_time = pw.BigIntegerField(null=True)
        latest_id = pw.CharField(max_length=128)
        latest_create_time = pw.BigIntegerField()
        in_progress = pw.IntegerField(default=0)
        # Metric projection state: newest completion, first failure since then.
        last_completed_end = pw.BigIntegerField(default=0)
        failing_since = pw.BigIntegerField(default=0)

        class Meta:
            primary_key = pw.CompositeKey("product", "environment")
            indexes = ((("environment", "product"), False),)

    class MetricCounter(Base):
        """Metric projection: counts and sums per (product, environment, metric, status)."""

        product = pw.CharField(max_length=255)
        environment = pw.CharField(max_length=100)
        metric = pw.CharField(max_length=64)
        status = pw.SmallIntegerField(default=0)
        count = pw.BigIntegerField(default=0)
        sum = pw.DoubleField(default=0.0)
        last = pw.BigIntegerField(default=0)

        class Meta:
            primary_key = pw.CompositeKey("product", "environment", "metric", "status")

    class MetricBucket(Base):
        """Metric projection: histogram bucket counts (non-cumulative, per upper bound)."""

        product = pw.CharField(max_length=255)
        environment = pw.CharField(max_length=100)
        metric = pw.CharField(max_length=64)
        status = pw.SmallIntegerField(default=0)
        bucket = pw.SmallIntegerField()
        count = pw.BigIntegerField(default=0)

        class Meta:
            primary_key = pw.CompositeKey("product", "environment", "metric", "status", "bucket")

    class Approval(Base):
        """An approval request for (product, version, environment); state in the database."""

        id = pw.CharField(max_length=64, primary_key=True)
        product = pw.CharField(max_length=255)
        version = pw.CharField(max_length=100)
        environment = pw.CharField(max_length=100)
        state = pw.CharField(max_length=16)
        requested_by = pw.CharField(max_length=255)
        reason = pw.TextField(default="")
        required_approvals = pw.IntegerField()
        allow_self_approval = pw.BooleanField(default=False)
        create_time = pw.BigIntegerField()
        expire_time = pw.BigIntegerField()
        update_time = pw.BigIntegerField()

        class Meta:
            indexes = (
                (("product", "version", "environment", "create_time"), False),
                (("create_time", "id"), False),
                (("state", "expire_time"), False),
            )

    class ApprovalDecision(Base):
        """One principal's decision on one request (the key makes it once)."""

        approval_id = pw.CharField(max_length=64)
        principal = pw.CharField(max_length=255)
        decision = pw.CharField(max_length=16)
        comment = pw.TextField(default="")
        time = pw.BigIntegerField()

        class Meta:
            primary_key = pw.CompositeKey("approval_id", "principal")

    class AuditEntry(Base):
        """Append-only governance trail; ids increase in commit order (see governance/audit)."""

        id = pw.BigAutoField()
        time = pw.BigIntegerField()
        kind = pw.CharField(max_length=64)
        principal = pw.CharField(max_length=255, default="")
        product = pw.CharField(max_length=255, default="")
        version = pw.CharField(max_length=100, default="")
        environment = pw.CharField(max_length=100, default="")
        approval_id = pw.CharField(max_length=64, default="")
        deployment_id = pw.CharField(max_length=128, default="")
        rule_name = pw.CharField(max_length=100, default="")
        details = pw.TextField(default="{}")

        class Meta:
            indexes = ((("time",), False), (("principal", "id"), False))

    class NotificationSubscription(Base):
        """Where to send which events. List fields are JSON arrays."""

        id = pw.CharField(max_length=64, primary_key=True)
        name = pw.CharField(max_length=100, unique=True)
        url = pw.TextField()
        format = pw.SmallIntegerField()
        # "" (none), "plain:<secret>" or "fernet:<token>" (see notify/secrets.py).
        secret = pw.TextField(default="")
        products = pw.TextField(default="[]")
        environments = pw.TextField(default="[]")
        environment_types = pw.TextField(default="[]")
        event_types = pw.TextField(default="[]")
        enabled = pw.BooleanField(default=True)
        create_time = pw.BigIntegerField()
        update_time = pw.BigIntegerField()

    class NotificationCursor(Base):
        """Per subscription: the revision handed to delivery, and who delivers (a lease)."""

        subscription_id = pw.CharField(max_length=64, primary_key=True)
        revision = pw.BigIntegerField()
        lease_holder = pw.CharField(max_length=64, default="")
        lease_until = pw.BigIntegerField(default=0)
        # The second source: the last audit_entry id handed to delivery.
        audit_id = pw.BigIntegerField(default=0)

    class NotificationDelivery(Base):
        """One event for one subscription; `seq` is the order they are sent in."""

        seq = pw.AutoField()
        id = pw.CharField(max_length=64, unique=True)
        subscription_id = pw.CharField(max_length=64)
        revision = pw.BigIntegerField()
        event_type = pw.CharField(max_length=64)
        body = pw.TextField()
        state = pw.SmallIntegerField()
        create_time = pw.BigIntegerField()
        update_time = pw.BigIntegerField()
        next_attempt_time = pw.BigIntegerField()
        event_record_time = pw.BigIntegerField(default=0)
        redelivery_of = pw.CharField(max_length=64, default="")

        class Meta:
            indexes = (
                (("subscription_id", "state", "seq"), False),
                (("subscription_id", "seq"), False),
                (("state", "update_time"), False),
            )

    class NotificationAttempt(Base):
        seq = pw.AutoField()
        delivery_id = pw.CharField(max_length=64, index=True)
        number = pw.IntegerField()
        time = pw.BigIntegerField()
        http_status = pw.IntegerField(default=0)
        latency_us = pw.BigIntegerField(default=0)
        error = pw.TextField(default="")
        response_body = pw.TextField(default="")
        result = pw.CharField(max_length=16)

    return Models(
        SchemaMigration,
        VersionBinding,
        Deployment,
        Event,
        IgnoredEvent,
        CurrentState,
        MetricCounter,
        MetricBucket,
        Approval,
        ApprovalDecision,
        AuditEntry,
        NotificationSubscription,
        NotificationCursor,
        NotificationDelivery,
        NotificationAttempt,
    )


def _v1_initial(models: Models) -> None:
    models.SchemaMigration._meta.database.create_tables(
        [m for m in models.all() if m is not models.SchemaMigration]
    )


def _v2_recorded_by(models: Models) -> None:
    """Events remember which token recorded them (audit identity)."""
    db = models.Event._meta.database
    columns = {c.name for c in db.get_columns(models.Event._meta.table_name)}
    if "recorded_by" not in columns:  # v1 may have created it already
        field = models.Event._meta.fields["recorded_by"]
        migrator = SchemaMigrator.from_database(db)
        migrate_schema(migrator.add_column(models.Event._meta.table_name, "recorded_by", field))


def _v3_governance(models: Models) -> None:
    """Approvals, decisions, the audit trail, and what let each deployment through."""
    db = models.Deployment._meta.database
    db.create_tables([models.Approval, models.ApprovalDecision, models.AuditEntry], safe=True)
    table = models.Deployment._meta.table_name
    columns = {c.name for c in db.get_columns(table)}
    migrator = SchemaMigrator.from_database(db)
    for name in ("approval_id", "override_reason", "rule_violations"):
        if name not in columns:
            migrate_schema(migrator.add_column(table, name, getattr(models.Deployment, name)))
    db.execute_sql(
        f"CREATE INDEX IF NOT EXISTS {table}_product_version_status_end_time "
        f"ON {table} (product, version, status, end_time)"
    )


def _v4_notifications(models: Models) -> None:
    """Subscriptions, their cursors and leases, deliveries and attempts (DESIGN.md §7)."""
    models.SchemaMigration._meta.database.create_tables(models.notification_tables(), safe=True)


def _v5_encoded_deployments(models: Models) -> None:
    """Deployments keep their encoded protobuf beside their columns (DESIGN.md §9)."""
    db = models.Deployment._meta.database
    columns = {c.name for c in db.get_columns(models.Deployment._meta.table_name)}
    if "encoded" not in columns:  # v1 may have created it already
        migrator = SchemaMigrator.from_database(db)
        migrate_schema(
            migrator.add_column(
                models.Deployment._meta.table_name,
                "encoded",
                models.Deployment._meta.fields["encoded"],
            )
        )


def _v7_notify_audit_cursor(models: Models) -> None:
    """Each subscription's cursor in the audit trail (governance notifications).

    Existing subscriptions start at the audit trail's head, as a new one would.
    """
    db = models.NotificationCursor._meta.database
    table = models.NotificationCursor._meta.table_name
    columns = {c.name for c in db.get_columns(table)}
    if "audit_id" not in columns:  # v1 or v4 may have created it already
        migrator = SchemaMigrator.from_database(db)
        field = models.NotificationCursor._meta.fields["audit_id"]
        migrate_schema(migrator.add_column(table, "audit_id", field))
    audit_table = models.AuditEntry._meta.table_name
    db.execute_sql(
        f"UPDATE {table} SET audit_id = (SELECT COALESCE(MAX(id), 0) FROM {audit_table})"
    )


# Append only: a migration, once released, is never edited. v1 creates tables
# from the current models, so later steps check before they alter.
MIGRATIONS: list[tuple[int, Callable[[Models], None]]] = [
    (1, _v1_initial),
    (2, _v2_recorded_by),
    (3, _v3_governance),
    (4, _v4_notifications),
    (5, _v5_encoded_deployments),
    (7, _v7_notify_audit_cursor),  # 5 and 6 are reserved for other work
]


def migrate(models: Models, lock: Callable[[], None]) -> list[int]:
    """Apply the migrations not yet applied, in one transaction; return their numbers.

    `lock` serializes replicas starting together (an advisory lock on PostgreSQL).
    """
    db = models.SchemaMigration._meta.database
    with db.atomic():
        lock()
        db.create_tables([models.SchemaMigration], safe=True)
        table = models.SchemaMigration._meta.table_name
        done = {int(row[0]) for row in db.execute_sql(f"SELECT version FROM {table}").fetchall()}
        applied = []
        for number, step in MIGRATIONS:
            if number in done:
                continue
            step(models)
            models.SchemaMigration.create(version=number, applied_at=int(time.time() * 1e6))
            applied.append(number)
        return applied
