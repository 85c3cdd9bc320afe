"""Bulk seeding: N consistent deployments written straight into the tables.

Seeding a million deployments through the API would take hours, so rows are
generated in Python and written with one executemany transaction (SQLite) or
COPY (PostgreSQL), after the server has created the schema and while it is
stopped. Rows are what the server itself would have written:

- deployment: `codec.deployment_fields`; spread round-robin over the 1,000
  pairs of bench.fixtures, one every `span / n` seconds over the last year;
  90 % COMPLETED, 7 % FAILED, 3 % ABORTED; half reported as STARTED then a
  terminal event, half as a single terminal event (start unknown);
  previous_version filled in for completions.
- event: one or two per deployment, revisions 1..M, snapshot =
  `codec.snapshot` of the deployment right after the event.
- version_binding: one per (product, version), its scm_sha.
- current_state: current (newest completion) and latest per pair.
- metric_counter / metric_bucket (and the projection state on current_state):
  computed by running the server's own `store.projection.apply` over an
  in-memory SQLite database (or, for the older Peewee-model projection, by an
  in-memory mirror of its rules, checked equal to it).
"""

from __future__ import annotations

import bisect
import functools
import importlib
import inspect
import io
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import peewee as pw

from bench.fixtures import ENVIRONMENTS, PAIRS, sha_for
from versioner_grpc.domain.environments import environment_type
from versioner_grpc.domain.model import Deployment, Status
from versioner_grpc.store import codec, projection
from versioner_grpc.store.schema import define_models

US = 1_000_000
DAY = 86_400 * US
CHUNK = 20_000
DEPLOYED_BY = ("deploy-bot", "alice", "bob", "ci", "release-train")


@dataclass
class _Pair:
    current_id: str | None = None
    current_end: int | None = None
    current_version: str = ""
    latest_id: str = ""
    latest_create: int = 0
    environment_type: int = 0


@dataclass
class _MirrorProjection:
    """metric_counter and metric_bucket rows, as the Peewee-model projection.apply
    (`apply(models, before, after)`, state kept in metric_counter) would leave them."""

    counters: dict[tuple[str, str, str, int], list[Any]] = field(
        default_factory=dict
    )  # key -> [count, sum, last]
    buckets: dict[tuple[str, str, str, int, int], int] = field(
        default_factory=lambda: defaultdict(int)
    )

    def _counter(self, key: tuple[str, str, str, int]) -> list[Any]:
        row = self.counters.get(key)
        if row is None:
            row = self.counters[key] = [0, 0.0, 0]
        return row

    def bump(
        self, p: str, e: str, metric: str, status: int, value: float = 0.0, last: int = 0
    ) -> None:
        row = self._counter((p, e, metric, status))
        row[0] += 1
        row[1] += value
        row[2] = max(row[2], last)

    def observe(self, p: str, e: str, metric: str, status: int, seconds: float) -> None:
        self.bump(p, e, metric, status, value=seconds)
        bucket = bisect.bisect_left(projection.BUCKETS[metric], seconds)
        self.buckets[(p, e, metric, status, bucket)] += 1

    def state(self, p: str, e: str, metric: str) -> int:
        row = self.counters.get((p, e, metric, 0))
        return row[2] if row else 0

    def set_state(self, p: str, e: str, metric: str, value: int) -> None:
        self._counter((p, e, metric, 0))[2] = value

    def place_state(self, product: str, env: str) -> dict[str, int]:
        return {}

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        counters = [
            {"product": p, "environment": e, "metric": m, "status": st, "count": c, "sum": t,
             "last": last}
            for (p, e, m, st), (c, t, last) in self.counters.items()
        ]  # fmt: skip
        buckets = [
            {"product": p, "environment": e, "metric": m, "status": st, "bucket": b, "count": c}
            for (p, e, m, st, b), c in self.buckets.items()
        ]
        return {"metric_counter": counters, "metric_bucket": buckets}

    def apply(self, d: Deployment) -> None:
        """Mirror of projection.apply for a deployment reaching its terminal state."""
        assert d.end_time is not None
        p, e = d.product, d.environment
        older: Any = projection  # this projection's state names exist in older revisions only
        self.bump(p, e, projection.DEPLOYMENTS, int(d.status), last=d.end_time)
        if d.duration is not None:
            self.observe(p, e, projection.DURATION, int(d.status), d.duration / US)
        if d.status == Status.FAILED:
            if self.state(p, e, older.FAILING_SINCE) == 0:
                self.set_state(p, e, older.FAILING_SINCE, d.end_time)
            return
        if d.status != Status.COMPLETED:
            return
        last = self.state(p, e, older.LAST_COMPLETED)
        if d.end_time >= last:
            if last:
                self.observe(p, e, projection.BETWEEN, 0, (d.end_time - last) / US)
            self.set_state(p, e, older.LAST_COMPLETED, d.end_time)
        failing = self.state(p, e, older.FAILING_SINCE)
        if failing and d.end_time >= failing:
            self.observe(p, e, projection.RESTORE, 0, (d.end_time - failing) / US)
            self.set_state(p, e, older.FAILING_SINCE, 0)
        if d.scm_commit_time is not None and d.scm_commit_time <= d.end_time:
            lead = (d.end_time - d.scm_commit_time) / US
            self.observe(p, e, projection.LEAD_TIME, 0, lead)


