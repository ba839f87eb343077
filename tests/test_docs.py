"""Tests that fail when the docs drift from the code (the Datasette way).

- `docs/storage.md`: every column and nested field of every schema-v1 table, with the type DuckDB shows
  reading a file the real writer committed; the promoted span columns; the partition and sort columns;
  the file metadata keys; every SQL and Python example runs.
- `storage/README.md`: every `ParquetSettings` field with its default.
- `collector/README.md`: every collector setting with its flag, env var and default; every flag of
  `mallard serve --help`.
- `query/README.md`: every settings row is a flag of `mallard sql --help`.
- `README.md`: the quick start is exactly `scripts/serve` and `scripts/test`, both executable.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mallard.collector.config import SETTINGS, CollectorConfig, Setting, env_var, flag, parse_size
from mallard.query.engine import HIVE_COLUMNS, Store
from mallard.storage.compact import COMPACT_SORT, ROW_GROUP_ROWS, CompactionSettings, maintain
from mallard.storage.layout import table_glob
from mallard.storage.schema import (
    ALL_SCHEMAS,
    ALL_TABLES,
    COMPACTED_COLUMNS,
    DERIVED_TABLES,
    EVENT,
    EXEMPLAR,
    LINK,
    PARTITION_TIME_COLUMN,
    QUANTILE,
    SCHEMA_VERSION,
    SCHEMAS,
    SPAN_PROMOTED,
    TABLES,
)
from mallard.storage.writer import SORT_KEYS, ParquetSettings, ParquetSink

REPO = Path(__file__).resolve().parents[1]
STORAGE_DOC = REPO / "docs" / "storage.md"
NESTED_TYPE = "STRUCT(…)[]"  # how docs/storage.md writes the type of a list of structs
_BACKTICKED = re.compile(r"`([^`]*)`")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


# --- markdown helpers -------------------------------------------------------------------------


def _read(relative: str) -> str:
    return (REPO / relative).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> list[str]:
    """The lines under `heading` (e.g. `## spans`) up to the next heading of the same or a higher level."""
    level = heading.split(maxsplit=1)[0]
    lines = text.splitlines()
    assert heading in lines, f"heading {heading!r} not found"
    body: list[str] = []
    fenced = False
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("```"):
            fenced = not fenced
        marker = line.split(" ", 1)[0]
        if not fenced and marker and set(marker) == {"#"} and len(marker) <= len(level):
            break
        body.append(line)
    return body


def _tables(lines: list[str]) -> list[list[list[str]]]:
    """The markdown tables among `lines`: each a list of rows of cells, header and separator dropped."""
    tables: list[list[list[str]]] = []
    block: list[str] = []
    fenced = False
    for line in [*lines, ""]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            block.append(line)
            continue
        if block:
            assert len(block) >= 2 and set(block[1].replace("|", "").strip()) <= set("-: "), block[:2]
            tables.append([_cells(row) for row in block[2:]])
            block = []
    return tables


def _cells(row: str) -> list[str]:
    inner = row.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def _code(cell: str) -> str:
    """The text of a cell that is one backticked span; fails on anything else."""
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"expected one `backticked` value, got {cell!r}"
    return match[1]


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _single_table(relative: str, heading: str) -> list[list[str]]:
    tables = _tables(_section(_read(relative), heading))
    assert len(tables) == 1, f"{relative} {heading}: expected one table, found {len(tables)}"
    return tables[0]


# --- a store written by the real writer --------------------------------------------------------


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One row per table, committed by `ParquetSink` (every column NULL but the partition column)."""
    return _one_row_per_table(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def compacted_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rows as `store_root`, with every hour compacted (so the `traces` table exists)."""
    root = _one_row_per_table(tmp_path_factory.mktemp("compacted"))
    maintain(root, settings=CompactionSettings(fsync=False))
    return root


def _one_row_per_table(root: Path) -> Path:
    sink = ParquetSink(root, settings=ParquetSettings(fsync=False))
    moment = datetime(2024, 5, 31, 16, 10, tzinfo=UTC)
    for table in TABLES:
        rows = pa.Table.from_pylist([{PARTITION_TIME_COLUMN[table]: moment}], schema=SCHEMAS[table])
        sink.write(table, rows.to_batches(), writer="w0", first_lsn=1, last_lsn=1)
    return root


def _duckdb_columns(root: Path, table: str) -> dict[str, str]:
    """Column -> type as DuckDB shows it reading the table's files; list-of-struct fields as `col[].f`."""
    connection = duckdb.connect()
    relation = connection.sql(
        f"select * from read_parquet('{table_glob(root, table)}', hive_partitioning = true)"
    )
    columns: dict[str, str] = {}
    for name, dtype in zip(relation.columns, relation.dtypes, strict=True):
        if dtype.id == "list" and dtype.child.id == "struct":
            columns[name] = NESTED_TYPE
            for child, child_type in dtype.child.children:
                columns[f"{name}[].{child}"] = str(child_type)
        else:
            columns[name] = str(dtype)
    connection.close()
    return columns


def _row_of(table: str, column: str) -> str:
    return next(row[2] for row in _single_table("docs/storage.md", f"## {table}") if _code(row[0]) == column)


def _documented_columns(table: str) -> dict[str, str]:
    documented: dict[str, str] = {}
    for row in _single_table("docs/storage.md", f"## {table}"):
        assert len(row) == 3, f"## {table}: expected `column | type | meaning`, got {row}"
        name, typ, meaning = _code(row[0]), _code(row[1]), row[2]
        assert name not in documented, f"## {table}: `{name}` documented twice"
        assert meaning, f"## {table}: `{name}` has no meaning"
        documented[name] = typ
    return documented


# --- docs/storage.md ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_storage_doc_lists_every_column_with_its_duckdb_type(table: str, store_root: Path) -> None:
    actual = _duckdb_columns(store_root, table)
    documented = _documented_columns(table)
    for column in COMPACTED_COLUMNS.get(table, {}):  # documented as in compacted files only
        assert "compacted files only" in _row_of(table, column), column
        del documented[column]
    _assert_documented(table, actual, documented)


@pytest.mark.parametrize("table", ALL_TABLES)
def test_compacted_files_keep_the_documented_columns_and_types(table: str, compacted_root: Path) -> None:
    assert all(path.name.startswith("c-") for path in (compacted_root / "v1" / table).rglob("*.parquet"))
    _assert_documented(table, _duckdb_columns(compacted_root, table), _documented_columns(table))


@pytest.mark.parametrize("table", DERIVED_TABLES)
def test_storage_doc_derived_table_columns_match_the_schema(table: str) -> None:
    documented = [name for name in _documented_columns(table) if name not in ("date", "hour")]
    assert documented == ALL_SCHEMAS[table].names


def test_storage_doc_compaction_sort_matches_the_compactor() -> None:
    rows = _single_table("docs/storage.md", "## Compaction")
    documented = {_code(row[0]): _BACKTICKED.findall(row[1]) for row in rows}
    assert documented == {
        **{table: list(keys) for table, keys in COMPACT_SORT.items()},
        "traces": ["trace_id"],
        "attribute_index": ["key", "value", "trace_id"],
    }
    assert {_code(row[0]): int(row[2].replace(",", "")) for row in rows} == ROW_GROUP_ROWS


def test_storage_doc_compacted_metadata_keys_match_compacted_files(compacted_root: Path) -> None:
    rows = _tables(_section(_read("docs/storage.md"), "## File format"))[1]
    documented = {_code(row[0]) for row in rows}
    for table in ALL_TABLES:
        for path in (compacted_root / "v1" / table).rglob("*.parquet"):
            metadata = pq.ParquetFile(path).metadata.metadata
            written = {key.decode() for key in metadata if key.startswith(b"mallard.")}
            expected = documented - {"mallard.wal_coverage"} if table in DERIVED_TABLES else documented
            assert written == expected, path


def _assert_documented(table: str, actual: dict[str, str], documented: dict[str, str]) -> None:
    assert sorted(set(actual) - set(documented)) == [], f"## {table}: undocumented columns"
    assert sorted(set(documented) - set(actual)) == [], f"## {table}: documented columns that do not exist"
    wrong = {name: (documented[name], actual[name]) for name in actual if documented[name] != actual[name]}
    assert wrong == {}, f"## {table}: (documented, DuckDB) types differ"


def test_storage_doc_covers_every_schema_column_and_nested_struct() -> None:
    """The schemas themselves, independently of DuckDB: top-level names and every nested struct field."""
    for table, schema in SCHEMAS.items():
        documented = set(_documented_columns(table))
        assert set(schema.names) <= documented, table
        assert {name for name, _ in HIVE_COLUMNS} <= documented, table
    nested = {
        ("spans", "events"): EVENT,
        ("spans", "links"): LINK,
        ("metrics", "exemplars"): EXEMPLAR,
        ("metrics", "quantiles"): QUANTILE,
    }
    for (table, column), struct in nested.items():
        assert SCHEMAS[table].field(column).type.value_type == struct
        expected = {f"{column}[].{field.name}" for field in struct}
        documented = {name for name in _documented_columns(table) if name.startswith(f"{column}[].")}
        assert documented == expected, f"## {table}: fields of `{column}`"


def test_storage_doc_promoted_columns_match_the_schema() -> None:
    rows = _single_table("docs/storage.md", "## Promoted span columns")
    documented = {_code(row[0]): _BACKTICKED.findall(row[2]) for row in rows}
    assert documented == {column: list(keys) for column, (_, keys) in SPAN_PROMOTED.items()}
    spans = _documented_columns("spans")
    for row in rows:
        assert _code(row[1]) == spans[_code(row[0])], row


def test_storage_doc_partition_and_sort_columns_match_the_writer() -> None:
    rows = _single_table("docs/storage.md", "## Tables")
    assert [_code(row[0]) for row in rows] == list(TABLES)
    for row in rows:
        table = _code(row[0])
        assert _code(row[2]) == PARTITION_TIME_COLUMN[table], table
        assert all(order == "ascending" for _, order in SORT_KEYS[table]), table
        assert _BACKTICKED.findall(row[3]) == [column for column, _ in SORT_KEYS[table]], table


def test_storage_doc_metadata_keys_match_committed_files(store_root: Path) -> None:
    rows = _tables(_section(_read("docs/storage.md"), "## File format"))[0]
    documented = {_code(row[0]): row[1] for row in rows}
    for table in TABLES:
        for path in (store_root / "v1" / table).rglob("*.parquet"):
            metadata = pq.ParquetFile(path).metadata.metadata
            written = {key.decode() for key in metadata if key.startswith(b"mallard.")}
            assert written == set(documented), path
            assert metadata[b"mallard.schema_version"] == str(SCHEMA_VERSION).encode()
    assert documented["mallard.schema_version"] == f"`{SCHEMA_VERSION}`"


def test_committed_files_have_the_documented_format(store_root: Path) -> None:
    text = STORAGE_DOC.read_text(encoding="utf-8")
    assert f"/v{SCHEMA_VERSION}/" in text and "**zstd**" in text
    assert f"row groups of at most {ParquetSettings().row_group_rows:,} rows" in text
    for path in store_root.rglob("*.parquet"):
        parquet = pq.ParquetFile(path)
        chunk = parquet.metadata.row_group(0).column(0)
        assert chunk.compression == "ZSTD" and chunk.is_stats_set, path
        for column in parquet.schema:
            if column.logical_type.type == "TIMESTAMP":
                assert '"isAdjustedToUTC":true' in column.logical_type.to_json().replace(" ", "")
                assert '"timeUnit":"microseconds"' in column.logical_type.to_json().replace(" ", "")


def test_storage_doc_examples_run(store_root: Path) -> None:
    text = STORAGE_DOC.read_text(encoding="utf-8").replace("<data>", os.fspath(store_root))
    statements = [
        statement
        for block in _code_blocks(text, "sql")
        for statement in re.split(r";\s*$", block, flags=re.MULTILINE)
        if any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())
    ]
    assert len(statements) >= 10
    with Store(store_root) as store:
        for statement in statements:
            store.sql(statement)
    committed = next(store_root.rglob("*.parquet"))
    for block in _code_blocks(text, "python"):
        exec(compile(block, "docs/storage.md", "exec"), {"path": committed})


