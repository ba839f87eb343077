"""`SqlSandbox`: read-only SQL over a store, for the HTTP SQL endpoint and the UI.

Anyone who can reach the endpoint writes the SQL, so two independent guards stand between it and the
machine:

1. **DuckDB's own settings**, applied to a dedicated in-memory connection and then locked
   (`lock_configuration`): `enable_external_access = false` with `allowed_directories` set to the
   store's table directories (`<root>/v1/<table>/`), so every file function (`read_csv`, `read_text`,
   `read_blob`, `read_json`, `read_parquet`, `glob`, `parquet_metadata`, `FROM '<path>'`, `COPY`,
   `EXPORT`, `ATTACH <file>`) fails on any other path, `..` included; extensions are neither
   auto-installed, auto-loaded nor loadable; Python replacement scans are off (otherwise
   `SELECT * FROM name` reads any Python variable called `name` in the caller's frames); and
   `temp_directory` is empty, so DuckDB spills nothing to disk (an over-large query fails instead).
2. **A statement check with DuckDB's own parser**: exactly one statement, of type `SELECT` (this
   includes `WITH … SELECT`, `FROM t`, `VALUES`, `DESCRIBE`, `SUMMARIZE`, `SHOW`). Everything else
   (`COPY`, `EXPORT`, `ATTACH`, `DETACH`, `INSTALL`, `LOAD`, `SET`, `RESET`, `PRAGMA`, `CALL`, DDL,
   DML, transactions, `EXPLAIN`) is refused before it runs. The guard is needed on its own:
   `allowed_directories` permits *writing* inside the allowed directories, and `ATTACH ':memory:'` or
   `CREATE TABLE` touch no file at all.

| limit | field of `SqlLimits` | default | when exceeded |
|---|---|---|---|
| wall-clock time of one query (planning, running, fetching) | `timeout_s` | 10 s | `SqlTimeout` |
| rows returned | `max_rows` | 10 000 | rows cut, `truncated=True` |
| bytes of the rows as compact JSON | `max_bytes` | 10 MiB | rows cut, `truncated=True` |

Failure behaviour: a refused statement raises `SqlRefused` (HTTP 403), SQL DuckDB rejects raises
`QueryError` with DuckDB's message (HTTP 400), a query over time is interrupted through
`connection.interrupt()` from a timer thread and raises `SqlTimeout`. In every case the sandbox
stays usable for the next query. Queries run one at a time per sandbox.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import duckdb
import pyarrow as pa

from mallard.query.engine import TableViews, read_consistently
from mallard.query.errors import QueryError, SqlRefused, SqlTimeout
from mallard.query.output import JsonValue, to_json_rows
from mallard.storage.layout import table_dir
from mallard.storage.lock import ReaderLock
from mallard.storage.schema import ALL_TABLES

_BATCH_ROWS: Final = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SqlLimits:
    """How long one query may run and how much of its result comes back."""

    timeout_s: float = 10.0
    max_rows: int = 10_000
    max_bytes: int = 10 * 1024 * 1024

    def validate(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_rows < 0:
            raise ValueError(f"max_rows must be >= 0, got {self.max_rows}")
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {self.max_bytes}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SqlResult:
    """A query's column names and rows (JSON-ready values); `truncated` when a cap cut rows off."""

    columns: list[str]
    rows: list[list[JsonValue]]
    truncated: bool


