"""The Jaeger HTTP query API, as Grafana's Jaeger data source calls it, over a mallard store.

`create_jaeger_router(store)` answers an `APIRouter` that `create_api` mounts beside `/api/v1`.
Every answer is Jaeger's envelope `{"data", "total", "limit", "offset", "errors"}`; spans are shaped
as Jaeger's OTLP translator shapes them:

| OTLP | Jaeger |
|---|---|
| parent span id, links | `references`: `CHILD_OF` the parent, `FOLLOWS_FROM` each link |
| attributes (`attribute_types`) | `tags` typed `string`, `bool`, `int64`, `float64`, `binary` (base64) |
| kind (not `UNSPECIFIED`) | tag `span.kind` = `server`, `client`, `producer`, `consumer`, `internal` |
| status `OK` / `ERROR` | tag `otel.status_code`; `ERROR` adds `error` = true and `otel.status_description` |
| scope, trace state | tags `otel.scope.name`, `otel.scope.version`, `w3c.tracestate` |
| events | `logs`: `timestamp` (µs) and fields `event` = name plus the event's attributes |
| resource | a `processes` entry: `serviceName` and the other resource attributes as tags |

Arrays, maps and non-finite doubles become `string` tags. Times and durations are microseconds.
Malformed parameters answer 400 and an unknown trace 404,
both as `{"data": null, "errors": [{"code", "msg"}]}`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from mallard.query.engine import Store
from mallard.query.timerange import NS_PER_UNIT, InvalidArgument, from_unix_nano
from mallard.query.traces import MAX_SEARCH_LIMIT, search_traces

DEFAULT_LOOKBACK: Final = timedelta(hours=1)
DEFAULT_LIMIT: Final = 20
_TRACE_ID: Final = re.compile(r"[0-9a-fA-F]{1,32}")
_GO_DURATION: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_TAG_TYPES: Final = {"bool": "bool", "int": "int64", "double": "float64", "bytes": "binary"}
_SPAN_COLUMNS: Final = (
    "trace_id, span_id, parent_span_id, trace_state, flags, name, kind, service_name,"
    " start_time_unix_nano, duration, status_code, status_message, attributes, attribute_types,"
    " resource_attributes, resource_attribute_types, scope_name, scope_version, events, links"
)

Json = dict[str, Any]
Pairs = Sequence[tuple[str, str | None]] | None


def create_jaeger_router(store: Store) -> APIRouter:
    """`/api/services`, `/api/operations`, `/api/traces` and `/api/traces/{id}` over `store`."""
    router = APIRouter(prefix="/api", tags=["jaeger"])

    @router.get("/services", response_model=None)
    def jaeger_services() -> Json:
        """Every service name in the store."""
        rows = store.sql("SELECT DISTINCT service_name FROM spans ORDER BY service_name").to_pylist()
        return envelope([row["service_name"] for row in rows])

    @router.get("/services/{service}/operations", response_model=None)
    def jaeger_service_operations(service: str) -> Json:
        """The span names of `service`."""
        rows = store.sql(
            "SELECT DISTINCT name FROM spans WHERE service_name = ? ORDER BY name", [service]
        ).to_pylist()
        return envelope([row["name"] for row in rows])

    @router.get("/operations", response_model=None)
    def jaeger_operations(service: str, spanKind: str | None = None) -> Json:  # Jaeger's name
        """`{"name", "spanKind"}` per span name and kind of `service`, `spanKind` narrowing the kind."""
        rows = store.sql(
            "SELECT DISTINCT name, kind FROM spans WHERE service_name = ? ORDER BY name, kind", [service]
        ).to_pylist()
        operations = [{"name": row["name"], "spanKind": span_kind(row["kind"])} for row in rows]
        if spanKind:
            operations = [op for op in operations if op["spanKind"] == spanKind.lower()]
        return envelope(operations)

    @router.get("/traces/{trace_id}", response_model=None)
    def jaeger_trace(trace_id: str) -> Json | JSONResponse:
        """One trace (1 to 32 hex digits, left-padded with zeros), or 404."""
        if _TRACE_ID.fullmatch(trace_id) is None:
            return error(400, f"a trace id is 1 to 32 hexadecimal digits, got {trace_id!r}")
        found = _traces(store, [trace_id.lower().zfill(32)])
        if not found:
            return error(404, "trace not found")
        return envelope(found)

    @router.get("/traces", response_model=None)
    def jaeger_search(
        *,
        service: str | None = None,
        operation: str | None = None,
        tags: Annotated[str | None, Query(description='a JSON object: {"http.route": "/checkout"}')] = None,
        tag: Annotated[list[str] | None, Query(description="key:value, repeatable")] = None,
        minDuration: str | None = None,  # Jaeger's names
        maxDuration: str | None = None,
        limit: int | None = None,
        start: Annotated[int | None, Query(description="unix microseconds")] = None,
        end: Annotated[int | None, Query(description="unix microseconds")] = None,
        lookback: Annotated[str | None, Query(description="1h, 2d, or custom")] = None,
    ) -> Json | JSONResponse:
        """Traces with a span matching every filter in `[start, end)` (default: `lookback` before now)."""
        try:
            begin, finish = _range(start, end, lookback)
            filters = parse_tags(tags, tag or [])
            status = _status_filter(filters)
            summaries = search_traces(
                store,
                start=begin,
                end=finish,
                service=service or None,
                operation=operation or None,
                min_duration_ns=parse_go_duration("minDuration", minDuration) if minDuration else None,
                max_duration_ns=parse_go_duration("maxDuration", maxDuration) if maxDuration else None,
                status=status,
                attributes=filters,
                limit=_limit(limit),
            )
        except InvalidArgument as exc:
            return error(400, str(exc))
        return envelope(_traces(store, [summary.trace_id for summary in summaries]))

    return router


# --- the envelope -----------------------------------------------------------------------------


def envelope(data: list[Any]) -> Json:
    """Jaeger's `structuredResponse` around `data`."""
    return {"data": data, "total": len(data), "limit": 0, "offset": 0, "errors": None}


