"""Query benchmark: generates a day of telemetry (10M spans by default), then times the typed queries.

    .venv/bin/python benchmarks/query.py [--spans 10_000_000] [--root DIR] [--seed 1]
        [--files-per-hour 120] [--skip-generate] [--compact] [--runs 20] [--json FILE] [--no-measure]

**Generation.** Spans are built in DuckDB (vectorised, from hashes of the seed and row numbers, so
the same seed gives the same rows on any machine with the same DuckDB), cast to the exact Arrow schema
of `spans` and committed through `ParquetSink.write`, the call the collector's batcher makes. Twenty
services with ten operations each (seven HTTP routes, a database query, a cache call, an LLM call) are
called along 64 fixed call trees; a trace takes the first 1-11 spans of one tree, so parent/child
links, root spans and the service map are consistent. Durations are lognormal; about 10% of spans have
status ERROR; every span has about 11 attributes (the HTTP ones also fill the promoted columns,
`user.id` takes 100,000 values, `tenant` 50; LLM spans carry `gen_ai.*` tokens); a fifth of the spans
have two events, error spans an exception event. Traces are spread evenly over the 24 hours before
`--now` (an aligned hour). Each collector flush is emulated: every `3600 / --files-per-hour` seconds
of data are one `write` (alternating writers `w0` and `w1`, one WAL sequence number per flush), so an
hour partition holds about `--files-per-hour` small files, as a collector flushing every few seconds
makes them. Metrics for `metric_series` go the same way into `metrics`: per service a cumulative
counter `http.server.request.count` (4 series: 2 routes, status 200 or 500) and a cumulative histogram
`http.server.request.duration` (2 series), a point every 10 s. Files are written without fsync.

**Compaction.** `--compact` compacts the store after the first measurement (with
`mallard.storage.compact.compact_store(root)`, or that module's `maintain(root, now=...)` where there
is no `compact_store`; "compaction: not available" without the module), times it, and measures again.

**Latency.** Each query runs `--warmups` times, then `--runs` times, each time on fresh random inputs
(a trace id sampled from the files, a service, a route, a user; the same inputs in every run of the
benchmark), through one `mallard.query.Store`; the table gives the median and 95th percentile against
the targets. Queries cover the 24 hours before `--now`.

Generating 10M spans takes about 6 minutes and 2.5 GB of memory on a 2-core machine (500k-span
chunks) and 830 MB of disk. `--root` keeps the store for `--skip-generate` runs; without it the store
lives in a temporary directory that is deleted at the end.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from aligned import print_aligned  # benchmarks/aligned.py (a script's folder is on sys.path)

from mallard.collector.pricing import add_costs, default_prices
from mallard.query import Store
from mallard.query.metrics import metric_series
from mallard.query.traces import get_trace, search_traces, services
from mallard.storage.layout import table_dir
from mallard.storage.schema import SCHEMAS
from mallard.storage.writer import ParquetSettings, ParquetSink

DEFAULT_NOW: Final = datetime(2026, 11, 20, tzinfo=UTC)
HOUR_NS: Final = 3_600_000_000_000
DAY_NS: Final = 24 * HOUR_NS
POINT_INTERVAL_NS: Final = 10_000_000_000  # metrics: a point every 10 s
TREES: Final = 64  # call trees a trace follows
MAX_SPANS: Final = 11  # spans of a trace: 1..MAX_SPANS, uniformly (mean 6)
INSTANCES: Final = 3  # service instances (resources) per service

SERVICES: Final = (
    "frontend", "checkout", "cart", "payment", "shipping", "email", "currency", "recommendation",
    "ad", "product-catalog", "quote", "fraud-detection", "accounting", "inventory", "auth", "search",
    "user-profile", "notification", "llm-gateway", "feature-store",
)  # fmt: skip
ENTRY_SERVICES: Final = (
    ("frontend", 50),
    ("llm-gateway", 15),
    ("search", 10),
    ("auth", 10),
    ("accounting", 15),
)
# Operations 0-6 of every service: HTTP server spans (method, route under /api/v1/<service>).
HTTP_OPERATIONS: Final = (
    ("GET", "items"), ("GET", "items/{id}"), ("GET", "search"), ("POST", "items"),
    ("PUT", "items/{id}"), ("DELETE", "items/{id}"), ("GET", "health"),
)  # fmt: skip
MODELS: Final = ("gpt-4o-mini", "gpt-4o", "claude-sonnet-4", "llama-3.1-70b")
USERS: Final = 100_000
TENANTS: Final = 50


def _route(service: str, op: int) -> str:
    return f"/api/v1/{service}/{HTTP_OPERATIONS[op][1]}"


# ---------------------------------------------------------------------------------------------------
# Small dimension tables (built in Python from the seed, joined to the generated rows in DuckDB)
# ---------------------------------------------------------------------------------------------------
def _operations() -> pa.Table:
    """One row per (service, operation): 20 x 10 operations with their span name and attributes."""
    rows: list[dict[str, Any]] = []
    for s, service in enumerate(SERVICES):
        table = service.replace("-", "_")
        for op in range(10):
            row: dict[str, Any] = {"svc": s, "op": op, "method": None, "route": None}
            row |= {"statement": None, "model": None}
            if op < len(HTTP_OPERATIONS):
                method = HTTP_OPERATIONS[op][0]
                row |= {"family": "http", "method": method, "route": _route(service, op)}
                row["name"] = f"{method} {row['route']}"
            elif op == 7:
                row |= {"family": "db", "name": f"SELECT {table}"}
                row["statement"] = f"SELECT * FROM {table} WHERE id = $1"
            elif op == 8:
                row |= {"family": "redis", "name": "GET", "statement": f"GET {table}:*"}
            else:
                model = MODELS[s % len(MODELS)]
                row |= {"family": "llm", "name": f"chat {model}", "model": model}
            rows.append(row)
    return pa.Table.from_pylist(rows)


def _trees(seed: int) -> pa.Table:
    """The call trees: (tree, position) → parent position, service, operation, kind.

    Position 0 is the root, a SERVER span of an entry service. Every later position hangs under an
    earlier server span: either a SERVER span of another service (an edge of the service map) or a
    CLIENT span of the parent's own service (database, cache or LLM call).
    """
    rng = random.Random(seed * 7919 + 1)
    names, weights = [name for name, _ in ENTRY_SERVICES], [weight for _, weight in ENTRY_SERVICES]
    rows: list[dict[str, Any]] = []
    for tree in range(TREES):
        root_svc = SERVICES.index(rng.choices(names, weights)[0])
        placed = [(0, root_svc)]  # server positions: (position, service)
        rows.append(
            {"tree": tree, "p": 0, "parent": -1, "svc": root_svc, "op": rng.randrange(7), "kind": "SERVER"}
        )
        for p in range(1, MAX_SPANS):
            parent, parent_svc = rng.choice(placed)
            if rng.random() < 0.55:
                svc = rng.choice([s for s in range(len(SERVICES)) if s != parent_svc])
                op, kind = rng.randrange(7), "SERVER"
                placed.append((p, svc))
            else:
                svc, kind = parent_svc, "CLIENT"
                llm = 0.7 if SERVICES[svc] == "llm-gateway" else 0.05
                op = rng.choices((7, 8, 9), (0.6 - llm / 2, 0.4 - llm / 2, llm))[0]
            rows.append({"tree": tree, "p": p, "parent": parent, "svc": svc, "op": op, "kind": kind})
    return pa.Table.from_pylist(rows)


def _resources(seed: int) -> pa.Table:
    """One resource per (service, instance), as the OTel SDK of each process would send it."""
    rng = random.Random(seed * 7919 + 2)
    keys = [
        "service.name", "service.namespace", "service.version", "service.instance.id", "host.name",
        "deployment.environment.name", "telemetry.sdk.name", "telemetry.sdk.language",
        "telemetry.sdk.version", "process.pid",
    ]  # fmt: skip
    rows = []
    for s, service in enumerate(SERVICES):
        for instance in range(INSTANCES):
            version, instance_id = (
                f"2.{rng.randint(0, 40)}.{rng.randint(0, 9)}",
                f"{rng.getrandbits(128):032x}",
            )
            values = [
                service, "shop", version, instance_id,
                f"ip-10-0-{rng.randint(0, 255)}-{rng.randint(0, 255)}.ec2.internal", "production",
                "opentelemetry", "python", "1.45.2", str(rng.randint(100, 60000)),
            ]  # fmt: skip
            rows.append({"res": s * INSTANCES + instance, "rkeys": keys, "rvalues": values})
    return pa.Table.from_pylist(rows)


# ---------------------------------------------------------------------------------------------------
# Generation in DuckDB
# ---------------------------------------------------------------------------------------------------
def _types(connection: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    relation = connection.from_arrow(SCHEMAS[table].empty_table())
    return {name: str(sql_type) for name, sql_type in zip(relation.columns, relation.dtypes, strict=True)}


_MACROS: Final = """
CREATE MACRO u(a, b, c) AS hash(a, b, c) / 18446744073709551616.0;
CREATE MACRO normal(a, b, c) AS sqrt(-2 * ln(u(a, b, c * 2) + 1e-300)) * cos(2 * pi() * u(a, b, c * 2 + 1));
CREATE MACRO hex16(h) AS lower(lpad(to_hex(h), 16, '0'));
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Where the generated rows go in time and how they are cut into flushes."""

    seed: int
    spans: int
    now: datetime
    files_per_hour: int
    chunk_spans: int

    @property
    def start_ns(self) -> int:
        return (int(self.now.timestamp()) - 86_400) * 1_000_000_000

    @property
    def traces(self) -> int:
        return max(1, self.spans * 2 // (MAX_SPANS + 1))

    @property
    def flushes(self) -> int:
        return 24 * self.files_per_hour

    @property
    def flush_ns(self) -> int:
        return DAY_NS // self.flushes

    def flush_chunks(self) -> Iterator[tuple[int, int]]:
        """Ranges of flushes, [first, end), holding about `chunk_spans` spans each."""
        per_chunk = max(1, self.chunk_spans * self.flushes // self.spans)
        for first in range(0, self.flushes, per_chunk):
            yield first, min(first + per_chunk, self.flushes)

    def first_trace(self, flush: int) -> int:
        """The first trace of `flush` (trace i belongs to flush i * flushes // traces)."""
        return -(-flush * self.traces // self.flushes)


class Generator:
    """Builds chunks of `spans` and `metrics` rows as Arrow tables in the v1 schema, from a seed."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._connection = duckdb.connect(":memory:")
        self._connection.execute("SET TimeZone = 'UTC'")
        for statement in _MACROS.strip().split(";\n"):
            self._connection.execute(statement)
        for name, table in (
            ("trees", _trees(plan.seed)),
            ("operations", _operations()),
            ("resources", _resources(plan.seed)),
        ):
            self._connection.register(f"{name}_arrow", table)
            self._connection.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
        self._span_types = _types(self._connection, "spans")
        self._metric_types = _types(self._connection, "metrics")
        self._lock = threading.Lock()
        self._prices = default_prices()

    def spans(self, first_flush: int, end_flush: int) -> pa.Table:
        """The spans of the traces of flushes [first, end), with an extra leading `_flush` column."""
        plan = self.plan
        lo, hi = plan.first_trace(first_flush), plan.first_trace(end_flush)
        spacing = DAY_NS / plan.traces
        seed, types = plan.seed, self._span_types
        query = f"""
        WITH traces AS (
            SELECT i AS t, (i * {plan.flushes}) // {plan.traces} AS flush,
                hash({seed}, i, 3) % {TREES} AS tree, 1 + hash({seed}, i, 4) % {MAX_SPANS} AS n,
                {plan.start_ns} + ((i + u({seed}, i, 5)) * {spacing})::BIGINT AS t0,
                exp(ln(60e6) + normal({seed}, i, 3)) AS root_duration,
                u({seed}, i, 8) < 0.2 AS failing,
                hex16(hash({seed}, i, 1)) || hex16(hash({seed}, i, 2)) AS trace_id,
                'u' || lpad((hash({seed}, i, 9) % {USERS})::VARCHAR, 6, '0') AS user_id,
                't' || lpad((hash({seed}, i, 10) % {TENANTS})::VARCHAR, 2, '0') AS tenant
            FROM range({lo}, {hi}) r(i)
        ),
        spans AS (
            SELECT tr.*, c.p, c.parent, c.kind, o.*,
                hash({seed}, t, p, 11) AS h,
                hex16(hash({seed}, t, p, 12)) AS span_id,
                CASE WHEN c.parent < 0 THEN '' ELSE hex16(hash({seed}, t, c.parent, 12)) END AS parent_id,
                CASE WHEN p = 0 THEN t0
                    ELSE t0 + (u({seed}, t, p * 16 + 13) * 0.6 * root_duration)::BIGINT END AS start_ns,
                (failing AND (p = 0 OR u({seed}, t, p * 16 + 14) < 0.5)) OR u({seed}, t, p * 16 + 15) < 0.02
                    AS error,
                c.svc * {INSTANCES} + hash({seed}, t, c.p, 16) % {INSTANCES} AS res
            FROM traces tr
            JOIN trees c ON c.tree = tr.tree AND c.p < tr.n
            JOIN operations o ON o.svc = c.svc AND o.op = c.op
        ),
        timed AS (
            SELECT *,
                CASE WHEN p = 0 THEN root_duration::BIGINT
                    ELSE greatest(1000, least(t0 + root_duration::BIGINT - start_ns,
                        exp(ln(8e6) + 1.1 * normal({seed}, t, p * 16 + 17))::BIGINT)) END AS duration,
                CASE WHEN family <> 'http' THEN NULL WHEN error THEN [500, 503][1 + (h % 2)::BIGINT]
                    ELSE [200, 200, 200, 200, 200, 201, 404, 304][1 + (h % 8)::BIGINT] END AS status,
                (h >> 20) % 2000 AS in_tokens, (h >> 32) % 800 AS out_tokens,
                SERVICES[1 + (hash({seed}, t, p, 18) % {len(SERVICES)})::BIGINT] AS peer
            FROM spans
        )
        SELECT flush AS _flush, trace_id, span_id, parent_id AS parent_span_id, '' AS trace_state,
            CASE WHEN p = 0 THEN 1 ELSE 257 END::BIGINT AS flags, name, kind,
            SERVICES[svc + 1] AS service_name,
            make_timestamptz(start_ns // 1000) AS start_time,
            make_timestamptz((start_ns + duration) // 1000) AS end_time,
            start_ns AS start_time_unix_nano, start_ns + duration AS end_time_unix_nano, duration,
            CASE WHEN error THEN 'ERROR' WHEN h % 50 = 0 THEN 'OK' ELSE 'UNSET' END AS status_code,
            CASE WHEN NOT error THEN '' WHEN family = 'http' THEN 'upstream request failed: deadline exceeded'
                ELSE 'connection reset by peer' END AS status_message,
            method AS http_method, route AS http_route, status::BIGINT AS http_status_code,
            CASE WHEN family = 'llm' THEN 'openai' END AS gen_ai_system,
            CASE WHEN family = 'llm' THEN 'chat' END AS gen_ai_operation_name,
            model AS gen_ai_request_model, model AS gen_ai_response_model,
            CASE WHEN family = 'llm' THEN in_tokens END::BIGINT AS gen_ai_input_tokens,
            CASE WHEN family = 'llm' THEN out_tokens END::BIGINT AS gen_ai_output_tokens,
            NULL::BIGINT AS gen_ai_cache_read_input_tokens, model AS gen_ai_model,
            NULL::DOUBLE AS gen_ai_cost_usd,  -- priced below, as the collector does at ingest
            CASE family
                WHEN 'http' THEN MAP(
                    ['http.request.method', 'http.route', 'http.response.status_code', 'url.scheme',
                     'server.address', 'net.peer.name', 'network.protocol.version', 'client.address',
                     'user.id', 'tenant', 'app.cache_hit'],
                    [method, route, status::VARCHAR, 'https', SERVICES[svc + 1] || '.shop.svc.cluster.local',
                     peer || '.shop.svc.cluster.local', ['1.1', '2'][1 + ((h >> 8) % 2)::BIGINT],
                     concat('10.', (h >> 12) % 256, '.', (h >> 24) % 256, '.', (h >> 36) % 254 + 1),
                     user_id, tenant, ((h >> 44) % 10 < 7)::VARCHAR])
                WHEN 'llm' THEN MAP(
                    ['gen_ai.system', 'gen_ai.operation.name', 'gen_ai.request.model',
                     'gen_ai.response.model', 'gen_ai.usage.input_tokens', 'gen_ai.usage.output_tokens',
                     'gen_ai.request.temperature', 'server.address', 'net.peer.name', 'user.id', 'tenant'],
                    ['openai', 'chat', model, model, in_tokens::VARCHAR, out_tokens::VARCHAR,
                     ['0.0', '0.2', '0.7', '1.0'][1 + ((h >> 8) % 4)::BIGINT], 'api.openai.com',
                     'api.openai.com', user_id, tenant])
                ELSE MAP(
                    ['db.system.name', 'db.namespace', 'db.operation.name', 'db.query.text', 'server.address',
                     'net.peer.name', 'network.peer.port', 'db.response.returned_rows', 'user.id', 'tenant',
                     'app.cache_hit'],
                    [CASE family WHEN 'db' THEN 'postgresql' ELSE 'redis' END,
                     CASE family WHEN 'db' THEN 'shop' ELSE '0' END,
                     CASE family WHEN 'db' THEN 'SELECT' ELSE 'GET' END, statement,
                     family || '-' || SERVICES[svc + 1] || '.shop.svc.cluster.local',
                     family || '-' || SERVICES[svc + 1], CASE family WHEN 'db' THEN '5432' ELSE '6379' END,
                     ((h >> 8) % 200)::VARCHAR, user_id, tenant, ((h >> 44) % 10 < 3)::VARCHAR])
            END AS attributes,
            CASE family
                WHEN 'http' THEN MAP(['http.response.status_code', 'app.cache_hit'], ['int', 'bool'])
                WHEN 'llm' THEN MAP(
                    ['gen_ai.usage.input_tokens', 'gen_ai.usage.output_tokens', 'gen_ai.request.temperature'],
                    ['int', 'int', 'double'])
                ELSE MAP(['network.peer.port', 'db.response.returned_rows', 'app.cache_hit'],
                         ['int', 'int', 'bool'])
            END AS attribute_types,
            MAP(rkeys, rvalues) AS resource_attributes,
            MAP(['process.pid'], ['int']) AS resource_attribute_types,
            CASE family WHEN 'http' THEN 'opentelemetry.instrumentation.flask'
                WHEN 'db' THEN 'opentelemetry.instrumentation.psycopg'
                WHEN 'redis' THEN 'opentelemetry.instrumentation.redis'
                ELSE 'opentelemetry.instrumentation.openai_v2' END AS scope_name,
            '0.66b2' AS scope_version,
            MAP([], [])::MAP(VARCHAR, VARCHAR) AS scope_attributes,
            MAP([], [])::MAP(VARCHAR, VARCHAR) AS scope_attribute_types,
            CAST(CASE
                WHEN error THEN [{{
                    'time': make_timestamptz((start_ns + duration // 2) // 1000),
                    'time_unix_nano': start_ns + duration // 2, 'name': 'exception',
                    'attributes': MAP(['exception.type', 'exception.message'],
                        ['TimeoutError', 'deadline exceeded after ' || duration // 1000000 || ' ms']),
                    'attribute_types': MAP([], [])::MAP(VARCHAR, VARCHAR), 'dropped_attributes_count': 0}}]
                WHEN h % 5 = 0 THEN [
                    {{'time': make_timestamptz((start_ns + duration // 10) // 1000),
                     'time_unix_nano': start_ns + duration // 10, 'name': 'request.validated',
                     'attributes': MAP(['request.body.size'], [((h >> 16) % 20000)::VARCHAR]),
                     'attribute_types': MAP(['request.body.size'], ['int']), 'dropped_attributes_count': 0}},
                    {{'time': make_timestamptz((start_ns + duration * 9 // 10) // 1000),
                     'time_unix_nano': start_ns + duration * 9 // 10, 'name': 'response.sent',
                     'attributes': MAP(['response.body.size'], [((h >> 30) % 200000)::VARCHAR]),
                     'attribute_types': MAP(['response.body.size'], ['int']), 'dropped_attributes_count': 0}}]
                ELSE [] END AS {types["events"]}) AS events,
            CAST([] AS {types["links"]}) AS links,
            0::BIGINT AS dropped_attributes_count, 0::BIGINT AS dropped_events_count,
            0::BIGINT AS dropped_links_count
        FROM timed JOIN resources USING (res)
        ORDER BY t, p
        """
        return self._run(query.replace("SERVICES", _list_literal(SERVICES)), "spans")

    def metrics(self, first_flush: int, end_flush: int) -> pa.Table:
        """The metric points of flushes [first, end), with an extra leading `_flush` column."""
        plan = self.plan
        lo = -(-first_flush * plan.flush_ns // POINT_INTERVAL_NS)
        hi = -(-end_flush * plan.flush_ns // POINT_INTERVAL_NS)
        seed, types = plan.seed, self._metric_types
        points = DAY_NS // POINT_INTERVAL_NS
        bounds = "[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]"
        shares = (
            "[0.02, 0.05, 0.12, 0.18, 0.15, 0.12, 0.14, 0.08, 0.05, 0.04, 0.03, 0.01, 0.005, 0.003, 0.002]"
        )

        def null(column: str) -> str:
            return f"CAST(NULL AS {types[column]}) AS {column}"

        query = f"""
        WITH series AS (
            SELECT s, s // 6 AS svc, CASE WHEN s % 6 < 4 THEN 'counter' ELSE 'histogram' END AS kind,
                '/api/v1/' || SERVICES[s // 6 + 1] || '/' || ['items', 'search'][1 + s % 2] AS route,
                CASE WHEN s % 6 IN (2, 3) THEN 500 ELSE 200 END AS code,
                (CASE WHEN s % 6 IN (2, 3) THEN 0.5 ELSE 10.0 END) * (1 + u({seed}, s, 1) * 4) AS rate
            FROM range({len(SERVICES) * 6}) r(s)
        ),
        points AS (
            SELECT series.*, k,
                {plan.start_ns} + k * {POINT_INTERVAL_NS} + (hash({seed}, s, 2) % 1000)::BIGINT * 1000000
                    AS time_ns,
                -- cumulative count with a daily cycle: rate * (t + sin term), never decreasing
                floor(rate * (k * 10 + {points} * 10 / (4 * pi()) * sin(2 * pi() * k / {points})))::BIGINT
                    AS total
            FROM series, range({lo}, {hi}) r(k)
        )
        SELECT (time_ns - {plan.start_ns}) // {plan.flush_ns} AS _flush,
            CASE kind WHEN 'counter' THEN 'http.server.request.count'
                ELSE 'http.server.request.duration' END AS metric_name,
            CASE kind WHEN 'counter' THEN 'Number of HTTP requests'
                ELSE 'Duration of HTTP server requests' END AS metric_description,
            CASE kind WHEN 'counter' THEN '{{request}}' ELSE 's' END AS unit,
            CASE kind WHEN 'counter' THEN 'sum' ELSE 'histogram' END AS metric_type,
            SERVICES[svc + 1] AS service_name,
            make_timestamptz(time_ns // 1000) AS time,
            make_timestamptz({plan.start_ns // 1000}) AS start_time,
            time_ns AS time_unix_nano, {plan.start_ns}::BIGINT AS start_time_unix_nano,
            'cumulative' AS temporality,
            CASE kind WHEN 'counter' THEN true END AS is_monotonic,
            CASE kind WHEN 'counter' THEN total::DOUBLE END AS value,
            CASE kind WHEN 'counter' THEN total END AS value_int,
            CASE kind WHEN 'histogram' THEN list_sum(buckets) END::BIGINT AS count,
            CASE kind WHEN 'histogram' THEN list_sum(buckets) * 0.087 END AS sum,
            CASE kind WHEN 'histogram' THEN 0.0011 END AS min,
            CASE kind WHEN 'histogram' THEN 9.2 END AS max,
            CASE kind WHEN 'histogram' THEN buckets END AS bucket_counts,
            CASE kind WHEN 'histogram' THEN {bounds} END::DOUBLE[] AS explicit_bounds,
            {null("scale")}, {null("zero_count")}, {null("zero_threshold")}, {null("positive_offset")},
            {null("positive_bucket_counts")}, {null("negative_offset")}, {null("negative_bucket_counts")},
            {null("quantiles")}, CAST([] AS {types["exemplars"]}) AS exemplars, 0::BIGINT AS flags,
            MAP(['http.request.method', 'http.route', 'http.response.status_code', 'url.scheme'],
                ['GET', route, code::VARCHAR, 'https']) AS attributes,
            MAP(['http.response.status_code'], ['int']) AS attribute_types,
            MAP(rkeys, rvalues) AS resource_attributes,
            MAP(['process.pid'], ['int']) AS resource_attribute_types,
            'opentelemetry.instrumentation.flask' AS scope_name, '0.66b2' AS scope_version,
            MAP([], [])::MAP(VARCHAR, VARCHAR) AS scope_attributes,
            MAP([], [])::MAP(VARCHAR, VARCHAR) AS scope_attribute_types
        FROM (SELECT *, list_transform({shares}, lambda share: floor(total * share)::BIGINT) AS buckets
              FROM points) JOIN resources ON resources.res = svc * {INSTANCES}
        ORDER BY time_ns, s
        """
        return self._run(query.replace("SERVICES", _list_literal(SERVICES)), "metrics")

    def _run(self, query: str, table: str) -> pa.Table:
        with self._lock:
            cursor = self._connection.cursor()
        try:
            result = cursor.sql(query).to_arrow_table()
        finally:
            cursor.close()
        flush = result.column("_flush")
        data = result.drop_columns(["_flush"]).cast(SCHEMAS[table])
        if table == "spans":
            data = pa.Table.from_batches(
                [add_costs(batch, self._prices) for batch in data.to_batches()], SCHEMAS[table]
            )
        return data.add_column(0, "_flush", flush)

    def close(self) -> None:
        self._connection.close()


def _list_literal(values: tuple[str, ...]) -> str:
    return "[" + ", ".join("'" + value.replace("'", "''") + "'" for value in values) + "]"


@dataclass(slots=True, kw_only=True)
class Written:
    rows: int = 0
    files: int = 0
    flushes: int = 0


class FlushEmulator:
    """Cuts generated chunks into collector flushes and commits each through `ParquetSink.write`."""

    def __init__(self, sink: ParquetSink, *, writers: int = 2) -> None:
        self._sink = sink
        self._writers = writers
        self._lsn: dict[str, int] = {}

    def write(self, table: str, chunk: pa.Table) -> Written:
        written = Written()
        if chunk.num_rows == 0:
            return written
        counts = pc.value_counts(chunk.column("_flush")).to_pylist()  # in order of appearance (sorted)
        data = chunk.drop_columns(["_flush"])
        offset = 0
        for entry in counts:
            flush, rows = int(entry["values"]), int(entry["counts"])
            writer = f"w{flush % self._writers}"
            lsn = self._lsn.get(writer, 0) + 1
            self._lsn[writer] = lsn
            paths = self._sink.write(
                table, data.slice(offset, rows).to_batches(), writer=writer, first_lsn=lsn, last_lsn=lsn
            )
            offset += rows
            written.rows += rows
            written.files += len(paths)
            written.flushes += 1
        return written


def generate(root: Path, plan: Plan) -> dict[str, Any]:
    """Writes the spans and metrics of `plan` under `root`; returns counts and timings."""
    generator = Generator(plan)
    sink = ParquetSink(root, settings=ParquetSettings(fsync=False))
    emulator = FlushEmulator(sink)
    totals = {"spans": Written(), "metrics": Written()}
    started = time.perf_counter()
    chunks = list(plan.flush_chunks())
    # Generation (DuckDB, both cores) of chunk n+1 overlaps the Parquet writes of chunk n.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(generator.spans, *chunks[0])
        for index, (first, end) in enumerate(chunks):
            chunk = pending.result()
            if index + 1 < len(chunks):
                pending = pool.submit(generator.spans, *chunks[index + 1])
            done = emulator.write("spans", chunk)
            del chunk
            for key in ("rows", "files", "flushes"):
                setattr(totals["spans"], key, getattr(totals["spans"], key) + getattr(done, key))
            elapsed = time.perf_counter() - started
            print(
                f"  spans: flushes {first}-{end - 1} of {plan.flushes}: {totals['spans'].rows:,} rows,"
                f" {totals['spans'].files:,} files ({elapsed:.0f}s)",
                flush=True,
            )
    spans_s = time.perf_counter() - started
    started = time.perf_counter()
    metric_chunk = max(1, plan.flushes // 8)
    for first in range(0, plan.flushes, metric_chunk):
        done = emulator.write("metrics", generator.metrics(first, min(first + metric_chunk, plan.flushes)))
        for key in ("rows", "files", "flushes"):
            setattr(totals["metrics"], key, getattr(totals["metrics"], key) + getattr(done, key))
    metrics_s = time.perf_counter() - started
    generator.close()
    return {
        "spans": totals["spans"].rows,
        "span_files": totals["spans"].files,
        "spans_s": spans_s,
        "metric_points": totals["metrics"].rows,
        "metric_files": totals["metrics"].files,
        "metrics_s": metrics_s,
    }


def store_size(root: Path) -> dict[str, tuple[int, int]]:
    """(files, bytes) of each table's Parquet files."""
    sizes = {}
    for table in ("spans", "metrics"):
        paths = list(table_dir(root, table).rglob("*.parquet"))
        sizes[table] = (len(paths), sum(path.stat().st_size for path in paths))
    return sizes


def compact(root: Path, now: datetime) -> float | None:
    """Compacts the store; its duration in seconds, or None when there is no compaction to call.

    Calls `mallard.storage.compact.compact_store(root)`, or else that module's `maintain(root, now=…)`
    (compaction of every hour closed at `now`, no retention), whichever exists.
    """
    try:
        module: Any = importlib.import_module("mallard.storage.compact")
    except ImportError:
        module = None
    if hasattr(module, "compact_store"):
        run: Callable[[], Any] = lambda: module.compact_store(root)  # noqa: E731
    elif hasattr(module, "maintain"):
        moment = max(datetime.now(UTC), now + timedelta(hours=2))
        run = lambda: module.maintain(root, now=moment)  # noqa: E731
    else:
        print("compaction: not available")
        return None
    started = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - started
    summary = result.summary() if hasattr(result, "summary") else result
    print(f"compaction: {elapsed:.1f}s ({summary})", flush=True)
    return elapsed


# ---------------------------------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One query to time: `make(rng)` draws fresh inputs and returns the call; it answers a size."""

    name: str
    target_ms: float
    make: Callable[[random.Random], Callable[[], int]]


def sample_trace_ids(root: Path, rng: random.Random, count: int = 400) -> list[str]:
    """Trace ids read from the first row group of randomly chosen span files."""
    paths = sorted(table_dir(root, "spans").rglob("*.parquet"))
    ids: list[str] = []
    for path in rng.sample(paths, min(len(paths), 40)):
        column = pq.ParquetFile(path).read_row_group(0, columns=["trace_id"]).column(0).to_pylist()
        ids.extend(rng.sample(column, min(len(column), max(1, count // 40))))
    return ids


def probes(store: Store, start: datetime, end: datetime) -> list[Probe]:
    trace_ids = sample_trace_ids(store.root, random.Random(0))
    routes = [_route(service, op) for service in SERVICES for op in range(len(HTTP_OPERATIONS))]

    def trace(rng: random.Random) -> Callable[[], int]:
        trace_id = rng.choice(trace_ids)
        return lambda: len(_found(get_trace(store, trace_id)).spans)

    def search(**filters: Any) -> Callable[[], int]:
        return lambda: len(search_traces(store, start=start, end=end, limit=20, **filters))

    def one_hour(rng: random.Random) -> Callable[[], int]:
        hour_start = start + timedelta(hours=rng.randrange(24))
        return lambda: len(services(store, start=hour_start, end=hour_start + timedelta(hours=1)))

    def series(rng: random.Random) -> Callable[[], int]:
        return lambda: len(
            metric_series(
                store, "http.server.request.count", start=start, end=end, step_s=300, agg="rate",
                group_by=["service_name"],
            )
        )  # fmt: skip

    return [
        Probe(name="get_trace (no time range)", target_ms=50, make=trace),
        Probe(
            name="search_traces 24h, service, limit 20",
            target_ms=200,
            make=lambda rng: search(service=rng.choice(SERVICES)),
        ),
        Probe(name="services 1h", target_ms=300, make=one_hour),
        Probe(
            name="search_traces 24h, http.route (promoted)",
            target_ms=500,
            make=lambda rng: search(attributes={"http.route": rng.choice(routes)}),
        ),
        Probe(
            name="search_traces 24h, http.response.status_code=503",
            target_ms=500,
            make=lambda rng: search(attributes={"http.response.status_code": "503"}),
        ),
        Probe(
            name="search_traces 24h, user.id (1 of 100k)",
            target_ms=2000,
            make=lambda rng: search(attributes={"user.id": f"u{rng.randrange(USERS):06d}"}),
        ),
        Probe(
            name="search_traces 24h, tenant (1 of 50)",
            target_ms=2000,
            make=lambda rng: search(attributes={"tenant": f"t{rng.randrange(TENANTS):02d}"}),
        ),
        Probe(name="metric_series 24h rate 5m by service", target_ms=300, make=series),
    ]


def _found(value: Any) -> Any:
    if value is None:
        raise RuntimeError("a sampled trace id was not found")
    return value


def measure(probe: Probe, rng: random.Random, *, runs: int, warmups: int) -> dict[str, Any]:
    times_ms: list[float] = []
    sizes: list[int] = []
    for n in range(warmups + runs):
        call = probe.make(rng)
        started = time.perf_counter()
        size = call()
        elapsed = (time.perf_counter() - started) * 1000
        if n >= warmups:
            times_ms.append(elapsed)
            sizes.append(size)
    ordered = sorted(times_ms)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    median = statistics.median(ordered)
    return {
        "name": probe.name,
        "runs": runs,
        "median_ms": median,
        "p95_ms": p95,
        "max_ms": ordered[-1],
        "target_ms": probe.target_ms,
        "met": p95 <= probe.target_ms,
        "median_size": statistics.median(sizes),
    }


def measure_all(root: Path, *, now: datetime, runs: int, warmups: int, seed: int) -> list[dict[str, Any]]:
    start, end = now - timedelta(hours=24), now
    print(f"window {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC; {runs} runs after {warmups} warm-ups")
    results = []
    with Store(root) as store:
        for probe in probes(store, start, end):
            # one generator per probe: the same inputs in every run of the benchmark (before and after
            # compaction too), whatever the other probes drew
            rng = random.Random(f"{seed}:{probe.name}")
            result = measure(probe, rng, runs=runs, warmups=warmups)
            print(
                f"  {result['name']}: median {result['median_ms']:,.0f} ms, p95 {result['p95_ms']:,.0f} ms",
                flush=True,
            )
            results.append(result)
    return results


_COLUMNS: Final = (
    ("query", "{name}"), ("median ms", "{median_ms:,.1f}"), ("p95 ms", "{p95_ms:,.1f}"),
    ("max ms", "{max_ms:,.1f}"), ("target ms", "{target_ms:,.0f}"), ("p95 met", "{verdict}"),
    ("rows/traces", "{median_size:,.0f}"),
)  # fmt: skip


def print_table(results: list[dict[str, Any]]) -> None:
    print_aligned(
        [[head for head, _ in _COLUMNS]]
        + [[fmt.format(**r, verdict="yes" if r["met"] else "NO") for _, fmt in _COLUMNS] for r in results]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=lambda text: int(text.replace("_", "")), default=10_000_000)
    parser.add_argument("--root", type=Path, help="store directory (default: a temporary one, deleted)")
    parser.add_argument("--seed", type=int, default=1, help="generator and input seed (default 1)")
    parser.add_argument(
        "--now", default=DEFAULT_NOW.isoformat(), help="end of the day of data, an hour (queries use it too)"
    )
    parser.add_argument("--files-per-hour", type=int, default=120, help="flushes per hour (default 120)")
    parser.add_argument("--chunk-spans", type=int, default=500_000, help="spans generated at once")
    parser.add_argument("--skip-generate", action="store_true", help="reuse the store under --root")
    parser.add_argument("--compact", action="store_true", help="compact, then measure again")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per query (default 20)")
    parser.add_argument("--warmups", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--no-measure", action="store_true", help="only generate (and compact)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    if args.skip_generate and args.root is None:
        parser.error("--skip-generate needs --root")
    now = datetime.fromisoformat(args.now).astimezone(UTC)
    if now != now.replace(minute=0, second=0, microsecond=0):
        parser.error("--now must be a whole hour")
    temporary = args.root is None
    root: Path = Path(tempfile.mkdtemp(prefix="mallard-query-bench-")) if temporary else args.root
    report: dict[str, Any] = {"root": str(root), "cpus": os.cpu_count(), "duckdb": duckdb.__version__}
    try:
        if not args.skip_generate:
            if any(table_dir(root, "spans").rglob("*.parquet")):
                parser.error(f"{root} already holds spans; use --skip-generate or an empty --root")
            plan = Plan(
                seed=args.seed, spans=args.spans, now=now, files_per_hour=args.files_per_hour,
                chunk_spans=args.chunk_spans,
            )  # fmt: skip
            print(f"generating ~{args.spans:,} spans into {root} on {os.cpu_count()} CPUs", flush=True)
            report["generate"] = generate(root, plan)
            g = report["generate"]
            print(
                f"generated {g['spans']:,} spans in {g['span_files']:,} files ({g['spans_s']:.0f}s,"
                f" {g['spans'] / g['spans_s']:,.0f} spans/s) and {g['metric_points']:,} metric points in"
                f" {g['metric_files']:,} files ({g['metrics_s']:.0f}s)"
            )

        def survey(size_key: str, results_key: str, label: str) -> None:
            """The store's size, then (unless --no-measure) every query, printed and into the report."""
            report[size_key] = store_size(root)
            for table, (files, size) in report[size_key].items():
                print(f"{table}{label}: {files:,} files, {size / 2**20:,.0f} MiB")
            if not args.no_measure:
                report[results_key] = measure_all(
                    root, now=now, runs=args.runs, warmups=args.warmups, seed=args.seed
                )
                print(f"\n{label.strip()}:" if label else "")
                print_table(report[results_key])

        survey("size", "before", "")
        if args.compact:
            report["compact_s"] = compact(root, now)
            if report["compact_s"] is not None:
                survey("size_compacted", "after", " after compaction")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
    finally:
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
