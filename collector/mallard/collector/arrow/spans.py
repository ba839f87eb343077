"""OTLP `ExportTraceServiceRequest` bytes to one `spans` RecordBatch (schema v1), purely."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Final

import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from mallard.collector.arrow.attributes import (
    SERVICE_KEY,
    AttributeColumns,
    Limits,
    render_into,
    service_name_of,
    text_of,
)
from mallard.collector.arrow.outcome import Converted, Rejections, hex_id
from mallard.collector.errors import PermanentError
from mallard.storage.schema import ATTRIBUTE_MAP_COLUMNS, EVENT, LINK, SPAN_COMPUTED, SPAN_PROMOTED, SPANS

KINDS: Final = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES: Final = ("UNSET", "OK", "ERROR")
_PROMOTED_KEYS: Final = frozenset(k for _, keys in SPAN_PROMOTED.values() for k in keys)
_PROMOTED_COLUMNS: Final = tuple(SPAN_PROMOTED)
DEFAULT_LIMITS: Final = Limits()
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
PURE_PYTHON_ENV: Final = "MALLARD_PURE_PYTHON"
"""Set (to anything but 0) to convert with `spans_to_arrow_python` even where the native one is built."""

_NativeConvert = Callable[[bytes, int, int], "tuple[pa.RecordBatch, int, str] | None"]


def _load_native() -> _NativeConvert | None:
    """The native converter (`_native_spans.c`, built by `hatch_build.py`), if built and wanted."""
    if os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        return None
    try:
        from mallard.collector.arrow import _native_spans
    except ImportError:
        return None
    return _native_spans.convert


_native_convert: Final = _load_native()


def _enum_name(names: tuple[str, ...], value: int) -> str:
    return names[value] if 0 <= value < len(names) else str(value)


def _promoted(found: dict[str, object]) -> list[object]:
    """The typed values of the promoted columns for one span (None where absent or mistyped)."""
    row: list[object] = []
    for typ, keys in SPAN_PROMOTED.values():
        value: object = None
        for key in keys:
            if key in found:
                value = found[key]
                break
        if pa.types.is_integer(typ):
            value = _as_int(value)
        elif value is not None:
            value = text_of(value)  # a non-string value reads as the attribute map shows it
        row.append(value)
    return row


def _as_int(value: object) -> int | None:
    """An int64 column value: ints, integral floats and decimal strings within int64, else None."""
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            return None
    return number if number is not None and _INT64_MIN <= number <= _INT64_MAX else None


_NESTED: Final = frozenset({*ATTRIBUTE_MAP_COLUMNS, "events", "links"})
_NOT_CONVERTED: Final = _NESTED | SPAN_COMPUTED.keys()  # built apart, or computed after conversion


class _SpanColumns:
    """Column lists for the rows of one request."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[object]] = {n: [] for n in SPANS.names if n not in _NOT_CONVERTED}
        self.attributes = AttributeColumns()
        self.resources = AttributeColumns()  # one row per resource; `resource_rows` picks per span
        self.resource_rows: list[int] = []
        self.scopes = AttributeColumns()  # one row per scope; `scope_rows` picks per span
        self.scope_rows: list[int] = []
        self.event_offsets: list[int] = [0]
        self.event_rows: dict[str, list[object]] = {
            "time": [],
            "time_unix_nano": [],
            "name": [],
            "dropped_attributes_count": [],
        }
        self.event_attributes = AttributeColumns()
        self.link_offsets: list[int] = [0]
        self.link_rows: dict[str, list[object]] = {
            "trace_id": [],
            "span_id": [],
            "trace_state": [],
            "flags": [],
            "dropped_attributes_count": [],
        }
        self.link_attributes = AttributeColumns()

    def undo_span(self) -> None:
        """Drops the events, links and attributes appended for a span that is then rejected."""
        self.attributes.truncate(len(self.resource_rows))
        events = self.event_offsets[-1]
        for values in self.event_rows.values():
            del values[events:]
        self.event_attributes.truncate(events)
        links = self.link_offsets[-1]
        for values in self.link_rows.values():
            del values[links:]
        self.link_attributes.truncate(links)

    def to_batch(self) -> pa.RecordBatch:
        arrays: dict[str, pa.Array] = {}
        for name, values in self.scalars.items():
            arrays[name] = pa.array(values, SPANS.field(name).type)
        arrays["attributes"], arrays["attribute_types"] = self.attributes.to_arrow()
        arrays["resource_attributes"], arrays["resource_attribute_types"] = self.resources.to_arrow(
            self.resource_rows
        )
        arrays["scope_attributes"], arrays["scope_attribute_types"] = self.scopes.to_arrow(self.scope_rows)
        arrays["events"] = _list_of_structs(self.event_offsets, self.event_rows, self.event_attributes, EVENT)
        arrays["links"] = _list_of_structs(self.link_offsets, self.link_rows, self.link_attributes, LINK)
        for name, typ in SPAN_COMPUTED.items():
            arrays[name] = pa.nulls(len(self.resource_rows), typ)
        return pa.RecordBatch.from_arrays([arrays[name] for name in SPANS.names], schema=SPANS)