# --- storage/README.md -------------------------------------------------------------------------


def test_storage_readme_lists_every_parquet_setting_with_its_default() -> None:
    rows = _single_table("storage/README.md", "## Settings")
    documented = {_code(row[0]): _code(row[1]) for row in rows}
    defaults = ParquetSettings()
    expected = {f.name: str(getattr(defaults, f.name)) for f in dataclasses.fields(ParquetSettings)}
    assert documented == expected


# --- collector/README.md and `mallard serve --help` --------------------------------------------


@functools.cache
def _help(command: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mallard.app.cli", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    return " ".join(result.stdout.split())


def _shown_default(setting: Setting) -> str:
    """A setting's default as the README shows it: sizes with a binary unit (`64MiB`)."""
    value = getattr(CollectorConfig(), setting.name)
    if setting.parse is parse_size:
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value % size == 0:
                return f"{value // size}{unit}"
    if isinstance(value, tuple):  # lists of values are written comma-separated, as on the command line
        return ",".join(value)
    return str(value)


def test_collector_readme_lists_every_setting() -> None:
    rows = _single_table("collector/README.md", "## Settings")
    documented = {_code(row[0]): [_code(cell) for cell in row[1:4]] for row in rows}
    expected = {s.name: [flag(s.name), env_var(s.name), _shown_default(s)] for s in SETTINGS}
    assert sorted(set(expected) - set(documented)) == [], "settings missing from collector/README.md"
    assert sorted(set(documented) - set(expected)) == [], "collector/README.md lists unknown settings"
    wrong = {
        name: (documented[name], expected[name]) for name in expected if documented[name] != expected[name]
    }
    assert wrong == {}, "(documented, actual) [flag, env, default] differ"


def test_sizes_shown_in_collector_readme_parse_back() -> None:
    for setting in SETTINGS:
        if setting.parse is parse_size:
            assert parse_size(_shown_default(setting)) == getattr(CollectorConfig(), setting.name)


def test_every_setting_is_a_serve_flag() -> None:
    flags = set(_FLAG.findall(_help("serve")))
    assert sorted({flag(s.name) for s in SETTINGS} - flags) == []


def test_every_serve_flag_is_documented() -> None:
    readme = _read("collector/README.md")
    undocumented = {f for f in _FLAG.findall(_help("serve")) if f != "--help" and f"`{f}" not in readme}
    assert sorted(undocumented) == []


# --- query/README.md and `mallard sql --help` --------------------------------------------------


def test_query_readme_settings_are_sql_flags() -> None:
    help_text = _help("sql")
    flags = set(_FLAG.findall(help_text))
    rows = _single_table("query/README.md", "## Settings")
    documented = set()
    for row in rows:
        option = _code(row[1]).split()[0]
        documented.add(option)
        assert option in flags, f"query/README.md: {option} is not a `mallard sql` flag"
        if row[2].startswith("`"):
            assert _code(row[2]) in help_text, f"{option}: env {row[2]} not in `mallard sql --help`"
        assert _code(row[3]) in help_text, f"{option}: default {row[3]} not in `mallard sql --help`"
    assert sorted(flags - documented - {"--help"}) == [], "`mallard sql` flags missing from query/README.md"


# --- README.md ---------------------------------------------------------------------------------


def test_readme_quick_start_is_two_commands() -> None:
    blocks = _code_blocks("\n".join(_section(_read("README.md"), "## Quick start")), "sh")
    assert blocks, "README.md: no ```sh block under ## Quick start"
    commands = [line.split("#", 1)[0].strip() for line in blocks[0].splitlines()]
    assert [c for c in commands if c] == ["scripts/serve", "scripts/test"]
    for script in ("scripts/serve", "scripts/test"):
        path = REPO / script
        assert path.is_file() and os.access(path, os.X_OK), f"{script} missing or not executable"
