"""`Store`: SQL over a mallard store through an in-memory DuckDB connection.

Each table of the storage contract (`spans`, `metrics`, `logs`) is a view over
`read_parquet('<root>/v1/<table>/**/*.parquet', hive_partitioning=true, union_by_name=true)`, so the
hive columns `date` (DATE) and `hour` (BIGINT) follow the schema columns. Columns are added within v1,
so files of different ages hold different columns: the view is that read `UNION ALL BY NAME` under a
typed empty relation of the v1 Arrow schema's columns (and those only compacted files have, such as
`metrics.series_id`). Every column of the schema is then there, in schema order, NULL in the rows of
files written before it was added (even where no file has it yet);
columns that only newer files have follow at the end. DuckDB refuses a glob that matches no file, so
while a table has no files its view is the typed empty relation alone. Before every query the store
checks, for each table, whether files exist and redefines a view only when that answer changed: a
store opened while empty sees files that the collector commits later, and a store whose files were
all deleted reads as empty again. The check stops at the first file it finds.

Timestamps stay in UTC: the connection's `TimeZone` is `UTC`, so `TIMESTAMP WITH TIME ZONE` columns
come back as `timestamp[us, tz=UTC]` and print with `+00`.

`traces` (one row per trace) merges the rows of `trace_rows`: the `traces` table that compaction
builds for compacted hours, and the same rows computed from `spans` for every hour that still holds
collector files (the hours not compacted yet, or with late data), so a trace is there as soon as its
spans are. Which hours those are is checked before every query, from the partition directories.

`trace_index` (`trace_id`, `date`, `hour`) and `attribute_index` (`key`, `value`, `trace_id`, `date`,
`hour`) are lookup views over the `traces` and `attribute_index` files that compaction builds; they read
those few columns without `union_by_name`, which every such file has.

Every query holds the store's `ReaderLock` shared, so compaction and retention never swap files
between the listing of the files and the reading of them; should a file vanish anyway (a swap that
did not wait for the lock), the query is run again from the start.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

import duckdb
import pyarrow as pa

from mallard.query.errors import QueryError
from mallard.storage.layout import COMPACTED_PREFIX, Partition, table_dir, table_glob
from mallard.storage.lock import ReaderLock
from mallard.storage.schema import ALL_SCHEMAS, ALL_TABLES, COMPACTED_COLUMNS, TABLES
from mallard.storage.traces import TRACE_MERGE_SQL, trace_rows_sql

# The hive partition columns and the types they are read as (pinned, not inferred from the paths).
HIVE_COLUMNS: Final = (("date", "DATE"), ("hour", "BIGINT"))
_ATTEMPTS: Final = 3  # a query that finds a file gone is run again, at most this many times in all
_RETRY_PAUSE_S: Final = 0.05

# Lookup views: a few columns that every file of a table compaction builds has, read without
# `union_by_name` (which makes DuckDB's planner spend about 60 ms per query over 25 files). A file
# lacking some other column does not matter to a scan that does not project it.
_KEY_VIEWS: Final = {
    "attribute_index": ("attribute_index", ("key", "value", "trace_id")),
    "trace_index": ("traces", ("trace_id",)),
}

T = TypeVar("T")


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
        self._reader_lock = ReaderLock(self._root)
        self.retries = 0  # queries run again because a file vanished (see `read_consistently`)

    @property
    def root(self) -> Path:
        return self._root

    def open_hours(self, table: str = "spans") -> tuple[tuple[str, int], ...]:
        """The (UTC date, hour) partitions of `table` (`spans` or `metrics`) that hold files not
        written by compaction. For `spans`, as of the last query: the hours whose `traces` rows are
        computed from `spans`, not read from the `trace_index` view (the compacted `traces` rows).
        For `metrics`, listed now (only the queries that use them pay for the listing): the hours
        whose rows have no `series_id`."""
        with self._lock:
            return self._views.open_hours if table == "spans" else self._views.list_open_hours(table)

    def sql(
        self, query: str, params: Sequence[object] | None = None, *, order_joins: bool = True
    ) -> pa.Table:
        """Runs `query` (several `;`-separated statements: the last one's result) and returns its rows.

        `params` fill the query's `?` placeholders: caller values never go into SQL text.
        `order_joins=False` skips DuckDB's join-order optimizer, for queries without joins: over the
        table views it costs 10-70 ms per query (it estimates the scans' cardinalities from every
        file's statistics) and has nothing to order there. The typed query functions pass it.
        Raises `QueryError` with DuckDB's message when DuckDB rejects the query.
        """
        values = list(params) if params is not None else None

        def attempt() -> pa.Table:
            self._views.refresh()
            if not order_joins:
                self._connection.execute("SET disabled_optimizers = 'join_order'")
            try:
                relation = self._connection.sql(query, params=values)
                if relation is None:  # no statement at all
                    return pa.table({})
                return relation.to_arrow_table()
            finally:
                if not order_joins:
                    self._connection.execute("RESET disabled_optimizers")

        with self._lock:
            try:
                return read_consistently(self._reader_lock, attempt, self._count_retry)
            except duckdb.Error as error:
                raise QueryError(str(error)) from error

    def hours_source(self, table: str, hours: Sequence[tuple[str, int]]) -> str:
        """A relation (SQL text) of `table`'s rows in the given (UTC date, hour) partitions only, with
        the view's columns: cheaper to plan than the view plus an hours filter, because DuckDB binds
        only those hours' files. DuckDB fails the query ("No files found") when a listed hour has no
        files; callers fall back to the view then."""
        globs = ", ".join(
            _quote(
                str(self._root / Partition(table=table, date=date, hour=hour).relative_dir() / "*.parquet")
            )
            for date, hour in hours
        )
        return f"({self._views.empty(table)} UNION ALL BY NAME {_read_parquet(f'[{globs}]')})"

    def _count_retry(self) -> None:
        self.retries += 1

    def close(self) -> None:
        with self._lock:
            self._connection.close()
            self._reader_lock.close()

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
    """The views `spans`, `metrics`, `logs`, `attribute_index`, `trace_index`, `trace_rows`, `traces`
    of the store under `root`, defined on `connection`.

    Call `refresh()` before every query (under the same lock as the query): it redefines a table's
    view only when the table gained its first file or lost its last one, and the trace views when the
    hours that are not compacted change.
    """

    def __init__(self, connection: duckdb.DuckDBPyConnection, root: Path) -> None:
        self._connection = connection
        self._root = root
        # Parquet footers are read once per file and kept: committed files never change (a file
        # replaced by compaction has a new name), and a lookup then costs no footer reads.
        connection.execute("SET parquet_metadata_cache = true")
        self._has_files: dict[str, bool] = {}
        self._empty = {table: _empty_select(connection, table) for table in ALL_TABLES}
        self._open_hours = {table: _OpenHours(table_dir(root, table)) for table in ("spans", "metrics")}
        self._traces_key: tuple[object, ...] | None = None
        self.open_hours: tuple[tuple[str, int], ...] = ()  # of spans, as of the last refresh

    def refresh(self) -> None:
        for table in TABLES:
            has_files = _has_files(table_dir(self._root, table))
            if self._has_files.get(table) == has_files:
                continue
            source = self._empty[table]
            if has_files:
                source += f" UNION ALL BY NAME {_read_parquet(_table_files(self._root, table))}"
            self._connection.execute(f"CREATE OR REPLACE VIEW {table} AS {source}")
            self._has_files[table] = has_files
        for view, (table, columns) in _KEY_VIEWS.items():
            has_files = _has_files(table_dir(self._root, table))
            if self._has_files.get(view) == has_files:
                continue
            source = (
                _read_parquet(_table_files(self._root, table), union_by_name=False)
                if has_files
                else self._empty[table]
            )
            names = ", ".join([*columns, *(name for name, _ in HIVE_COLUMNS)])
            self._connection.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT {names} FROM ({source})")
            self._has_files[view] = has_files
        self._refresh_traces()

    def empty(self, table: str) -> str:
        """A `SELECT` of no rows with `table`'s columns and types."""
        return self._empty[table]

    def list_open_hours(self, table: str) -> tuple[tuple[str, int], ...]:
        """The hours of `table` (`spans` or `metrics`) that hold files not written by compaction."""
        return self._open_hours[table].list()

    def _refresh_traces(self) -> None:
        has_rows = _has_files(table_dir(self._root, "traces"))
        open_hours = self._open_hours["spans"].list() if self._has_files["spans"] else ()
        key = (has_rows, open_hours)
        self.open_hours = open_hours
        if key == self._traces_key:
            return
        hours = hours_predicate(open_hours)
        source = self._empty["traces"]
        if has_rows:
            built = f"SELECT * FROM ({_read_parquet(_table_files(self._root, 'traces'))})"
            source += f" UNION ALL BY NAME {built}" + (f" WHERE NOT ({hours})" if hours else "")
        if hours:
            live = trace_rows_sql(f"(SELECT * FROM spans WHERE {hours})", extra_keys=("date", "hour"))
            source += f" UNION ALL BY NAME SELECT * FROM ({live})"
        self._connection.execute(f"CREATE OR REPLACE VIEW trace_rows AS {source}")
        self._connection.execute(f"CREATE OR REPLACE VIEW traces AS {TRACE_MERGE_SQL}")
        self._traces_key = key


def hours_predicate(hours: Sequence[tuple[str, int]]) -> str:
    """SQL true for the rows of the given (UTC date, hour) partitions; `''` for none. The values come
    from partition directory names (`Partition.of_dir` checked them), not from callers."""
    return " OR ".join(f"(date = DATE '{date}' AND hour = {int(hour)})" for date, hour in hours)


class _OpenHours:
    """The (date, hour) partitions of `spans` that hold files not written by compaction; a directory
    is listed again only when its modification time changed."""

    def __init__(self, spans_dir: Path) -> None:
        self._spans_dir = spans_dir
        self._seen: dict[str, tuple[int, bool]] = {}  # hour directory → (mtime_ns, open)

    def list(self) -> tuple[tuple[str, int], ...]:
        found = []
        seen: dict[str, tuple[int, bool]] = {}
        for date_entry in _scan(self._spans_dir):
            for hour_entry in _scan(Path(date_entry.path)):
                try:
                    mtime = hour_entry.stat().st_mtime_ns
                except OSError:
                    continue
                cached = self._seen.get(hour_entry.path)
                is_open = cached[1] if cached is not None and cached[0] == mtime else _is_open(hour_entry)
                seen[hour_entry.path] = (mtime, is_open)
                partition = Partition.of_dir("spans", Path(hour_entry.path))
                if is_open and partition is not None:
                    found.append((partition.date, partition.hour))
        self._seen = seen
        return tuple(sorted(found))


def _scan(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return [entry for entry in entries if entry.is_dir()]
    except OSError:
        return []


def _is_open(hour_entry: os.DirEntry[str]) -> bool:
    try:
        with os.scandir(hour_entry.path) as entries:
            return any(
                entry.name.endswith(".parquet") and not entry.name.startswith(COMPACTED_PREFIX)
                for entry in entries
            )
    except OSError:
        return False


def read_consistently(
    lock: ReaderLock, attempt: Callable[[], T], on_retry: Callable[[], None] | None = None
) -> T:
    """`attempt()` under the readers' lock, run again (at most `_ATTEMPTS` times in all) when a file
    it listed was gone by the time it opened it; `on_retry` is called before each new attempt."""
    for number in range(1, _ATTEMPTS + 1):
        with lock.shared():
            try:
                return attempt()
            except duckdb.IOException as error:
                if number == _ATTEMPTS or not _vanished(error):
                    raise
        if on_retry is not None:
            on_retry()
        time.sleep(_RETRY_PAUSE_S * number)
    raise AssertionError("unreachable")


def _vanished(error: duckdb.IOException) -> bool:
    text = str(error)
    return "No such file or directory" in text or "No files found" in text


def _has_files(directory: Path) -> bool:
    """Whether the table glob `<directory>/**/*.parquet` matches at least one file."""
    return next(directory.rglob("*.parquet"), None) is not None


def _table_files(root: Path, table: str) -> str:
    """Every file of `table`, as a DuckDB file argument."""
    return _quote(table_glob(root, table))


def _read_parquet(files: str, *, union_by_name: bool = True) -> str:
    """All columns of the Parquet `files` (a DuckDB file argument: a glob or a list of globs), with
    the hive columns typed as `HIVE_COLUMNS`."""
    hive_types = ", ".join(f"'{name}': '{sql_type}'" for name, sql_type in HIVE_COLUMNS)
    return f"SELECT * FROM read_parquet({files}, hive_partitioning = true, hive_types = {{{hive_types}}}" + (
        ", union_by_name = true)" if union_by_name else ")"
    )


def _empty_select(connection: duckdb.DuckDBPyConnection, table: str) -> str:
    """A `SELECT` of no rows with the columns and DuckDB types the table has once files exist."""
    schema = ALL_SCHEMAS[table]
    for name, (data_type, _) in COMPACTED_COLUMNS.get(table, {}).items():
        schema = schema.append(pa.field(name, data_type))
    relation = connection.from_arrow(schema.empty_table())
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
