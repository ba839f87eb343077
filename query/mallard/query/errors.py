"""The errors of `mallard.query`."""

from __future__ import annotations


class QueryError(Exception):
    """A query could not be run: bad SQL, an unknown table or column, or an unreadable file.

    The message is DuckDB's own (it may span several lines: DuckDB points at the offending token).
    """


class SqlRefused(QueryError):
    """A statement that read-only SQL does not run: not a single `SELECT`, or one that reaches outside
    the store (another file, an extension, a setting). The message says which."""


class SqlTimeout(QueryError):
    """A read-only SQL query ran past its time limit and was interrupted."""