def error(code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"data": None, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": code, "msg": message}]},
        status_code=code,
    )


# --- parameters -------------------------------------------------------------------------------


def parse_go_duration(name: str, text: str) -> int:
    """A Go duration (`1.5s`, `100ms`, `1h30m`, `250us`) as nanoseconds; raises `InvalidArgument`."""
    parts = _GO_DURATION.findall(text.strip())
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        raise InvalidArgument(f"{name}: {text!r} is not a duration (100ms, 1.5s, 1h30m)")
    return round(sum(float(number) * NS_PER_UNIT[unit] for number, unit in parts))


def parse_tags(tags: str | None, pairs: Sequence[str]) -> dict[str, str]:
    """`tags` (a JSON object) and `tag=key:value` pairs as one text-valued filter map."""
    filters: dict[str, str] = {}
    if tags:
        try:
            parsed = json.loads(tags)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidArgument(f'tags: {tags!r} is not a JSON object such as {{"error": "true"}}')
        for key, value in parsed.items():
            filters[key] = json.dumps(value) if not isinstance(value, str) else value
    for pair in pairs:
        key, colon, value = pair.partition(":")
        if not colon or not key:
            raise InvalidArgument(f"tag: {pair!r} is not key:value")
        filters[key] = value
    return filters


def _status_filter(filters: dict[str, str]) -> str | None:
    """Takes the tags Jaeger derives from the status (`error`, `otel.status_code`) out of `filters`."""
    status = None
    if "otel.status_code" in filters:
        status = filters.pop("otel.status_code").lower()
    if "error" in filters:
        if filters.pop("error").lower() != "true":
            raise InvalidArgument("tags: only error=true is a filter")
        status = "error"
    return status