def _list_of_structs(
    offsets: list[int], rows: dict[str, list[object]], attributes: AttributeColumns, typ: pa.StructType
) -> pa.Array:
    attrs, types = attributes.to_arrow()
    children = []
    for field in typ:
        if field.name == "attributes":
            children.append(attrs)
        elif field.name == "attribute_types":
            children.append(types)
        else:
            children.append(pa.array(rows[field.name], field.type))
    structs = pa.StructArray.from_arrays(children, fields=list(typ))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), structs)


def spans_to_arrow(
    payload: bytes, *, limits: Limits = DEFAULT_LIMITS, received_unix_nano: int = 0
) -> Converted:
    """Converts an OTLP trace export request; malformed protobuf raises PermanentError.

    Spans with malformed ids or over the limits, or whose resource or scope is over the limits, are
    rejected and counted, the rest kept. The native converter does the work where it is built (it
    returns None for the rare request it leaves to Python); `spans_to_arrow_python` is the reference
    it is tested against.
    """
    if _native_convert is not None:
        done = _native_convert(payload, limits.max_attributes, limits.max_depth)
        if done is not None:
            batch, rejected, message = done
            return Converted(table="spans", batch=batch, rejected=rejected, message=message)
    return spans_to_arrow_python(payload, limits=limits, received_unix_nano=received_unix_nano)