class SqlSandbox:
    """Runs read-only `SELECT`s against the store under `root` within `limits`; safe to share
    between threads. Use as a context manager, or call `close()`."""

    def __init__(self, root: Path | str, *, limits: SqlLimits | None = None) -> None:
        self._limits = limits or SqlLimits()
        self._limits.validate()
        self._root = Path(root).resolve()
        self._lock = threading.Lock()
        self._connection = duckdb.connect(":memory:")
        try:
            self._views = TableViews(self._connection, self._root)
            _lock_down(self._connection, [table_dir(self._root, table) for table in ALL_TABLES])
        except duckdb.Error as error:
            self._connection.close()
            raise QueryError(str(error)) from error
        self._reader_lock = ReaderLock(self._root)

    @property
    def limits(self) -> SqlLimits:
        return self._limits

    def run(self, sql: str, *, max_rows: int | None = None) -> SqlResult:
        """Runs one `SELECT`; `max_rows` lowers the row cap of the limits for this query only.

        Raises `SqlRefused` for any other statement or a file outside the store, `SqlTimeout` past
        the time limit, and `QueryError` with DuckDB's message for SQL DuckDB rejects.
        """
        row_cap = self._limits.max_rows if max_rows is None else min(max_rows, self._limits.max_rows)
        with self._lock:
            statement = self._parse(sql)
            fired = threading.Event()

            def interrupt() -> None:
                fired.set()
                self._connection.interrupt()

            timer = threading.Timer(self._limits.timeout_s, interrupt)
            timer.start()
            try:

                def attempt() -> SqlResult:
                    self._views.refresh()
                    return self._fetch(self._connection.sql(statement), row_cap)

                return read_consistently(self._reader_lock, attempt)
            except duckdb.PermissionException as error:
                raise SqlRefused(f"read-only SQL cannot reach outside the store: {error}") from error
            except (duckdb.Error, pa.ArrowException, OSError) as error:  # pyarrow raises while streaming
                if fired.is_set() or isinstance(error, duckdb.InterruptException):
                    message = f"query interrupted after its time limit of {self._limits.timeout_s} s"
                    raise SqlTimeout(message) from error
                raise QueryError(str(error)) from error
            finally:
                timer.cancel()
                timer.join()  # no interrupt can reach the next query

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

    def _parse(self, sql: str) -> duckdb.Statement:
        """The one `SELECT` statement of `sql`, parsed by DuckDB; refuses anything else."""
        try:
            statements = self._connection.extract_statements(sql)
        except duckdb.Error as error:
            raise QueryError(str(error)) from error
        if len(statements) != 1:
            raise SqlRefused(f"read-only SQL runs exactly one statement, got {len(statements)}")
        statement = statements[0]
        if statement.type != duckdb.StatementType.SELECT:
            raise SqlRefused(f"read-only SQL runs only SELECT queries, got a {statement.type.name} statement")
        return statement

    def _fetch(self, relation: duckdb.DuckDBPyRelation, row_cap: int) -> SqlResult:
        columns = list(relation.columns)
        reader = relation.to_arrow_reader(_BATCH_ROWS)
        rows: list[list[JsonValue]] = []
        size = 0
        if reader is None:
            return SqlResult(columns=columns, rows=rows, truncated=False)
        for batch in reader:
            for row in _json_rows(batch):
                row_size = len(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
                if len(rows) >= row_cap or size + row_size > self._limits.max_bytes:
                    return SqlResult(columns=columns, rows=rows, truncated=True)
                rows.append(row)
                size += row_size
        return SqlResult(columns=columns, rows=rows, truncated=False)


def _lock_down(connection: duckdb.DuckDBPyConnection, directories: list[Path]) -> None:
    """Confines `connection` to reading `directories`, then locks its configuration."""
    allowed = "[" + ", ".join(_quote(f"{directory}/") for directory in directories) + "]"
    for setting in (
        "TimeZone = 'UTC'",
        "temp_directory = ''",  # before allowed_directories: DuckDB adds the temp directory to them
        f"allowed_directories = {allowed}",
        "enable_external_access = false",
        "autoinstall_known_extensions = false",
        "autoload_known_extensions = false",
        "allow_community_extensions = false",
        "python_enable_replacements = false",
        "lock_configuration = true",
    ):
        connection.execute(f"SET {setting}")


def _json_rows(batch: pa.RecordBatch) -> list[list[JsonValue]]:
    """The rows of `batch` as lists of JSON-ready values (positional, so duplicate names are kept)."""
    table = pa.Table.from_batches([batch]).rename_columns([str(i) for i in range(batch.num_columns)])
    return [list(row.values()) for row in to_json_rows(table)]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