class _RealProjection:
    """The server's own projection.apply(sql, state, before, after), run on :memory:.

    The state per place is a projection.MetricState the call returns; in older
    revisions it was events.PlaceState, and the call returned its changes as a dict.
    """

    def __init__(self) -> None:
        from versioner_grpc.store.sql import Sql

        self.db = pw.SqliteDatabase(":memory:")
        models = define_models(self.db)
        self.db.create_tables([models.MetricCounter, models.MetricBucket])
        self.sql = Sql(self.db)
        state = getattr(projection, "MetricState", None)
        if state is None:
            state = functools.partial(
                importlib.import_module("versioner_grpc.store.events").PlaceState, exists=True
            )
        self.places: dict[tuple[str, str], Any] = defaultdict(state)
        self.db.connect(reuse_if_open=True)
        self.db.execute_sql("BEGIN")

    def apply(self, d: Deployment) -> None:
        key = (d.product, d.environment)
        result: Any = projection.apply(self.sql, self.places[key], None, d)
        if isinstance(result, dict):  # older revisions: changes to the place's state
            for name, value in result.items():
                setattr(self.places[key], name, value)
        else:
            self.places[key] = result

    def place_state(self, product: str, env: str) -> dict[str, int]:
        place = self.places.get((product, env))
        if place is None:
            return {}
        return {
            name: getattr(place, name)
            for name in ("last_completed_end", "failing_since")
            if hasattr(place, name)
        }

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for table in ("metric_counter", "metric_bucket"):
            cursor = self.db.execute_sql(f"SELECT * FROM {table}")
            names = [c[0] for c in cursor.description]
            out[table] = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        self.db.execute_sql("ROLLBACK")
        self.db.close()
        return out


def _projection() -> _RealProjection | _MirrorProjection:
    first = next(iter(inspect.signature(projection.apply).parameters))
    return _RealProjection() if first == "sql" else _MirrorProjection()


def deployment_row(d: Deployment) -> dict[str, Any]:
    """The deployment's column values, as the store writes them."""
    fields = getattr(codec, "deployment_fields", None)
    row: dict[str, Any]
    if fields is not None:
        row = fields(d)
    else:
        sql = importlib.import_module("versioner_grpc.store.sql")
        names = [c.strip() for c in sql.DEPLOYMENT_COLUMNS.split(",")]
        row = dict(zip(names, codec.deployment_tuple(d), strict=True))
    # The stored encoding (migration 5), where this version of the server has one;
    # a table without the column ignores it.
    encode = getattr(importlib.import_module("versioner_grpc.convert"), "encoded_deployment", None)
    if encode is not None:
        row["encoded"] = encode(d)
    return row


def generate(n: int, seed: int = 1) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """Rows by table, in chunks; the last chunk carries the per-pair tables."""
    rng = random.Random(seed)
    now = time.time_ns() // 1000
    span = 365 * DAY
    t0 = now - span - DAY
    step = span // max(n, 1)
    pairs = [_Pair(environment_type=int(environment_type(e))) for _, e in PAIRS]
    metrics = _projection()
    revision = 0
    chunk: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i in range(n):
        index = i % len(PAIRS)
        k = i // len(PAIRS)
        product, env = PAIRS[index]
        version = f"1.{k // 1000}.{k % 1000}"
        sha = sha_for(product, version)
        if index % len(ENVIRONMENTS) == 0:  # each product's version, once
            chunk["version_binding"].append(
                {"product": product, "version": version, "scm_sha": sha}
            )
        create = t0 + i * step
        roll = rng.random()
        status = (
            Status.COMPLETED if roll < 0.90 else Status.FAILED if roll < 0.97 else Status.ABORTED
        )
        two_events = rng.random() < 0.5
        end = create + rng.randrange(30, 900) * US if two_events else create
        state = pairs[index]
        d = Deployment(
            id=f"{rng.getrandbits(128):032x}",
            product=product,
            version=version,
            environment=env,
            environment_type=environment_type(env),
            status=Status.STARTED if two_events else status,
            create_time=create,
            update_time=create,
            deployed_by=DEPLOYED_BY[i % len(DEPLOYED_BY)],
            scm_branch="main",
            scm_sha=sha,
            build_url=f"https://ci.example.com/{product}/builds/{i}",
            metadata={"pipeline": "seed", "build": i},
            start_time=create if two_events else None,
            scm_commit_time=create - rng.randrange(600, 86_400) * US,
        )
        if two_events:
            revision += 1
            chunk["event"].append(_event(revision, rng, d, Status.STARTED, create))
            d.status = status
        d.end_time = end
        d.update_time = end
        if status == Status.COMPLETED:
            d.previous_version = state.current_version
        revision += 1
        chunk["event"].append(_event(revision, rng, d, status, end))
        chunk["deployment"].append(deployment_row(d))
        metrics.apply(d)
        state.latest_id, state.latest_create = d.id, create
        if status == Status.COMPLETED and (state.current_end is None or end >= state.current_end):
            state.current_id, state.current_end, state.current_version = d.id, end, version
        if len(chunk["deployment"]) >= CHUNK:
            yield chunk
            chunk = defaultdict(list)
    for (product, env), state in zip(PAIRS, pairs, strict=True):
        if not state.latest_id:
            continue
        chunk["current_state"].append(
            {
                "product": product,
                "environment": env,
                "environment_type": state.environment_type,
                "current_id": state.current_id,
                "current_end_time": state.current_end,
                "latest_id": state.latest_id,
                "latest_create_time": state.latest_create,
                "in_progress": 0,
                **metrics.place_state(product, env),
            }
        )
    chunk.update(metrics.rows())
    yield chunk