def spans_to_arrow_python(
    payload: bytes, *, limits: Limits = DEFAULT_LIMITS, received_unix_nano: int = 0
) -> Converted:
    """`spans_to_arrow` in pure Python: the fallback, and the oracle of the native converter."""
    del received_unix_nano  # spans carry their own times
    try:
        request = ExportTraceServiceRequest.FromString(payload)
    except DecodeError as exc:
        raise PermanentError(f"malformed protobuf ExportTraceServiceRequest: {exc}") from None
    cols = _SpanColumns()
    rejections = Rejections()
    s = cols.scalars
    trace_ids, span_ids, parents = s["trace_id"], s["span_id"], s["parent_span_id"]
    names, kinds, services = s["name"], s["kind"], s["service_name"]
    starts, ends = s["start_time"], s["end_time"]
    starts_ns, ends_ns = s["start_time_unix_nano"], s["end_time_unix_nano"]
    durations, status_codes, status_messages = s["duration"], s["status_code"], s["status_message"]
    trace_states, flags = s["trace_state"], s["flags"]
    scope_names, scope_versions = s["scope_name"], s["scope_version"]
    dropped_attrs = s["dropped_attributes_count"]
    dropped_events, dropped_links = s["dropped_events_count"], s["dropped_links_count"]
    resource_rows, scope_rows = cols.resource_rows, cols.scope_rows
    promoted_lists = [s[name] for name in _PROMOTED_COLUMNS]
    no_promoted = [None] * len(_PROMOTED_COLUMNS)
    ev = cols.event_rows
    ev_time, ev_ns, ev_name, ev_dropped = (
        ev["time"],
        ev["time_unix_nano"],
        ev["name"],
        ev["dropped_attributes_count"],
    )
    ev_attrs, event_offsets = cols.event_attributes, cols.event_offsets
    for ri, resource_spans in enumerate(request.resource_spans):
        try:
            found = render_into(resource_spans.resource.attributes, cols.resources, limits, SERVICE_KEY)
        except PermanentError as exc:
            for scope_spans in resource_spans.scope_spans:
                for _ in scope_spans.spans:
                    rejections.add(f"resource_spans[{ri}].resource", str(exc))
            continue
        resource_row = cols.resources.rows - 1
        service = service_name_of(found)
        for si, scope_spans in enumerate(resource_spans.scope_spans):
            scope = scope_spans.scope
            try:
                render_into(scope.attributes, cols.scopes, limits)
            except PermanentError as exc:
                for _ in scope_spans.spans:
                    rejections.add(f"resource_spans[{ri}].scope_spans[{si}].scope", str(exc))
                continue
            scope_row = cols.scopes.rows - 1
            scope_name, scope_version = scope.name, scope.version
            for pi, span in enumerate(scope_spans.spans):
                try:
                    trace_id = hex_id(span.trace_id, 16, optional=False)
                    span_id = hex_id(span.span_id, 8, optional=False)
                    parent = hex_id(span.parent_span_id, 8, optional=True)
                    found = render_into(span.attributes, cols.attributes, limits, _PROMOTED_KEYS)
                    for event in span.events:
                        render_into(event.attributes, ev_attrs, limits)
                        time_ns = event.time_unix_nano
                        ev_time.append(time_ns // 1000)
                        ev_ns.append(time_ns)
                        ev_name.append(event.name)
                        ev_dropped.append(event.dropped_attributes_count)
                    _append_links(cols, span.links, limits)
                    if max(span.start_time_unix_nano, span.end_time_unix_nano) > _INT64_MAX or any(
                        event.time_unix_nano > _INT64_MAX for event in span.events
                    ):
                        raise PermanentError("time past the year 2262 (beyond int64 nanoseconds)")
                except (ValueError, PermanentError) as exc:
                    cols.undo_span()
                    where = f"resource_spans[{ri}].scope_spans[{si}].spans[{pi}]"
                    rejections.add(where, str(exc) if isinstance(exc, PermanentError) else f"id {exc}")
                    continue
                event_offsets.append(len(ev_name))
                start_ns, end_ns = span.start_time_unix_nano, span.end_time_unix_nano
                trace_ids.append(trace_id)
                span_ids.append(span_id)
                parents.append(parent)
                trace_states.append(span.trace_state)
                flags.append(span.flags)
                names.append(span.name)
                kinds.append(_enum_name(KINDS, span.kind))
                services.append(service)
                starts.append(start_ns // 1000)
                ends.append(end_ns // 1000)
                starts_ns.append(start_ns)
                ends_ns.append(end_ns)
                durations.append(end_ns - start_ns)
                status = span.status
                status_codes.append(_enum_name(STATUS_CODES, status.code))
                status_messages.append(status.message)
                promoted = _promoted(found) if found else no_promoted
                for column, value in zip(promoted_lists, promoted, strict=True):
                    column.append(value)
                resource_rows.append(resource_row)
                scope_names.append(scope_name)
                scope_versions.append(scope_version)
                scope_rows.append(scope_row)
                dropped_attrs.append(span.dropped_attributes_count)
                dropped_events.append(span.dropped_events_count)
                dropped_links.append(span.dropped_links_count)
    return Converted(
        table="spans", batch=cols.to_batch(), rejected=rejections.count, message=rejections.message()
    )


def _append_links(cols: _SpanColumns, links: Sequence[Span.Link], limits: Limits) -> None:
    rows = cols.link_rows
    for link in links:
        trace_id = hex_id(link.trace_id, 16, optional=False)
        span_id = hex_id(link.span_id, 8, optional=False)
        render_into(link.attributes, cols.link_attributes, limits)
        rows["trace_id"].append(trace_id)
        rows["span_id"].append(span_id)
        rows["trace_state"].append(link.trace_state)
        rows["flags"].append(link.flags)
        rows["dropped_attributes_count"].append(link.dropped_attributes_count)
    cols.link_offsets.append(len(rows["span_id"]))
