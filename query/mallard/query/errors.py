"""The errors of `mallard.query`."""

from __future__ import annotations


class QueryError(Exception):
    """A query could not be run: bad SQL, an unknown table or column, or an unreadable file.

    The message is DuckDB's own (it may span several lines: DuckDB points at the offending token).
    """