def _event(
    revision: int, rng: random.Random, d: Deployment, status: Status, at: int
) -> dict[str, Any]:
    return {
        "revision": revision,
        "event_id": f"{rng.getrandbits(128):032x}",
        "deployment_id": d.id,
        "product": d.product,
        "environment": d.environment,
        "status": int(status),
        "event_time": at,
        "record_time": at,
        "snapshot": codec.snapshot(d),
    }


class _Tables:
    """Column lists of the live tables, with the models' defaults for what we do not fill."""

    def __init__(self, columns: dict[str, list[tuple[str, bool]]]) -> None:
        models = define_models(pw.SqliteDatabase(None))
        self.columns = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        for model in models.all():
            table = model._meta.table_name
            if table not in columns:
                continue
            by_column = {f.column_name: f for f in model._meta.sorted_fields}
            defaults = {}
            for name, nullable in columns[table]:
                f = by_column.get(name)
                if f is not None and f.default is not None:
                    defaults[name] = f.default() if callable(f.default) else f.default
                elif (f is not None and f.null) or (f is None and nullable):
                    defaults[name] = None
            self.columns[table] = [name for name, _ in columns[table]]
            self.defaults[table] = defaults

    def tuples(self, table: str, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        cols, defaults = self.columns[table], self.defaults[table]
        out = []
        for row in rows:
            values = []
            for c in cols:
                if c in row:
                    values.append(row[c])
                elif c in defaults:
                    values.append(defaults[c])
                else:
                    raise RuntimeError(f"seed: no value for {table}.{c} (schema changed?)")
            out.append(tuple(values))
        return out


def seed(url: str, n: int) -> dict[str, Any]:
    """Write n deployments into the (migrated, empty, not served) database at `url`."""
    started = time.perf_counter()
    if url.startswith("sqlite:"):
        counts = _seed_sqlite(_sqlite_path(url), n)
    else:
        counts = _seed_postgres(url, n)
    return {"deployments": n, "rows": counts, "seconds": round(time.perf_counter() - started, 1)}


def _sqlite_path(url: str) -> str:
    path = urlsplit(url).path
    return path[1:] if path.startswith("/") else path


def _seed_sqlite(path: str, n: int) -> dict[str, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=MEMORY")  # the server switches back to WAL
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    columns = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
        info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
        columns[table] = [(row[1], not row[3]) for row in info]
    tables = _Tables(columns)
    counts: dict[str, int] = defaultdict(int)
    conn.execute("BEGIN")
    for chunk in generate(n):
        for table, rows in chunk.items():
            cols = tables.columns[table]
            names = ", ".join(f'"{c}"' for c in cols)
            marks = ", ".join("?" * len(cols))
            sql = f'INSERT INTO "{table}" ({names}) VALUES ({marks})'
            conn.executemany(sql, tables.tuples(table, rows))
            counts[table] += len(rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return dict(counts)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea's hex input form
    return '"' + str(value).replace('"', '""') + '"'


def _seed_postgres(url: str, n: int) -> dict[str, int]:
    import psycopg2

    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        )
        columns: dict[str, list[tuple[str, bool]]] = defaultdict(list)
        for table, column, nullable in cur.fetchall():
            columns[table].append((column, nullable == "YES"))
    tables = _Tables(columns)
    counts: dict[str, int] = defaultdict(int)
    with conn.cursor() as cur:
        for chunk in generate(n):
            for table, rows in chunk.items():
                cols = tables.columns[table]
                buffer = io.StringIO()
                for values in tables.tuples(table, rows):
                    buffer.write(",".join(_csv_value(v) for v in values))
                    buffer.write("\n")
                buffer.seek(0)
                names = ", ".join(f'"{c}"' for c in cols)
                cur.copy_expert(f'COPY "{table}" ({names}) FROM STDIN WITH (FORMAT csv)', buffer)
                counts[table] += len(rows)
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.close()
    return dict(counts)
