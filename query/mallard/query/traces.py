"""Typed trace queries over a `Store`: one trace, trace search, per-service RED figures, service map.

These are the functions the HTTP API and the UI share; they answer frozen dataclasses, not Arrow.
Caller values only ever reach DuckDB as `?` parameters. Time ranges are half-open, `[start, end)`,
on span `start_time`, and prune the hive partitions (`timerange.partition_predicate`).

Definitions:

- **root** of a trace: its span with `parent_span_id = ''` (the earliest if there are several); when
  the trace has none (the root was not received), its earliest span. Ties break on `span_id`.
- **entry span** (what `services` counts as a request): a span of kind `SERVER` or `CONSUMER`, or a
  root span (`parent_span_id = ''`) of any kind, such as a batch job's `INTERNAL` root.
- **edge** (`service_map`): a span whose parent span (same trace) belongs to another service; the
  parent's service calls the span's service. Both spans must start within the range.
- **error**: `status_code = 'ERROR'`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import pyarrow as pa

from mallard.query.engine import Store, hours_predicate
from mallard.query.errors import QueryError
from mallard.query.timerange import (
    InvalidArgument,
    TimeRange,
    from_unix_nano,
    partition_predicate,
    time_range,
)
from mallard.storage.attribute_index import indexable
from mallard.storage.layout import Partition, partition_dirs
from mallard.storage.schema import SPAN_PROMOTED
from mallard.storage.traces import trace_merge_sql

TRACE_ID: Final = re.compile(r"[0-9a-fA-F]{32}")
STATUSES: Final = ("ok", "error", "unset")
MAX_SEARCH_LIMIT: Final = 10_000
# Attribute keys whose promoted column always holds exactly the text `attributes[key]` shows: text
# columns filled from that one key. (Columns filled from several keys, or converted to numbers, do
# not: the filter reads the map for them.)
PROMOTED_TEXT_COLUMNS: Final = {
    keys[0]: column
    for column, (data_type, keys) in SPAN_PROMOTED.items()
    if len(keys) == 1 and pa.types.is_string(data_type)
}

Attributes = dict[str, str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanEvent:
    time: datetime
    time_unix_nano: int
    name: str
    attributes: Attributes


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanLink:
    trace_id: str
    span_id: str
    trace_state: str
    attributes: Attributes


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str  # '' for a root span
    name: str
    kind: str  # SERVER, CLIENT, …
    service_name: str
    start_time: datetime
    end_time: datetime
    start_time_unix_nano: int
    end_time_unix_nano: int
    duration_ns: int
    status_code: str  # UNSET, OK or ERROR
    status_message: str
    attributes: Attributes
    resource_attributes: Attributes
    scope_name: str
    events: tuple[SpanEvent, ...]
    links: tuple[SpanLink, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    trace_id: str
    spans: tuple[Span, ...]  # ordered by start time, then span id
    root: Span  # see the module docstring
    start_time: datetime
    duration_ns: int  # latest end minus earliest start
    error_count: int
    services: tuple[str, ...]  # sorted


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSummary:
    trace_id: str
    root_service: str
    root_operation: str
    start_time: datetime
    start_time_unix_nano: int
    duration_ns: int
    span_count: int
    error_count: int
    services: tuple[str, ...]  # sorted


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStats:
    service_name: str
    request_count: int  # entry spans in the range
    request_rate: float  # per second of the range
    error_count: int
    error_rate: float  # error_count / request_count; 0.0 without requests
    p50_ns: float | None  # duration percentiles of the entry spans; None without requests
    p95_ns: float | None
    p99_ns: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Edge:
    caller: str
    callee: str
    call_count: int
    error_count: int  # callee spans with status ERROR
    p50_ns: float  # duration percentiles of the callee spans
    p95_ns: float


def get_trace(
    store: Store, trace_id: str, *, start: datetime | None = None, end: datetime | None = None
) -> Trace | None:
    """All spans of `trace_id` (32 hex digits, any case), or None when the store has none.

    `start`/`end`, when both given, limit the read to the spans starting in that range (the UI knows
    the range a trace was found in). Otherwise only the hours that hold the trace are read: those the
    compacted `traces` rows name (`trace_index`), and the hours not compacted yet.
    """
    trace_id = _trace_id(trace_id)
    columns = (
        "trace_id, span_id, parent_span_id, name, kind, service_name, start_time_unix_nano,"
        " end_time_unix_nano, duration, status_code, status_message, attributes, resource_attributes,"
        " scope_name, events, links"
    )
    order = "ORDER BY start_time_unix_nano, span_id"
    if start is not None or end is not None:
        if start is None or end is None:
            raise InvalidArgument("give both start and end, or neither")
        params: list[object] = [trace_id]
        where = "trace_id = ? AND " + _range_predicate(time_range(start, end), params)
        rows = _sql(store, f"SELECT {columns} FROM spans WHERE {where} {order}", params).to_pylist()
    else:
        hours = _trace_hours(store, [trace_id])
        if not hours:
            return None
        try:  # only those hours' files: less to plan (see `Store.hours_source`)
            source = store.hours_source("spans", hours)
            rows = _sql(store, f"SELECT {columns} FROM {source} WHERE trace_id = ? {order}", [trace_id])
        except QueryError:  # an hour was dropped meanwhile: the view has what is left
            where = f"trace_id = ? AND ({hours_predicate(hours)})"
            rows = _sql(store, f"SELECT {columns} FROM spans WHERE {where} {order}", [trace_id])
        rows = rows.to_pylist()
    if not rows:
        return None
    spans = tuple(_span(row) for row in rows)
    roots = [span for span in spans if span.parent_span_id == ""]
    first = min(span.start_time_unix_nano for span in spans)
    last = max(span.end_time_unix_nano for span in spans)
    return Trace(
        trace_id=trace_id,
        spans=spans,
        root=roots[0] if roots else spans[0],
        start_time=from_unix_nano(first),
        duration_ns=last - first,
        error_count=sum(span.status_code == "ERROR" for span in spans),
        services=tuple(sorted({span.service_name for span in spans})),
    )


def search_traces(
    store: Store,
    *,
    start: datetime,
    end: datetime,
    service: str | None = None,
    operation: str | None = None,
    min_duration_ns: int | None = None,
    max_duration_ns: int | None = None,
    status: str | None = None,
    attributes: Mapping[str, str] | None = None,
    limit: int = 20,
) -> list[TraceSummary]:
    """The `limit` traces with the newest spans in `[start, end)` that match every given filter,
    newest first.

    The filters apply to one span together (`service` and `operation` on the same span); durations are
    inclusive bounds in nanoseconds; `status` is `ok`, `error` or `unset`; `attributes` match span
    attributes by their stored text (`{"http.status_code": "500"}`). Traces are chosen by their
    earliest matching span, newest first, reading the range from its end backwards in windows of 1,
    2, 4, … hours and stopping once `limit` traces are found; each summary covers all spans of the
    trace (from the `traces` view), in the range or not, and the list is ordered by trace start.
    """
    time = time_range(start, end)
    terms, term_params = _span_terms(
        service=service,
        operation=operation,
        min_duration_ns=min_duration_ns,
        max_duration_ns=max_duration_ns,
        status=status,
        attributes=attributes,
    )
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit!r}")
    plan = _index_plan(store, time, attributes or {})
    found: dict[str, int] = {}  # trace id -> its earliest matching span in the windows read
    for window in _windows_newest_first(time):
        params: list[object] = []
        where = [_range_predicate(window, params), *terms]
        if plan is not None:
            narrowed = plan.predicate(window)
            if narrowed is None:  # no hour of the window can hold a match
                continue
            where.append(narrowed)
        span_filter = " AND ".join(where)
        rows = _sql(
            store,
            f"SELECT trace_id, min(start_time_unix_nano) AS first FROM spans WHERE {span_filter}"
            " GROUP BY trace_id ORDER BY first DESC, trace_id LIMIT ?",
            [*params, *term_params, limit],
        ).to_pydict()
        for trace_id, first in zip(rows["trace_id"], rows["first"], strict=True):
            found.setdefault(trace_id, first)
        # Every trace not found yet matches only before this window: later windows cannot beat these.
        if len(found) >= limit:
            break
    chosen = sorted(found, key=lambda trace_id: (-found[trace_id], trace_id))[:limit]
    if not chosen:
        return []
    # The hours that hold the chosen traces; none when their `traces` rows went meanwhile (retention
    # drops a spans hour and its `traces` hour one after the other): then no hour term at all.
    hours = hours_predicate(_trace_hours(store, chosen))
    in_hours = f"({hours}) AND " if hours else ""
    merged = trace_merge_sql(in_hours + "trace_id IN (" + ", ".join("?" for _ in chosen) + ")")
    rows = _sql(
        store,
        "SELECT trace_id, root_service, root_operation, start_time_unix_nano, duration, span_count,"
        f" error_count, services FROM ({merged}) ORDER BY start_time_unix_nano DESC, trace_id",
        chosen,
    ).to_pylist()
    return [
        TraceSummary(
            trace_id=row["trace_id"],
            root_service=row["root_service"],
            root_operation=row["root_operation"],
            start_time=from_unix_nano(row["start_time_unix_nano"]),
            start_time_unix_nano=row["start_time_unix_nano"],
            duration_ns=row["duration"],
            span_count=row["span_count"],
            error_count=row["error_count"],
            services=tuple(row["services"]),
        )
        for row in rows
    ]


def _trace_hours(store: Store, trace_ids: Sequence[str]) -> list[tuple[str, int]]:
    """The (UTC date, hour) partitions that may hold spans of `trace_ids`: those where the compacted
    `traces` rows (`trace_index`) list them, and every hour not compacted yet."""
    rows = _sql(
        store,
        "SELECT DISTINCT CAST(date AS VARCHAR) AS date, hour FROM trace_index WHERE trace_id IN ("
        + ", ".join("?" for _ in trace_ids)
        + ")",
        trace_ids,
    ).to_pydict()
    return sorted({*zip(rows["date"], rows["hour"], strict=True), *store.open_hours()})


@dataclass(frozen=True, slots=True)
class _IndexPlan:
    """What the `attribute_index` says about the hours of a search: for each indexed hour, the traces
    that may match (`None`: read the hour in full); hours it leaves out cannot match. Hours without
    an index (not compacted yet, or with late data) are read in full."""

    indexed: frozenset[tuple[str, int]]
    candidates: Mapping[tuple[str, int], frozenset[str] | None]

    def predicate(self, window: TimeRange) -> str | None:
        """A `WHERE` term limiting a search in `window` to what may match; None when nothing can.
        Trace ids come from the index and are checked to be hex (`_INDEX_TRACE_ID`) before they are
        written into the SQL text, where DuckDB prunes row groups by them."""
        hours = _hours_of(window)
        read = [hour for hour in hours if hour not in self.indexed or self.candidates.get(hour, ()) is None]
        narrowed = [hour for hour in hours if hour in self.indexed and self.candidates.get(hour)]
        if not read and not narrowed:
            return None
        terms = []
        if read:
            terms.append(hours_predicate(read))
        if narrowed:
            ids = sorted({trace for hour in narrowed for trace in self.candidates[hour] or ()})
            listed = ", ".join(f"'{trace}'" for trace in ids)
            terms.append(f"(({hours_predicate(narrowed)}) AND trace_id IN ({listed}))")
        # The hours alone first: DuckDB prunes partitions on a term over the hive columns only.
        return f"({hours_predicate([*read, *narrowed])}) AND ({' OR '.join(terms)})"


_INDEX_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")


def _index_plan(store: Store, time: TimeRange, attributes: Mapping[str, str]) -> _IndexPlan | None:
    """The `attribute_index` lookup for the attribute filters it can answer; None when there are none
    (or the index names a trace id that is not 32 hex digits, which collector-written spans never
    have): the search then reads every hour."""
    filters = [
        (key, value)
        for key, value in attributes.items()
        if key not in PROMOTED_TEXT_COLUMNS and isinstance(value, str) and indexable(key, value)
    ]
    if not filters:
        return None
    in_range = set(_hours_of(time))
    indexed = {
        (partition.date, partition.hour)
        for partition, directory in partition_dirs(store.root, "attribute_index")
        if (partition.date, partition.hour) in in_range
        and next(directory.glob("*.parquet"), None) is not None
    }
    params: list[object] = []
    matches = []
    for key, value in filters:
        matches.append("(key = ? AND (value = ? OR value IS NULL))")
        params.extend((key, value))
    rows = _sql(
        store,
        f"SELECT CAST(date AS VARCHAR) AS date, hour, key, value, trace_id FROM attribute_index"
        f" WHERE {partition_predicate(time)} AND ({' OR '.join(matches)})",
        params,
    ).to_pylist()
    indexed -= set(store.open_hours())  # late data is not indexed yet
    # Per hour and filter: the traces listed for it, or None (read the hour); no entry: no match.
    per_filter: dict[tuple[str, int], dict[str, set[str] | None]] = {hour: {} for hour in indexed}
    for row in rows:
        hour = (row["date"], row["hour"])
        if hour not in per_filter:
            continue
        listed, key, trace_id = per_filter[hour], row["key"], row["trace_id"]
        if trace_id is None:
            listed[key] = None
        elif _INDEX_TRACE_ID.fullmatch(trace_id) is None:
            return None
        elif (traces := listed.setdefault(key, set())) is not None:
            traces.add(trace_id)
    candidates: dict[tuple[str, int], frozenset[str] | None] = {}
    keys = {key for key, _ in filters}
    for hour, listed in per_filter.items():
        if set(listed) != keys:  # some filter's value does not occur in the hour
            continue
        sets = [traces for traces in listed.values() if traces is not None]
        if not sets:
            candidates[hour] = None
        elif common := frozenset.intersection(*map(frozenset, sets)):
            candidates[hour] = common
    return _IndexPlan(indexed=frozenset(indexed), candidates=candidates)


def _hour_number(moment: datetime) -> int:
    return int(moment.timestamp() // 3600)


def _hours_of(time: TimeRange) -> list[tuple[str, int]]:
    """The (UTC date, hour) partitions that `time` touches."""
    first, last = _hour_number(time.start), _hour_number(time.end - timedelta(microseconds=1))
    return [
        (partition.date, partition.hour)
        for partition in (Partition.for_hour("spans", hour) for hour in range(first, last + 1))
    ]


def _windows_newest_first(time: TimeRange) -> Iterator[TimeRange]:
    """`time` cut at whole UTC hours into windows of 1, 2, 4, … hours, from its end backwards."""
    end = time.end
    hours = 1
    while end > time.start:
        aligned = end.replace(minute=0, second=0, microsecond=0)
        if aligned == end:
            aligned -= timedelta(hours=1)
        window_start = max(time.start, aligned - timedelta(hours=hours - 1))
        yield TimeRange(start=window_start, end=end)
        end = window_start
        hours *= 2


def services(store: Store, *, start: datetime, end: datetime) -> list[ServiceStats]:
    """Every service with a span in `[start, end)`, by name, with RED figures over its entry spans."""
    time = time_range(start, end)
    params: list[object] = []
    where = _range_predicate(time, params)
    query = f"""
        WITH entry AS (
            SELECT service_name, duration, status_code,
                kind IN ('SERVER', 'CONSUMER') OR parent_span_id = '' AS is_entry
            FROM spans WHERE {where}
        )
        SELECT service_name,
            count(*) FILTER (WHERE is_entry) AS requests,
            count(*) FILTER (WHERE is_entry AND status_code = 'ERROR') AS errors,
            quantile_cont(duration::DOUBLE, [0.5, 0.95, 0.99]) FILTER (WHERE is_entry) AS percentiles
        FROM entry GROUP BY service_name ORDER BY service_name
    """
    stats = []
    for row in _sql(store, query, params).to_pylist():
        requests, errors = row["requests"], row["errors"]
        p50, p95, p99 = row["percentiles"] or (None, None, None)
        stats.append(
            ServiceStats(
                service_name=row["service_name"],
                request_count=requests,
                request_rate=requests / time.seconds,
                error_count=errors,
                error_rate=errors / requests if requests else 0.0,
                p50_ns=p50,
                p95_ns=p95,
                p99_ns=p99,
            )
        )
    return stats


def service_map(store: Store, *, start: datetime, end: datetime) -> list[Edge]:
    """Caller → callee edges from spans in `[start, end)` whose parent is in another service."""
    params: list[object] = []
    where = _range_predicate(time_range(start, end), params)
    query = f"""
        WITH s AS (
            SELECT trace_id, span_id, parent_span_id, service_name, duration, status_code
            FROM spans WHERE {where}
        )
        SELECT parent.service_name AS caller, child.service_name AS callee,
            count(*) AS calls,
            count(*) FILTER (WHERE child.status_code = 'ERROR') AS errors,
            quantile_cont(child.duration::DOUBLE, [0.5, 0.95]) AS percentiles
        FROM s AS child JOIN s AS parent
            ON child.trace_id = parent.trace_id AND child.parent_span_id = parent.span_id
        WHERE child.parent_span_id <> '' AND child.service_name <> parent.service_name
        GROUP BY ALL ORDER BY caller, callee
    """
    return [
        Edge(
            caller=row["caller"],
            callee=row["callee"],
            call_count=row["calls"],
            error_count=row["errors"],
            p50_ns=row["percentiles"][0],
            p95_ns=row["percentiles"][1],
        )
        for row in _sql(store, query, params, order_joins=True).to_pylist()
    ]


def _trace_id(trace_id: str) -> str:
    if not isinstance(trace_id, str) or TRACE_ID.fullmatch(trace_id) is None:
        raise InvalidArgument(f"a trace id is 32 hexadecimal digits, got {trace_id!r}")
    return trace_id.lower()


def _range_predicate(time: TimeRange, params: list[object]) -> str:
    """Partition pruning plus the exact bounds; appends the two bound parameters to `params`."""
    params.extend((time.start_unix_nano, time.end_unix_nano))
    return f"({partition_predicate(time)} AND start_time_unix_nano >= ? AND start_time_unix_nano < ?)"


def _span_terms(
    *,
    service: str | None,
    operation: str | None,
    min_duration_ns: int | None,
    max_duration_ns: int | None,
    status: str | None,
    attributes: Mapping[str, str] | None,
) -> tuple[list[str], list[object]]:
    """The `WHERE` terms (to join with `AND`) of a span matching every given filter, and their params."""
    params: list[object] = []
    terms: list[str] = []
    for column, value in (("service_name", service), ("name", operation)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    for bound, operator in ((min_duration_ns, ">="), (max_duration_ns, "<=")):
        if bound is not None:
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
                raise InvalidArgument(f"a duration bound is a whole number of nanoseconds, got {bound!r}")
            terms.append(f"duration {operator} ?")
            params.append(bound)
    if min_duration_ns is not None and max_duration_ns is not None and min_duration_ns > max_duration_ns:
        raise InvalidArgument(f"min_duration_ns {min_duration_ns} is above max_duration_ns {max_duration_ns}")
    if status is not None:
        if status.lower() not in STATUSES:
            raise InvalidArgument(f"status is one of {', '.join(STATUSES)}, got {status!r}")
        terms.append("status_code = ?")
        params.append(status.upper())
    for key, value in (attributes or {}).items():
        promoted = PROMOTED_TEXT_COLUMNS.get(key)
        if promoted is not None:  # the same answer from one dictionary-encoded column: ~20x faster
            terms.append(f"{promoted} = ?")
            params.append(value)
        else:
            terms.append("map_extract_value(attributes, ?) = ?")
            params.extend((key, value))
    return terms, params


def _span(row: dict[str, Any]) -> Span:
    return Span(
        trace_id=row["trace_id"],
        span_id=row["span_id"],
        parent_span_id=row["parent_span_id"],
        name=row["name"],
        kind=row["kind"],
        service_name=row["service_name"],
        start_time=from_unix_nano(row["start_time_unix_nano"]),
        end_time=from_unix_nano(row["end_time_unix_nano"]),
        start_time_unix_nano=row["start_time_unix_nano"],
        end_time_unix_nano=row["end_time_unix_nano"],
        duration_ns=row["duration"],
        status_code=row["status_code"],
        status_message=row["status_message"],
        attributes=_attributes(row["attributes"]),
        resource_attributes=_attributes(row["resource_attributes"]),
        scope_name=row["scope_name"],
        events=tuple(
            SpanEvent(
                time=from_unix_nano(event["time_unix_nano"]),
                time_unix_nano=event["time_unix_nano"],
                name=event["name"],
                attributes=_attributes(event["attributes"]),
            )
            for event in row["events"] or ()
        ),
        links=tuple(
            SpanLink(
                trace_id=link["trace_id"],
                span_id=link["span_id"],
                trace_state=link["trace_state"],
                attributes=_attributes(link["attributes"]),
            )
            for link in row["links"] or ()
        ),
    )


def _attributes(pairs: Sequence[tuple[str, str | None]] | None) -> Attributes:
    """An attribute map as a dict; a key sent twice keeps its first value, as `attributes['k']` does."""
    result: Attributes = {}
    for key, value in pairs or ():
        result.setdefault(key, value)
    return result


def _sql(store: Store, query: str, params: Sequence[object], *, order_joins: bool = False) -> pa.Table:
    """Runs `query` with `?` parameters through the store (skipping the join-order optimizer unless
    the query joins: see `Store.sql`)."""
    return store.sql(query, params, order_joins=order_joins)
