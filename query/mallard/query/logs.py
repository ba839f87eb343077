"""Typed log search over a `Store`: `search_logs`, newest first.

Time ranges are half-open, `[start, end)`, on the log `time` column (the event time, or the observed
or receive time when the record had none, see `docs/storage.md`), and prune the hive partitions.
Caller values only ever reach DuckDB as `?` parameters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from mallard.query.engine import Store
from mallard.query.timerange import InvalidArgument, partition_predicate, time_range

TRACE_ID: Final = re.compile(r"[0-9a-fA-F]{32}")
MAX_SEARCH_LIMIT: Final = 10_000
MAX_SEVERITY: Final = 24

Attributes = dict[str, str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    time: datetime  # UTC, microseconds
    observed_time: datetime
    severity_number: (
        int  # 0 unspecified, 1-4 TRACE, 5-8 DEBUG, 9-12 INFO, 13-16 WARN, 17-20 ERROR, 21-24 FATAL
    )
    severity_text: str
    body: str | None  # as text (see `body_type`); None when the record had no body
    body_type: str
    event_name: str
    service_name: str
    trace_id: str  # '' without trace context
    span_id: str
    attributes: Attributes
    resource_attributes: Attributes
    scope_name: str


def search_logs(
    store: Store,
    *,
    start: datetime,
    end: datetime,
    text: str | None = None,
    severity_min: int | None = None,
    service: str | None = None,
    trace_id: str | None = None,
    limit: int = 100,
) -> list[LogEntry]:
    """Log records in `[start, end)` matching every given filter, newest first.

    `text` is a case-insensitive substring of the body (as stored text); `severity_min` an inclusive
    lower bound on `severity_number` (0-24; 17 keeps ERROR and FATAL); `service` the exact
    `service_name`; `trace_id` 32 hex digits, any case. Ties in time break on span id, then body.
    """
    time = time_range(start, end)
    terms = [partition_predicate(time), "time >= ?", "time < ?"]
    params: list[object] = [time.start, time.end]
    if text is not None:
        if not isinstance(text, str) or text == "":
            raise InvalidArgument(f"text is a non-empty string, got {text!r}")
        terms.append("strpos(lower(body), lower(?)) > 0")
        params.append(text)
    if severity_min is not None:
        if isinstance(severity_min, bool) or not isinstance(severity_min, int):
            raise InvalidArgument(f"severity_min is a whole number, got {severity_min!r}")
        if not 0 <= severity_min <= MAX_SEVERITY:
            raise InvalidArgument(f"severity_min is between 0 and {MAX_SEVERITY}, got {severity_min}")
        terms.append("severity_number >= ?")
        params.append(severity_min)
    if service is not None:
        terms.append("service_name = ?")
        params.append(service)
    if trace_id is not None:
        if not isinstance(trace_id, str) or TRACE_ID.fullmatch(trace_id) is None:
            raise InvalidArgument(f"a trace id is 32 hexadecimal digits, got {trace_id!r}")
        terms.append("trace_id = ?")
        params.append(trace_id.lower())
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit!r}")
    params.append(limit)
    query = f"""
        SELECT time, observed_time, severity_number, severity_text, body, body_type, event_name,
            service_name, trace_id, span_id, attributes, resource_attributes, scope_name
        FROM logs WHERE {" AND ".join(terms)}
        ORDER BY time DESC, time_unix_nano DESC, span_id, body LIMIT ?
    """
    return [_entry(row) for row in store.sql(query, params, order_joins=False).to_pylist()]


def _entry(row: dict[str, Any]) -> LogEntry:
    return LogEntry(
        time=row["time"],
        observed_time=row["observed_time"],
        severity_number=row["severity_number"],
        severity_text=row["severity_text"],
        body=row["body"],
        body_type=row["body_type"],
        event_name=row["event_name"],
        service_name=row["service_name"],
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        attributes=_attributes(row["attributes"]),
        resource_attributes=_attributes(row["resource_attributes"]),
        scope_name=row["scope_name"],
    )


def _attributes(pairs: Sequence[tuple[str, str | None]] | None) -> Attributes:
    """An attribute map as a dict; a key sent twice keeps its first value, as `attributes['k']` does."""
    result: Attributes = {}
    for key, value in pairs or ():
        result.setdefault(key, value)
    return result
