"""OTLP export responses (success and partial success) for each signal."""

from __future__ import annotations

from typing import Final

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from mallard.collector.ingest import ExportResult

_REJECTED_FIELD: Final = {
    "traces": "rejected_spans",
    "metrics": "rejected_data_points",
    "logs": "rejected_log_records",
}
_RESPONSES: Final[dict[str, type[Message]]] = {
    "traces": ExportTraceServiceResponse,
    "metrics": ExportMetricsServiceResponse,
    "logs": ExportLogsServiceResponse,
}


def export_response(signal: str, result: ExportResult) -> Message:
    """Success, or partial success with the rejected count and message when anything was rejected."""
    response = _RESPONSES[signal]()
    if result.rejected or result.message:
        partial = response.partial_success  # type: ignore[attr-defined]
        setattr(partial, _REJECTED_FIELD[signal], result.rejected)
        partial.error_message = result.message
    return response
