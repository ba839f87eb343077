"""The `mallard sql` command: run one query against a store and print (or write) the result.

`mallard.app.cli` owns the top-level parser; it calls `add_sql_arguments` on its `sql` sub-parser and
`run_sql` with the parsed arguments.

| setting | flag | env var | default |
|---|---|---|---|
| store root | `--data DIR` | `MALLARD_DATA` | `./mallard-data` |
| output format | `--format {table,csv,json,parquet}` | | `table` |
| output file | `--output FILE` | | stdout |

`--format parquet` writes a zstd Parquet file with timestamps in microseconds (what Spark reads) and
needs `--output`. With `--output` the result goes to a temporary file next to FILE that is renamed
into place once complete, so FILE is never seen half written; a one-line `wrote N rows to FILE`
goes to stderr.

Failure behaviour: a query DuckDB rejects, or `--format parquet` without `--output`, prints
`mallard sql: error: <reason>` (one line) on stderr and returns exit status 2; so does a result that
Parquet cannot hold (an INTERVAL column). A file that cannot be written (missing directory, no
permission) prints the same kind of line and returns 1; FILE is left as it was. A store directory
that does not exist is not an error (every table is empty), but a one-line warning goes to stderr,
since it is usually a mistyped `--data`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from mallard.query.engine import Store
from mallard.query.errors import QueryError
from mallard.query.output import format_csv, format_json, format_table

DATA_ENV: Final = "MALLARD_DATA"
DEFAULT_DATA: Final = "mallard-data"
EXIT_WRITE_FAILED: Final = 1
EXIT_BAD_QUERY: Final = 2
FORMATTERS: Final[dict[str, Callable[[pa.Table], str]]] = {
    "table": format_table,
    "csv": format_csv,
    "json": format_json,
}
PARQUET: Final = "parquet"
PARQUET_COMPRESSION: Final = "zstd"
_PROG: Final = "mallard sql"


def add_sql_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of `mallard sql` to `parser`."""
    add_data_argument(parser)
    parser.add_argument(
        "--format",
        choices=[*FORMATTERS, PARQUET],
        default="table",
        help="output format (default: table); parquet needs --output",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        type=Path,
        default=None,
        help="write the result to FILE, atomically, instead of stdout (default: stdout)",
    )
    parser.add_argument(
        "sql",
        help="the query; tables: spans, metrics, logs. '-' reads the query from stdin",
    )


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """Adds `--data DIR`, the store root, to `parser`."""
    parser.add_argument(
        "--data",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"store root directory (default: ${DATA_ENV}, else ./{DEFAULT_DATA})",
    )


def run_sql(args: argparse.Namespace) -> int:
    """Runs `args.sql` and prints or writes the result; returns the exit status (0, 1 or 2)."""
    output: Path | None = args.output
    if args.format == PARQUET and output is None:
        return _fail("--format parquet needs --output FILE")
    query = sys.stdin.read() if args.sql == "-" else str(args.sql)
    if not query.strip():
        return _fail("no SQL given")
    root = open_data_dir(args.data, prog=_PROG)
    try:
        with Store(root) as store:
            table = store.sql(query)
    except QueryError as error:
        return _fail(str(error))
    if output is None:
        sys.stdout.write(FORMATTERS[args.format](table))
        return 0
    try:
        if args.format == PARQUET:
            write_parquet(table, output)
        else:
            _write_atomically(output, lambda path: path.write_text(FORMATTERS[args.format](table)))
    except pa.ArrowException as error:
        return _fail(f"cannot write the result as Parquet: {error}")
    except OSError as error:
        return _fail(f"cannot write {output}: {error.strerror or error}", status=EXIT_WRITE_FAILED)
    print(f"wrote {table.num_rows} row{'' if table.num_rows == 1 else 's'} to {output}", file=sys.stderr)
    return 0


def write_parquet(table: pa.Table, path: Path) -> None:
    """Writes `table` to `path` as zstd Parquet with microsecond timestamps, atomically."""

    def write(temporary: Path) -> None:
        pq.write_table(
            table,
            os.fspath(temporary),
            compression=PARQUET_COMPRESSION,
            coerce_timestamps="us",
            allow_truncated_timestamps=True,
        )

    _write_atomically(path, write)


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Calls `write` on a temporary file beside `path`, then renames it to `path`; on failure removes it."""
    # Created by `write` itself (not `mkstemp`), so the file gets the usual umask permissions.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def data_dir(flag: Path | None) -> Path:
    """The store root: the `--data` flag, else `$MALLARD_DATA`, else `./mallard-data`."""
    if flag is not None:
        return flag
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA)


def open_data_dir(flag: Path | None, *, prog: str) -> Path:
    """`data_dir(flag)`, with a one-line warning on stderr when that directory does not exist."""
    root = data_dir(flag)
    if not root.exists():
        print(f"{prog}: warning: {root} does not exist; every table is empty", file=sys.stderr)
    return root


def one_line(message: str) -> str:
    """DuckDB's message on one line: blank lines and the `^^^` marker line dropped, the rest joined."""
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and set(line) != {"^"})


def _fail(reason: str, *, status: int = EXIT_BAD_QUERY) -> int:
    print(f"{_PROG}: error: {one_line(reason)}", file=sys.stderr)
    return status
