"""`SqlSandbox`: read-only SQL over real Parquet files; one test per escape it must refuse."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mallard.query.errors import QueryError, SqlRefused, SqlTimeout
from mallard.query.sandbox import SqlLimits, SqlSandbox
from mallard.storage.schema import SCHEMAS

START = datetime(2026, 11, 22, 10, 15, 0, 123456, tzinfo=UTC)
TRACE_IDS = ("4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c")
LIMITS = SqlLimits(timeout_s=2.0, max_rows=1000, max_bytes=100_000)


def write_spans(root: Path) -> None:
    """Two spans of service `api` as one committed collector file of the v1 `spans` table."""
    schema = SCHEMAS["spans"]
    rows = [
        {"trace_id": trace_id, "span_id": "00f067aa0ba902b7", "name": "GET /users/{id}"}
        | {"service_name": "api", "start_time": START, "attributes": [("http.route", "/users/{id}")]}
        for trace_id in TRACE_IDS
    ]
    full = [{name: row.get(name) for name in schema.names} for row in rows]
    directory = root / "v1" / "spans" / "date=2026-11-22" / "hour=10"
    directory.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(full, schema=schema), directory / "w0-1-1-ab.parquet")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    write_spans(store)
    (store / "wal" / "w0").mkdir(parents=True)
    (store / "wal" / "w0" / "segment").write_text("raw payloads")
    (tmp_path / "secret.csv").write_text("password\nhunter2\n")
    (tmp_path / "store-other").mkdir()
    (tmp_path / "store-other" / "secret.csv").write_text("password\nhunter2\n")
    pq.write_table(pa.table({"password": ["hunter2"]}), tmp_path / "secret.parquet")
    return store


@pytest.fixture
def sandbox(root: Path) -> Iterator[SqlSandbox]:
    with SqlSandbox(root, limits=LIMITS) as running:
        yield running


def assert_still_answers(sandbox: SqlSandbox) -> None:
    result = sandbox.run("SELECT count(*) AS n FROM spans")
    assert result.rows == [[2]]


def test_a_select_over_spans_returns_its_rows(sandbox: SqlSandbox) -> None:
    result = sandbox.run(
        "SELECT trace_id, name, attributes['http.route'] AS route, start_time, hour"
        " FROM spans ORDER BY trace_id"
    )
    assert result.columns == ["trace_id", "name", "route", "start_time", "hour"]
    assert result.rows == [
        [trace_id, "GET /users/{id}", "/users/{id}", "2026-11-22T10:15:00.123456Z", 10]
        for trace_id in sorted(TRACE_IDS)
    ]
    assert not result.truncated


def test_with_select_and_duplicate_column_names_keep_both_values(sandbox: SqlSandbox) -> None:
    result = sandbox.run("WITH t AS (SELECT 1 AS a, 2 AS a) SELECT * FROM t")
    assert result.columns == ["a", "a_1"]  # DuckDB renames the duplicate; both values are kept
    assert result.rows == [[1, 2]]


def test_a_store_with_no_files_is_empty(tmp_path: Path) -> None:
    with SqlSandbox(tmp_path / "missing", limits=LIMITS) as sandbox:
        assert sandbox.run("SELECT count(*) FROM logs").rows == [[0]]


def test_bad_sql_is_a_query_error_not_a_refusal(sandbox: SqlSandbox) -> None:
    with pytest.raises(QueryError, match="no_such_table") as raised:
        sandbox.run("SELECT * FROM no_such_table")
    assert not isinstance(raised.value, SqlRefused)
    assert_still_answers(sandbox)


# Escapes that DuckDB's settings stop (the statement is a SELECT): the message says "outside the store".
FILE_ESCAPES = {
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_csv_auto": "SELECT * FROM read_csv_auto('{tmp}/secret.csv')",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob": "SELECT * FROM read_blob('/etc/passwd')",
    "read_json": "SELECT * FROM read_json('/etc/passwd')",
    "read_parquet_outside_root": "SELECT * FROM read_parquet('{tmp}/secret.parquet')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('{tmp}/secret.parquet')",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
    "bare_path_in_from": "SELECT * FROM '{tmp}/secret.csv'",
    "glob_etc": "SELECT * FROM glob('/etc/*')",
    "glob_through_root": "SELECT * FROM glob('{root}/../../*')",
    "read_text_through_root": "SELECT * FROM read_text('{root}/v1/spans/../../../secret.csv')",
    "sibling_with_root_as_prefix": "SELECT * FROM read_csv('{root}-other/secret.csv')",
    "wal_inside_root": "SELECT * FROM read_blob('{root}/wal/w0/segment')",
    "proc_environ": "SELECT * FROM read_text('/proc/self/environ')",
    "http_url": "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
}


@pytest.mark.parametrize("sql", FILE_ESCAPES.values(), ids=FILE_ESCAPES.keys())
def test_a_file_outside_the_store_is_refused(sandbox: SqlSandbox, root: Path, sql: str) -> None:
    with pytest.raises(SqlRefused, match="cannot reach outside the store"):
        sandbox.run(sql.format(root=root, tmp=root.parent))
    assert_still_answers(sandbox)


# Statements the parser check refuses before they run: the message names the statement type.
STATEMENT_ESCAPES = {
    "copy_to": ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
    "copy_into_the_store": ("COPY (SELECT 1) TO '{root}/v1/spans/x.parquet'", "COPY"),
    "copy_from": ("COPY spans FROM '/etc/passwd'", "COPY"),
    "export_database": ("EXPORT DATABASE '/tmp/mallard-export'", "EXPORT"),
    "attach_memory": ("ATTACH ':memory:' AS other", "ATTACH"),
    "attach_file": ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH"),
    "detach": ("DETACH memory", "DETACH"),
    "install": ("INSTALL httpfs", "LOAD"),
    "load": ("LOAD httpfs", "LOAD"),
    "set": ("SET threads = 1", "SET"),
    "set_variable": ("SET VARIABLE x = 1", "SET"),
    "reset": ("RESET threads", "SET"),
    "use": ("USE memory", "SET"),
    "pragma": ("PRAGMA enable_profiling", "PRAGMA"),
    "call": ("CALL pragma_version()", "CALL"),
    "checkpoint": ("CHECKPOINT", "CALL"),
    "create_table": ("CREATE TABLE t (a INTEGER)", "CREATE"),
    "create_view": ("CREATE VIEW v AS SELECT 1", "CREATE"),
    "create_or_replace_spans": ("CREATE OR REPLACE VIEW spans AS SELECT 1 AS x", "CREATE"),
    "create_macro": ("CREATE MACRO m(a) AS a", "CREATE"),
    "drop_view": ("DROP VIEW spans", "DROP"),
    "alter": ("ALTER VIEW spans RENAME TO s", "ALTER"),
    "insert": ("INSERT INTO spans (trace_id) VALUES ('x')", "INSERT"),
    "update": ("UPDATE spans SET name = 'x'", "UPDATE"),
    "delete": ("DELETE FROM spans", "DELETE"),
    "begin": ("BEGIN TRANSACTION", "TRANSACTION"),
    "prepare": ("PREPARE p AS SELECT 1", "PREPARE"),
    "explain": ("EXPLAIN SELECT 1", "EXPLAIN"),
}


@pytest.mark.parametrize(("sql", "kind"), STATEMENT_ESCAPES.values(), ids=STATEMENT_ESCAPES.keys())
def test_a_statement_other_than_select_is_refused(
    sandbox: SqlSandbox, root: Path, sql: str, kind: str
) -> None:
    with pytest.raises(SqlRefused, match=f"only SELECT queries, got a {kind} statement"):
        sandbox.run(sql.format(root=root, tmp=root.parent))
    assert_still_answers(sandbox)
    assert not (root / "v1" / "spans" / "x.parquet").exists()


@pytest.mark.parametrize(
    "sql",
    ["SELECT 1; SELECT 2", "SELECT 1; DROP VIEW spans", "SELECT 1; COPY (SELECT 1) TO '/tmp/x.csv'"],
)
def test_two_statements_are_refused(sandbox: SqlSandbox, sql: str) -> None:
    with pytest.raises(SqlRefused, match="exactly one statement, got 2"):
        sandbox.run(sql)
    assert_still_answers(sandbox)


def test_no_statement_is_refused(sandbox: SqlSandbox) -> None:
    with pytest.raises(SqlRefused, match="exactly one statement, got 0"):
        sandbox.run("  -- nothing\n")
    assert_still_answers(sandbox)


def test_the_query_function_runs_only_selects(sandbox: SqlSandbox) -> None:
    with pytest.raises(QueryError, match="single SELECT"):
        sandbox.run("SELECT * FROM query('CREATE TABLE t (a INTEGER)')")
    assert_still_answers(sandbox)


def test_python_variables_are_not_readable(sandbox: SqlSandbox) -> None:
    secret_table = pa.table({"password": ["hunter2"]})  # noqa: F841 - what a replacement scan would find
    with pytest.raises(QueryError, match="secret_table"):
        sandbox.run("SELECT * FROM secret_table")
    assert_still_answers(sandbox)


def test_settings_stay_locked(sandbox: SqlSandbox) -> None:
    result = sandbox.run(
        "SELECT current_setting('enable_external_access'), current_setting('lock_configuration'),"
        " current_setting('autoload_known_extensions'), current_setting('temp_directory')"
    )
    assert result.rows == [[False, True, False, ""]]


def test_a_slow_query_is_interrupted_within_the_limit(root: Path) -> None:
    with SqlSandbox(root, limits=SqlLimits(timeout_s=0.5)) as sandbox:
        started = time.monotonic()
        with pytest.raises(SqlTimeout, match=r"time limit of 0\.5 s"):
            sandbox.run("SELECT count(*) FROM range(100000000) a, range(100000000) b")
        assert time.monotonic() - started < 5
        assert_still_answers(sandbox)


def test_a_slow_stream_of_rows_is_interrupted(root: Path) -> None:
    limits = SqlLimits(timeout_s=0.5, max_rows=10**12, max_bytes=10**12)
    with SqlSandbox(root, limits=limits) as sandbox:
        started = time.monotonic()
        with pytest.raises(SqlTimeout):
            sandbox.run("SELECT * FROM range(100000000000)")
        assert time.monotonic() - started < 5
        assert_still_answers(sandbox)


def test_rows_are_capped(sandbox: SqlSandbox) -> None:
    result = sandbox.run("SELECT range AS n FROM range(100000000000)")
    assert result.rows == [[n] for n in range(LIMITS.max_rows)]
    assert result.truncated
    assert_still_answers(sandbox)


def test_a_lower_row_cap_per_query(sandbox: SqlSandbox) -> None:
    result = sandbox.run("SELECT range AS n FROM range(10)", max_rows=3)
    assert (result.rows, result.truncated) == ([[0], [1], [2]], True)
    exact = sandbox.run("SELECT range AS n FROM range(3)", max_rows=3)
    assert (exact.rows, exact.truncated) == ([[0], [1], [2]], False)


def test_bytes_are_capped(root: Path) -> None:
    with SqlSandbox(root, limits=SqlLimits(max_bytes=1000)) as sandbox:
        result = sandbox.run("SELECT repeat('x', 98) AS s FROM range(100)")
        # Each row is `["xx…x"]`: 98 + 4 bytes of JSON, so 9 rows fit in 1000 bytes.
        assert result.rows == [["x" * 98]] * 9
        assert result.truncated
        assert not sandbox.run("SELECT 'x' AS s").truncated


def test_limits_are_validated(root: Path) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SqlSandbox(root, limits=SqlLimits(timeout_s=0))
