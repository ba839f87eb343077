"""OTLP `ExportLogsServiceRequest` bytes to one `logs` RecordBatch (schema v1), purely.

`time_unix_nano` and `observed_time_unix_nano` are kept exactly as sent. The `time` column falls
back to the observed time and then to the receive time, `observed_time` to the receive time, so
every row lands in a partition. Bodies follow the attribute convention: strings as they are,
other values as JSON text (bytes as base64), named by `body_type`; no body is NULL, `empty`.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Final

import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
)

from mallard.collector.arrow.attributes import (
    SERVICE_KEY,
    AttributeColumns,
    Limits,
    render_into,
    render_other,
    service_name_of,
)
from mallard.collector.arrow.outcome import Converted, Rejections, optional_id
from mallard.collector.errors import PermanentError
from mallard.storage.schema import ATTRIBUTE_MAP_COLUMNS, LOGS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

_DEFAULT_LIMITS: Final = Limits()


class _LogColumns:
    """Column lists for the rows of one request."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[object]] = {n: [] for n in LOGS.names if n not in ATTRIBUTE_MAP_COLUMNS}
        self.attributes = AttributeColumns()
        self.resources = AttributeColumns()  # one row per resource; `resource_rows` picks
        self.resource_rows: list[int] = []
        self.scopes = AttributeColumns()  # one row per scope; `scope_rows` picks
        self.scope_rows: list[int] = []

    def close_scope(self, rows: int, context: tuple[int, int, str, str, str]) -> None:
        """Fills the resource and scope columns of the `rows` records just appended."""
        resource_row, scope_row, service, scope_name, scope_version = context
        s = self.scalars
        s["service_name"].extend(repeat(service, rows))
        s["scope_name"].extend(repeat(scope_name, rows))
        s["scope_version"].extend(repeat(scope_version, rows))
        self.resource_rows.extend(repeat(resource_row, rows))
        self.scope_rows.extend(repeat(scope_row, rows))

    def to_batch(self) -> pa.RecordBatch:
        arrays: dict[str, pa.Array] = {}
        for name, values in self.scalars.items():
            try:
                arrays[name] = pa.array(values, LOGS.field(name).type)
            except (OverflowError, pa.ArrowInvalid) as exc:
                raise PermanentError(f"{name} out of range: {exc}") from None
        arrays["attributes"], arrays["attribute_types"] = self.attributes.to_arrow()
        resources = self.resources.to_arrow(self.resource_rows)
        arrays["resource_attributes"], arrays["resource_attribute_types"] = resources
        scopes = self.scopes.to_arrow(self.scope_rows)
        arrays["scope_attributes"], arrays["scope_attribute_types"] = scopes
        return pa.RecordBatch.from_arrays([arrays[name] for name in LOGS.names], schema=LOGS)


def logs_to_arrow(
    payload: bytes, *, limits: Limits = _DEFAULT_LIMITS, received_unix_nano: int = 0
) -> Converted:
    """Converts an OTLP logs export request; malformed protobuf raises PermanentError.

    `received_unix_nano` stands in for missing times. Records with malformed ids or over the
    limits, or whose resource or scope is over the limits, are rejected and counted, the rest
    kept. A time beyond int64 fails the whole request with PermanentError.
    """
    try:
        request = ExportLogsServiceRequest.FromString(payload)
    except DecodeError as exc:
        raise PermanentError(f"malformed protobuf ExportLogsServiceRequest: {exc}") from None
    cols = _LogColumns()
    rejections = Rejections()
    for ri, resource_logs in enumerate(request.resource_logs):
        try:
            found = render_into(resource_logs.resource.attributes, cols.resources, limits, SERVICE_KEY)
        except PermanentError as exc:
            for scope_logs in resource_logs.scope_logs:
                for _ in scope_logs.log_records:
                    rejections.add(f"resource_logs[{ri}].resource", str(exc))
            continue
        resource_row = cols.resources.rows - 1
        service = service_name_of(found)
        for si, scope_logs in enumerate(resource_logs.scope_logs):
            records, scope = scope_logs.log_records, scope_logs.scope
            try:
                render_into(scope.attributes, cols.scopes, limits)
            except PermanentError as exc:
                for _ in records:
                    rejections.add(f"resource_logs[{ri}].scope_logs[{si}].scope", str(exc))
                continue
            rejected = _append_records(cols, records, limits, received_unix_nano)
            for index, reason in rejected:
                where = f"resource_logs[{ri}].scope_logs[{si}].log_records[{index}]"
                rejections.add(where, reason)
            context = (resource_row, cols.scopes.rows - 1, service, scope.name, scope.version)
            cols.close_scope(len(records) - len(rejected), context)
    return Converted(
        table="logs", batch=cols.to_batch(), rejected=rejections.count, message=rejections.message()
    )


def _append_records(
    cols: _LogColumns,
    records: Sequence[LogRecord],
    limits: Limits,
    received_unix_nano: int,
) -> list[tuple[int, str]]:
    """Appends the per-record columns of one scope's records; returns the rejected ones, why."""
    s = cols.scalars
    times, observed_times = s["time"], s["observed_time"]
    times_ns, observed_ns = s["time_unix_nano"], s["observed_time_unix_nano"]
    severity_numbers, severity_texts = s["severity_number"], s["severity_text"]
    bodies, body_types, event_names = s["body"], s["body_type"], s["event_name"]
    trace_ids, span_ids, flags = s["trace_id"], s["span_id"], s["flags"]
    dropped = s["dropped_attributes_count"]
    attributes = cols.attributes
    max_depth = limits.max_depth
    rejected: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        try:
            trace_id = optional_id(record.trace_id, 16, "trace_id")
            span_id = optional_id(record.span_id, 8, "span_id")
            body, body_type = _body(record, max_depth)
            render_into(record.attributes, attributes, limits)
        except PermanentError as exc:
            rejected.append((index, str(exc)))
            continue
        time_ns, observed = record.time_unix_nano, record.observed_time_unix_nano
        stamped = observed or received_unix_nano
        times.append((time_ns or stamped) // 1000)
        observed_times.append(stamped // 1000)
        times_ns.append(time_ns)
        observed_ns.append(observed)
        severity_numbers.append(record.severity_number)
        severity_texts.append(record.severity_text)
        bodies.append(body)
        body_types.append(body_type)
        event_names.append(record.event_name)
        trace_ids.append(trace_id)
        span_ids.append(span_id)
        flags.append(record.flags)
        dropped.append(record.dropped_attributes_count)
    return rejected


def _body(record: LogRecord, max_depth: int) -> tuple[str | None, str]:
    """The body as (text, type name); raises PermanentError when nested too deep."""
    if not record.HasField("body"):
        return None, "empty"
    body = record.body
    kind = body.WhichOneof("value")
    if kind == "string_value":
        return body.string_value, "string"
    text, type_name, _ = render_other(body, kind, max_depth)
    return text, type_name
