"""`Store`: SQL over a mallard store through an in-memory DuckDB connection.

Each table of the storage contract (`spans`, `metrics`, `logs`) is a view over
`read_parquet('<root>/v1/<table>/**/*.parquet', hive_partitioning=true, union_by_name=true)`, so the
hive columns `date` (DATE) and `hour` (BIGINT) follow the schema columns. Columns are added within v1,
so files of different ages hold different columns: the view is that read `UNION ALL BY NAME` under a
typed empty relation of the v1 Arrow schema's columns. Every column of the schema is then there, in
schema order, NULL in the rows of files written before it was added (even where no file has it yet);
columns that only newer files have follow at the end. DuckDB refuses a glob that matches no file, so
while a table has no files its view is the typed empty relation alone. Before every query the store
checks, for each table, whether files exist and redefines a view only when that answer changed: a
store opened while empty sees files that the collector commits later, and a store whose files were
all deleted reads as empty again. The check stops at the first file it finds.

Timestamps stay in UTC: the connection's `TimeZone` is `UTC`, so `TIMESTAMP WITH TIME ZONE` columns
come back as `timestamp[us, tz=UTC]` and print with `+00`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import duckdb
import pyarrow as pa

from mallard.query.errors import QueryError
from mallard.storage.layout import table_dir, table_glob
from mallard.storage.schema import SCHEMAS, TABLES

# The hive partition columns and the types they are read as (pinned, not inferred from the paths).
HIVE_COLUMNS: Final = (("date", "DATE"), ("hour", "BIGINT"))


class Store:
    """Read-only SQL over the Parquet files under `root`; safe to share between threads.

    Queries are run one at a time on one connection. Use as a context manager, or call `close()`.
    """

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root)
        self._lock = threading.Lock()
        self._connection = duckdb.connect(":memory:")
        try:
            self._connection.execute("SET TimeZone = 'UTC'")
            self._views = TableViews(self._connection, self._root)
        except duckdb.Error as error:
            self._connection.close()
            raise QueryError(str(error)) from error

    @property
    def root(self) -> Path:
        return self._root

    def sql(self, query: str, params: Sequence[object] | None = None) -> pa.Table:
        """Runs `query` (several `;`-separated statements: the last one's result) and returns its rows.

        `params` fill the query's `?` placeholders: caller values never go into SQL text.
        Raises `QueryError` with DuckDB's message when DuckDB rejects the query.
        """
        with self._lock:
            try:
                self._views.refresh()
                relation = self._connection.sql(query, params=list(params) if params is not None else None)
                if relation is None:  # no statement at all
                    return pa.table({})
                return relation.to_arrow_table()
            except duckdb.Error as error:
                raise QueryError(str(error)) from error

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TableViews:
    """The views `spans`, `metrics`, `logs` of the store under `root`, defined on `connection`.

    Call `refresh()` before every query (under the same lock as the query): it redefines a view only
    when its table gained its first file or lost its last one.
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection, root: Path) -> None:
        self._connection = connection
        self._root = root
        self._has_files: dict[str, bool] = {}
        self._empty = {table: _empty_select(connection, table) for table in TABLES}

    def refresh(self) -> None:
        for table in TABLES:
            has_files = _has_files(table_dir(self._root, table))
            if self._has_files.get(table) == has_files:
                continue
            source = self._empty[table]
            if has_files:
                source += f" UNION ALL BY NAME {_parquet_select(self._root, table)}"
            self._connection.execute(f"CREATE OR REPLACE VIEW {table} AS {source}")
            self._has_files[table] = has_files


def _has_files(directory: Path) -> bool:
    """Whether the table glob `<directory>/**/*.parquet` matches at least one file."""
    return next(directory.rglob("*.parquet"), None) is not None


def _parquet_select(root: Path, table: str) -> str:
    hive_types = ", ".join(f"'{name}': '{sql_type}'" for name, sql_type in HIVE_COLUMNS)
    return (
        f"SELECT * FROM read_parquet({_quote(table_glob(root, table))}, hive_partitioning = true,"
        f" union_by_name = true, hive_types = {{{hive_types}}})"
    )


def _empty_select(connection: duckdb.DuckDBPyConnection, table: str) -> str:
    """A `SELECT` of no rows with the columns and DuckDB types the table has once files exist."""
    relation = connection.from_arrow(SCHEMAS[table].empty_table())
    columns = [
        (name, str(sql_type)) for name, sql_type in zip(relation.columns, relation.dtypes, strict=True)
    ]
    columns.extend(HIVE_COLUMNS)
    casts = ", ".join(f"CAST(NULL AS {sql_type}) AS {_identifier(name)}" for name, sql_type in columns)
    return f"SELECT {casts} WHERE false"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
