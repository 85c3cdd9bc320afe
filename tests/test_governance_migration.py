"""Migration 3 upgrades a database written before governance, keeping its deployments."""

from __future__ import annotations

from versioner.v1 import deployment_service_pb2 as pb

from tests.conftest import start_server
from versioner_grpc.store.database import Database


def _downgrade_to_v2(url: str) -> None:
    """The schema as migration 2 left it: no governance tables, columns or index."""
    database = Database(url)
    db = database.db
    with db.atomic():
        for table in ("approval", "approval_decision", "audit_entry"):
            db.execute_sql(f"DROP TABLE {table}")
        db.execute_sql("DROP INDEX deployment_product_version_status_end_time")
        for column in ("approval_id", "override_reason", "rule_violations"):
            db.execute_sql(f"ALTER TABLE deployment DROP COLUMN {column}")
        db.execute_sql("DELETE FROM schema_migration WHERE version = 3")
    database.close()


def test_migration_3_adds_governance_to_an_existing_database(config):
    running = start_server(config)
    try:
        running.stub.RecordEvent(
            pb.RecordEventRequest(
                product_name="shop",
                version="1",
                environment_name="production",
                status=pb.DEPLOYMENT_STATUS_COMPLETED,
            )
        )
    finally:
        running.stop()
    _downgrade_to_v2(config.database_url)
    upgraded = start_server(config)
    try:
        history = upgraded.stub.ListHistory(pb.ListHistoryRequest()).deployments
        assert [(d.product_name, d.approval_id, d.override_reason) for d in history] == [
            ("shop", "", "")
        ]
        columns = {c.name for c in upgraded.server.store.database.db.get_columns("deployment")}
        assert {"approval_id", "override_reason", "rule_violations"} <= columns
    finally:
        upgraded.stop()
