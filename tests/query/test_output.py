"""Result formatting (`format_table`, `format_csv`, `format_json`) and the `mallard sql` command."""

from __future__ import annotations

import argparse
import base64
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mallard.query import (
    Store,
    add_sql_arguments,
    format_csv,
    format_json,
    format_table,
    run_sql,
    to_json_rows,
)
from mallard.storage.schema import SPANS

BIG = 2**63 - 1  # beyond 2^53: a double would round it
MOMENT = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
ATTRIBUTES = pa.map_(pa.string(), pa.string())


def sample() -> pa.Table:
    return pa.table(
        {
            "name": pa.array(["GET /", None]),
            "n": pa.array([BIG, 7], pa.int64()),
            "attributes": pa.array([[("http.route", "/"), ("k", "v")], []], ATTRIBUTES),
            "at": pa.array([MOMENT, None], pa.timestamp("us", tz="UTC")),
        }
    )


def test_json_is_an_array_of_row_objects_with_maps_as_objects() -> None:
    rows = json.loads(format_json(sample()))
    assert rows == [
        {
            "name": "GET /",
            "n": BIG,
            "attributes": {"http.route": "/", "k": "v"},
            "at": "2026-11-22T10:00:00.123456Z",
        },
        {"name": None, "n": 7, "attributes": {}, "at": None},
    ]


def test_json_keeps_large_integers_exact_in_the_text() -> None:
    text = format_json(pa.table({"n": pa.array([BIG, 2**53 + 1], pa.int64())}))
    assert f'"n":{BIG}' in text
    assert f'"n":{2**53 + 1}' in text


def test_json_of_no_rows_is_an_empty_array() -> None:
    assert json.loads(format_json(SPANS.empty_table())) == []


def test_json_renders_nested_and_special_values() -> None:
    event = pa.struct([("time", pa.timestamp("us", tz="UTC")), ("attributes", ATTRIBUTES)])
    table = pa.table(
        {
            "events": pa.array([[{"time": MOMENT, "attributes": [("a", "1")]}]], pa.list_(event)),
            "bounds": pa.array([[0.5, float("inf")]], pa.list_(pa.float64())),
            "x": pa.array([float("nan")], pa.float64()),
            "raw": pa.array([b"\x00\xff"], pa.binary()),
            "day": pa.array([date(2026, 11, 22)], pa.date32()),
            "total": pa.array([Decimal(12345678901234567890123)], pa.decimal128(38, 0)),
            "ratio": pa.array([Decimal("1.50")], pa.decimal128(4, 2)),
            "flag": pa.array([True]),
            "ns": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns", tz="UTC")),
            "ids": pa.array([[(1, 2.0)]], pa.map_(pa.int64(), pa.float64())),
        }
    )
    assert json.loads(format_json(table)) == [
        {
            "events": [{"time": "2026-11-22T10:00:00.123456Z", "attributes": {"a": "1"}}],
            "bounds": [0.5, "Infinity"],
            "x": "NaN",
            "raw": base64.b64encode(b"\x00\xff").decode(),
            "day": "2026-11-22",
            "total": 12345678901234567890123,
            "ratio": 1.5,
            "flag": True,
            "ns": "2023-11-14T22:13:20.123456789Z",
            "ids": {"1": 2.0},
        }
    ]


def test_intervals_from_duckdb_are_iso_durations(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        table = store.sql(
            "SELECT TIMESTAMPTZ '2026-01-01 00:00:01.5+00' - TIMESTAMPTZ '2026-01-01 00:00:00+00' AS d,"
            " INTERVAL 1 MONTH + INTERVAL 2 DAY AS m, INTERVAL 0 SECOND AS z,"
            " sum(x) AS total FROM range(3) AS t(x)"
        )
    assert to_json_rows(table) == [{"d": "PT1.5S", "m": "P1M2D", "z": "PT0S", "total": 3}]


def test_csv_has_a_header_and_json_text_for_maps() -> None:
    lines = format_csv(sample()).splitlines()
    assert lines == [
        "name,n,attributes,at",
        f'GET /,{BIG},"{{""http.route"":""/"",""k"":""v""}}",2026-11-22T10:00:00.123456Z',
        ",7,{},",
    ]


def test_csv_of_no_rows_is_just_the_header() -> None:
    assert format_csv(pa.table({"a": pa.array([], pa.int64())})) == "a\n"


def test_table_aligns_columns_and_counts_rows() -> None:
    table = pa.table({"name": ["a", "longer"], "n": pa.array([1, 1234], pa.int64())})
    assert format_table(table) == (
        " name   | n\n"  # header
        "--------+------\n"
        " a      |    1\n"
        " longer | 1234\n"
        "(2 rows)\n"
    )


def test_table_shows_nulls_nested_values_and_one_row() -> None:
    lines = format_table(sample().slice(1)).splitlines()
    assert lines[0].split("|")[0].strip() == "name"
    assert [cell.strip() for cell in lines[2].split("|")] == ["NULL", "7", "{}", "NULL"]
    assert lines[-1] == "(1 row)"


def test_table_cuts_long_cells_and_escapes_line_breaks() -> None:
    table = pa.table({"body": ["x" * 100, "two\nlines"]})
    lines = format_table(table, max_cell_width=10).splitlines()
    assert lines[2] == " " + "x" * 9 + "…"
    assert lines[3] == " two\\nlines"
    assert "x" * 100 in format_table(table, max_cell_width=None)


def test_table_of_no_rows_keeps_the_header() -> None:
    lines = format_table(pa.table({"a": pa.array([], pa.int64())})).splitlines()
    assert lines == [" a", "---", "(0 rows)"]


def sql_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mallard sql")
    add_sql_arguments(parser)
    return parser.parse_args(list(argv))


def write_spans(root: Path) -> None:
    directory = root / "v1" / "spans" / "date=2026-11-22" / "hour=10"
    directory.mkdir(parents=True)
    row: dict[str, object] = dict.fromkeys(SPANS.names)
    row.update(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", attributes=[("http.route", "/")])
    table = pa.Table.from_pylist([row], schema=SPANS)
    pq.write_table(table, directory / "w0-0000000000000001-0000000000000001-ab.parquet")


def test_sql_command_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_spans(tmp_path)
    query = "SELECT trace_id, attributes FROM spans"
    status = run_sql(sql_args("--data", str(tmp_path), "--format", "json", query))
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert json.loads(out) == [
        {
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "attributes": {"http.route": "/"},
        }
    ]


def test_sql_command_reads_the_store_from_the_environment_and_sql_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_spans(tmp_path)
    monkeypatch.setenv("MALLARD_DATA", str(tmp_path))
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT count(*) AS n FROM spans\n"))
    status = run_sql(sql_args("--format", "csv", "-"))
    assert (status, capsys.readouterr().out) == (0, "n\n1\n")


def test_sql_command_rejects_a_bad_query_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_sql(sql_args("--data", str(tmp_path), "SELEC trace_id FROM spans"))
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.startswith("mallard sql: error: Parser Error: syntax error")
    assert err.count("\n") == 1


def test_sql_command_warns_about_a_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = run_sql(sql_args("--data", str(tmp_path / "typo"), "SELECT count(*) AS n FROM logs"))
    out, err = capsys.readouterr()
    assert status == 0
    assert out.splitlines()[-1] == "(1 row)"
    assert err.startswith("mallard sql: warning:")


def test_sql_command_rejects_an_empty_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    status = run_sql(sql_args("--data", str(tmp_path), "-"))
    assert (status, capsys.readouterr().err) == (
        2,
        "mallard sql: error: no SQL given\n",
    )
