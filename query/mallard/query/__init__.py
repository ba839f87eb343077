"""SQL over a mallard store: `Store` (DuckDB views `spans`, `metrics`, `logs`), result formatting and
the `mallard sql` command."""

from __future__ import annotations

from mallard.query.cli import add_sql_arguments, run_sql
from mallard.query.engine import Store
from mallard.query.errors import QueryError
from mallard.query.output import (
    JsonValue,
    format_csv,
    format_json,
    format_table,
    to_json_rows,
)

__all__ = [
    "JsonValue",
    "QueryError",
    "Store",
    "add_sql_arguments",
    "format_csv",
    "format_json",
    "format_table",
    "run_sql",
    "to_json_rows",
]
