"""The hand-written SQL's column lists come from one definition that matches the model."""

from __future__ import annotations

import peewee as pw

from versioner_grpc.store import current_state
from versioner_grpc.store.events import _INSERT_DEPLOYMENT, _MUTABLE, _UPDATE_DEPLOYMENT
from versioner_grpc.store.schema import define_models
from versioner_grpc.store.sql import DEPLOYMENT_FIELDS


def test_the_deployment_column_list_is_the_models_columns_in_order():
    models = define_models(pw.SqliteDatabase(":memory:"))
    columns = [f.column_name for f in models.Deployment._meta.sorted_fields]
    assert columns == [*DEPLOYMENT_FIELDS, "encoded"]


def test_deployment_statements_have_one_placeholder_per_named_column():
    assert _INSERT_DEPLOYMENT.count("?") == len(DEPLOYMENT_FIELDS) + 1
    assert _UPDATE_DEPLOYMENT.count("?") == len(_MUTABLE) + 2  # + encoded, + the id
    assert "create_time" not in _MUTABLE and "id" not in _MUTABLE


def test_the_current_state_columns_are_the_models_columns_beside_the_key():
    models = define_models(pw.SqliteDatabase(":memory:"))
    columns = [f.column_name for f in models.CurrentState._meta.sorted_fields]
    assert columns == ["product", "environment", "environment_type", *current_state.COLUMNS]
    assert current_state._INSERT.count("?") == len(columns)
