"""`Store`: views over real Parquet files written with the v1 schemas."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mallard.query import QueryError, Store
from mallard.storage.schema import COMPACTED_COLUMNS, PARTITION_TIME_COLUMN, SCHEMAS, TABLES

START = datetime(2026, 11, 22, 10, 15, 0, 123456, tzinfo=UTC)


def write_part(
    root: Path,
    table: str,
    rows: list[dict[str, object]],
    *,
    hour: int = 10,
    lsn: int = 1,
    schema: pa.Schema | None = None,
) -> Path:
    """Writes `rows` (unset columns NULL) as a committed collector file of `table` (v1 unless `schema`)."""
    schema = schema or SCHEMAS[table]
    full = [{name: row.get(name) for name in schema.names} for row in rows]
    directory = root / "v1" / table / "date=2026-11-22" / f"hour={hour:02d}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"w0-{lsn:016d}-{lsn:016d}-ab.parquet"
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
    return path


def span(trace_id: str, **columns: object) -> dict[str, object]:
    return {
        "trace_id": trace_id,
        "span_id": "00f067aa0ba902b7",
        "name": "GET /users/{id}",
        "service_name": "api",
        "start_time": START,
        "attributes": [
            ("http.route", "/users/{id}"),
            ("http.response.status_code", "200"),
        ],
        "attribute_types": [("http.response.status_code", "int")],
        **columns,
    }


def describe(store: Store, table: str) -> list[tuple[str, str]]:
    rows = store.sql(f"DESCRIBE {table}").to_pylist()
    return [(row["column_name"], row["column_type"]) for row in rows]


@pytest.mark.parametrize("table", TABLES)
def test_a_store_with_no_directory_has_empty_typed_tables(tmp_path: Path, table: str) -> None:
    with Store(tmp_path / "missing") as store:
        assert store.sql(f"SELECT count(*) AS n FROM {table}").to_pylist() == [{"n": 0}]
        names = [name for name, _ in describe(store, table)]
        assert names == [*SCHEMAS[table].names, *COMPACTED_COLUMNS.get(table, {}), "date", "hour"]


def test_empty_spans_keep_their_arrow_types(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        result = store.sql("SELECT trace_id, attributes, start_time, events, date, hour FROM spans")
    assert result.num_rows == 0
    types = dict(zip(result.column_names, result.schema.types, strict=True))
    assert types["trace_id"] == pa.string()
    assert types["attributes"] == pa.map_(pa.string(), pa.string())
    assert types["start_time"] == pa.timestamp("us", tz="UTC")
    assert pa.types.is_list(types["events"])
    assert types["date"] == pa.date32()
    assert types["hour"] == pa.int64()


@pytest.mark.parametrize("table", TABLES)
def test_empty_and_filled_tables_have_the_same_columns(tmp_path: Path, table: str) -> None:
    with Store(tmp_path) as store:
        empty = describe(store, table)
        write_part(tmp_path, table, [{}])
        filled = describe(store, table)
    assert filled == empty
    assert filled[-2:] == [("date", "DATE"), ("hour", "BIGINT")]


SCOPE_COLUMNS = ("scope_attributes", "scope_attribute_types")


@pytest.mark.parametrize("table", TABLES)
def test_files_from_before_a_column_was_added_read_it_as_null(tmp_path: Path, table: str) -> None:
    """v1 files written before `scope_attributes` existed, alone and mixed with files that have it."""
    before = pa.schema([field for field in SCHEMAS[table] if field.name not in SCOPE_COLUMNS])
    time_column = PARTITION_TIME_COLUMN[table]
    old = {time_column: START, "scope_name": "old"}
    new = {
        time_column: START,
        "scope_name": "new",
        "scope_attributes": [("lib.kind", "http"), ("lib.major", "2")],
        "scope_attribute_types": [("lib.major", "int")],
    }
    query = (
        "SELECT scope_name, scope_attributes['lib.kind'] AS kind, scope_attribute_types, hour"
        f" FROM {table} ORDER BY scope_name"
    )
    with Store(tmp_path / "empty") as empty:
        columns = describe(empty, table)
    with Store(tmp_path) as store:
        write_part(tmp_path, table, [old], schema=before)
        # no file has the columns yet: they are there all the same, NULL
        assert store.sql(query).to_pylist() == [
            {"scope_name": "old", "kind": None, "scope_attribute_types": None, "hour": 10}
        ]
        assert describe(store, table) == columns
        write_part(tmp_path, table, [new], hour=11, lsn=2)
        assert store.sql(query).to_pylist() == [
            {
                "scope_name": "new",
                "kind": "http",
                "scope_attribute_types": [("lib.major", "int")],
                "hour": 11,
            },
            {"scope_name": "old", "kind": None, "scope_attribute_types": None, "hour": 10},
        ]
        # the schema's order whichever file is read first (here the old one)
        assert describe(store, table) == columns
        hits = store.sql(f"SELECT count(*) AS n FROM {table} WHERE scope_attributes['lib.major'] = '2'")
        assert hits.to_pylist() == [{"n": 1}]


def test_columns_only_newer_files_have_follow_the_schema_columns(tmp_path: Path) -> None:
    after = SCHEMAS["logs"].append(pa.field("future_column", pa.string()))
    write_part(tmp_path, "logs", [{"body": "old"}])
    write_part(tmp_path, "logs", [{"body": "new", "future_column": "f"}], hour=11, lsn=2, schema=after)
    with Store(tmp_path) as store:
        names = [name for name, _ in describe(store, "logs")]
        rows = store.sql("SELECT body, future_column FROM logs ORDER BY body").to_pylist()
    assert names == [*SCHEMAS["logs"].names, "date", "hour", "future_column"]
    assert rows == [{"body": "new", "future_column": "f"}, {"body": "old", "future_column": None}]


def test_files_committed_after_opening_are_seen_by_the_next_query(
    tmp_path: Path,
) -> None:
    with Store(tmp_path) as store:
        assert store.sql("SELECT count(*) AS n FROM spans").to_pylist() == [{"n": 0}]
        write_part(tmp_path, "spans", [span("a"), span("b")], lsn=1)
        assert store.sql("SELECT count(*) AS n FROM spans").to_pylist() == [{"n": 2}]
        write_part(tmp_path, "spans", [span("c")], hour=11, lsn=2)
        assert store.sql("SELECT count(*) AS n FROM spans").to_pylist() == [{"n": 3}]


def test_a_store_whose_files_are_deleted_reads_as_empty_again(tmp_path: Path) -> None:
    path = write_part(tmp_path, "logs", [{"body": "hello"}])
    with Store(tmp_path) as store:
        assert store.sql("SELECT body FROM logs").to_pylist() == [{"body": "hello"}]
        path.unlink()
        assert store.sql("SELECT count(*) AS n FROM logs").to_pylist() == [{"n": 0}]


def test_attributes_are_a_map_and_hive_columns_come_from_the_path(
    tmp_path: Path,
) -> None:
    write_part(tmp_path, "spans", [span("a")])
    with Store(tmp_path) as store:
        result = store.sql(
            "SELECT attributes['http.route'] AS route, attribute_types['http.route'] AS route_type,"
            " date, hour, start_time FROM spans"
        )
    assert result.to_pylist() == [
        {
            "route": "/users/{id}",
            "route_type": None,
            "date": date(2026, 11, 22),
            "hour": 10,
            "start_time": START,
        }
    ]
    assert result.schema.field("start_time").type == pa.timestamp("us", tz="UTC")


def test_timestamps_are_shown_in_utc(tmp_path: Path) -> None:
    write_part(tmp_path, "spans", [span("a")])
    with Store(tmp_path) as store:
        result = store.sql(
            "SELECT current_setting('TimeZone') AS zone, start_time::VARCHAR AS text FROM spans"
        )
    assert result.to_pylist() == [{"zone": "UTC", "text": "2026-11-22 10:15:00.123456+00"}]


def test_several_statements_return_the_last_result(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        result = store.sql("CREATE TEMP TABLE t AS SELECT 41 AS x; SELECT x + 1 AS y FROM t")
    assert result.to_pylist() == [{"y": 42}]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELEC 1", "Parser Error"),
        ("SELECT * FROM nope", "Catalog Error"),
        ("SELECT no_such_column FROM spans", "Binder Error"),
        ("SELECT 'x'::INTEGER", "Conversion Error"),
    ],
)
def test_bad_queries_raise_query_error_with_duckdbs_message(tmp_path: Path, query: str, message: str) -> None:
    with Store(tmp_path) as store, pytest.raises(QueryError, match=message):
        store.sql(query)


def test_a_closed_store_raises_query_error(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.close()
    with pytest.raises(QueryError):
        store.sql("SELECT 1")


def test_threads_can_share_a_store(tmp_path: Path) -> None:
    write_part(tmp_path, "spans", [span("a")])
    counts: list[object] = []
    with Store(tmp_path) as store:

        def count() -> None:
            for _ in range(20):
                counts.append(store.sql("SELECT count(*) AS n FROM spans").to_pylist())

        threads = [threading.Thread(target=count) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert counts == [[{"n": 1}]] * 80