def _range(start: int | None, end: int | None, lookback: str | None) -> tuple[datetime, datetime]:
    finish = _from_micros("end", end) if end is not None else datetime.now(UTC)
    if start is not None:
        return _from_micros("start", start), finish
    if lookback and lookback != "custom":
        span = lookback.strip()
        days = re.fullmatch(r"([0-9]+)d", span)
        nanoseconds = int(days[1]) * 86_400 * 10**9 if days else parse_go_duration("lookback", span)
        return finish - timedelta(microseconds=nanoseconds // 1000), finish
    return finish - DEFAULT_LOOKBACK, finish


def _from_micros(name: str, micros: int) -> datetime:
    try:
        return from_unix_nano(micros * 1000)
    except (OverflowError, OSError, ValueError):
        raise InvalidArgument(f"{name}: {micros} microseconds is out of range") from None


def _limit(limit: int | None) -> int:
    if limit is None or limit == 0:
        return DEFAULT_LIMIT
    if limit < 0:
        raise InvalidArgument(f"limit: {limit} is negative")
    return min(limit, MAX_SEARCH_LIMIT)


# --- rows to Jaeger JSON ----------------------------------------------------------------------


def _traces(store: Store, trace_ids: Sequence[str]) -> list[Json]:
    """The traces of `trace_ids`, in that order, each with all its spans."""
    if not trace_ids:
        return []
    rows = store.sql(
        f"SELECT {_SPAN_COLUMNS} FROM spans WHERE list_contains(?, trace_id)"
        " ORDER BY start_time_unix_nano, span_id",
        [list(trace_ids)],
    ).to_pylist()
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_trace.setdefault(row["trace_id"], []).append(row)
    return [to_jaeger_trace(tid, by_trace[tid]) for tid in trace_ids if tid in by_trace]


def to_jaeger_trace(trace_id: str, rows: Sequence[Mapping[str, Any]]) -> Json:
    """One trace's span rows (columns `_SPAN_COLUMNS`) as a Jaeger trace with its processes."""
    processes: dict[str, Json] = {}
    process_ids: dict[str, str] = {}
    spans = []
    for row in rows:
        tags = [
            tag
            for tag in to_tags(row["resource_attributes"], row["resource_attribute_types"])
            if tag["key"] != "service.name"
        ]
        process = {"serviceName": row["service_name"], "tags": tags}
        identity = json.dumps(process, sort_keys=True)
        if identity not in process_ids:
            process_ids[identity] = f"p{len(process_ids) + 1}"
            processes[process_ids[identity]] = process
        spans.append(to_jaeger_span(row, process_ids[identity]))
    return {"traceID": trace_id, "spans": spans, "processes": processes, "warnings": None}


def to_jaeger_span(row: Mapping[str, Any], process_id: str) -> Json:
    references = []
    if row["parent_span_id"]:
        references.append(_reference("CHILD_OF", row["trace_id"], row["parent_span_id"]))
    for link in row["links"] or ():
        references.append(_reference("FOLLOWS_FROM", link["trace_id"], link["span_id"]))
    return {
        "traceID": row["trace_id"],
        "spanID": row["span_id"],
        "operationName": row["name"],
        "references": references,
        "startTime": row["start_time_unix_nano"] // 1000,
        "duration": row["duration"] // 1000,
        "tags": to_tags(row["attributes"], row["attribute_types"]) + _derived_tags(row),
        "logs": [
            {
                "timestamp": event["time_unix_nano"] // 1000,
                "fields": [
                    _tag("event", event["name"], None),
                    *to_tags(event["attributes"], event["attribute_types"]),
                ],
            }
            for event in row["events"] or ()
        ],
        "processID": process_id,
        "warnings": None,
        "flags": (row["flags"] or 0) & 0xFF,
    }


def _reference(kind: str, trace_id: str, span_id: str) -> Json:
    return {"refType": kind, "traceID": trace_id, "spanID": span_id}


def span_kind(kind: str | None) -> str:
    """The `span.kind` tag value of a stored kind; '' for `UNSPECIFIED`."""
    return "" if not kind or kind == "UNSPECIFIED" else kind.lower()


def _derived_tags(row: Mapping[str, Any]) -> list[Json]:
    """The tags Jaeger's OTLP translator adds from the scope, kind, status and trace state."""
    derived = [
        ("otel.scope.name", row["scope_name"]),
        ("otel.scope.version", row["scope_version"]),
        ("span.kind", span_kind(row["kind"])),
    ]
    status = row["status_code"]
    if status in ("OK", "ERROR"):
        derived.append(("otel.status_code", status))
    tags = [_tag(key, value, None) for key, value in derived if value]
    if status == "ERROR":
        tags.append({"key": "error", "type": "bool", "value": True})
        if row["status_message"]:
            tags.append(_tag("otel.status_description", row["status_message"], None))
    if row["trace_state"]:
        tags.append(_tag("w3c.tracestate", row["trace_state"], None))
    return tags


def to_tags(values: Pairs, types: Pairs) -> list[Json]:
    """An attribute map and its `*_types` sibling as Jaeger tags; a repeated key keeps its first value."""
    kinds = dict(types or ())
    tags: list[Json] = []
    seen: set[str] = set()
    for key, text in values or ():
        if key not in seen:
            seen.add(key)
            tags.append(_tag(key, text, kinds.get(key)))
    return tags


def _tag(key: str, text: str | None, stored_type: str | None) -> Json:
    kind = _TAG_TYPES.get(stored_type or "", "string")
    value: object = text or ""
    if kind == "bool":
        value = text == "true"
    elif kind == "int64":
        value = int(text or 0)
    elif kind == "float64":
        number = float(text or 0)
        if math.isfinite(number):
            value = number
        else:
            kind = "string"  # JSON has no NaN or infinity
    return {"key": key, "type": kind, "value": value}
