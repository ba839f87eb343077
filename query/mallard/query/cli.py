"""The `mallard sql` command: run one query against a store and print the result.

`mallard.app.cli` owns the top-level parser; it calls `add_sql_arguments` on its `sql` sub-parser and
`run_sql` with the parsed arguments.

| setting | flag | env var | default |
|---|---|---|---|
| store root | `--data DIR` | `MALLARD_DATA` | `./mallard-data` |
| output format | `--format {table,csv,json}` | | `table` |

Failure behaviour: a query DuckDB rejects prints `mallard sql: error: <reason>` (one line) on stderr
and returns exit status 2. A store directory that does not exist is not an error (every table is
empty), but a one-line warning goes to stderr, since it is usually a mistyped `--data`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pyarrow as pa

from mallard.query.engine import Store
from mallard.query.errors import QueryError
from mallard.query.output import format_csv, format_json, format_table

DATA_ENV: Final = "MALLARD_DATA"
DEFAULT_DATA: Final = "mallard-data"
EXIT_BAD_QUERY: Final = 2
FORMATTERS: Final[dict[str, Callable[[pa.Table], str]]] = {
    "table": format_table,
    "csv": format_csv,
    "json": format_json,
}
_PROG: Final = "mallard sql"


def add_sql_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of `mallard sql` to `parser`."""
    parser.add_argument(
        "--data",
        metavar="DIR",
        type=Path,
        default=None,
        help=f"store root directory (default: ${DATA_ENV}, else ./{DEFAULT_DATA})",
    )
    parser.add_argument(
        "--format",
        choices=list(FORMATTERS),
        default="table",
        help="output format (default: table)",
    )
    parser.add_argument(
        "sql",
        help="the query; tables: spans, metrics, logs. '-' reads the query from stdin",
    )


def run_sql(args: argparse.Namespace) -> int:
    """Runs `args.sql` and prints the result on stdout; returns the exit status (0, or 2 for a bad query)."""
    query = sys.stdin.read() if args.sql == "-" else str(args.sql)
    if not query.strip():
        return _fail("no SQL given")
    root = data_dir(args.data)
    if not root.exists():
        print(
            f"{_PROG}: warning: {root} does not exist; every table is empty",
            file=sys.stderr,
        )
    try:
        with Store(root) as store:
            table = store.sql(query)
    except QueryError as error:
        return _fail(str(error))
    sys.stdout.write(FORMATTERS[args.format](table))
    return 0


def data_dir(flag: Path | None) -> Path:
    """The store root: the `--data` flag, else `$MALLARD_DATA`, else `./mallard-data`."""
    if flag is not None:
        return flag
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA)


def _fail(reason: str) -> int:
    print(f"{_PROG}: error: {_one_line(reason)}", file=sys.stderr)
    return EXIT_BAD_QUERY


def _one_line(message: str) -> str:
    """DuckDB's message on one line: blank lines and the `^^^` marker line dropped, the rest joined."""
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and set(line) != {"^"})
