"""OTLP/JSON request bodies to and from their protobuf request messages.

The encoding is the proto3 JSON mapping with the deviations of the OTLP specification
("JSON Protobuf Encoding"): `traceId`, `spanId` and `parentSpanId` are case-insensitive hex
strings, not base64 (every other `bytes` field stays base64); enums are integers; unknown fields
are ignored. As a lenient receiver we also accept what the mapping itself allows: the original
snake_case field names, enum names, and 64-bit integers as numbers or strings.

Decoding walks the `json.loads` tree straight into the request message with one filler per field,
built from the descriptors (`mallard.collector.otlp_json_fields`, which lists the rules). Encoding
is `json_format.MessageToDict` with the ids rewritten from base64 to hex; the rewrite knows exactly
where ids sit per signal, so it never descends into attributes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final, Literal, overload

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mallard.collector.errors import PermanentError
from mallard.collector.otlp_json_fields import (
    FieldError,
    MessageCodec,
    build_codec,
    fill_message,
    json_type,
)

__all__ = ["decode_json", "encode_json"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Child:
    """A message field below a level, by its JSON key."""

    key: str
    level: _Level
    repeated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class _Level:
    """Where hex ids sit below one JSON object: id keys of its own, and messages to descend into."""

    ids: tuple[str, ...] = ()
    children: tuple[_Child, ...] = ()


def _many(key: str, level: _Level) -> _Child:
    return _Child(key=key, level=level, repeated=True)


def _one(key: str, level: _Level) -> _Child:
    return _Child(key=key, level=level, repeated=False)


_TRACE_AND_SPAN: Final = ("traceId", "spanId")

_SPAN: Final = _Level(
    ids=(*_TRACE_AND_SPAN, "parentSpanId"),
    children=(_many("links", _Level(ids=_TRACE_AND_SPAN)),),
)
_SCOPE_SPANS: Final = _Level(children=(_many("spans", _SPAN),))
_RESOURCE_SPANS: Final = _Level(children=(_many("scopeSpans", _SCOPE_SPANS),))
_TRACES: Final = _Level(children=(_many("resourceSpans", _RESOURCE_SPANS),))

_POINT: Final = _Level(children=(_many("exemplars", _Level(ids=_TRACE_AND_SPAN)),))
_POINTS: Final = _Level(children=(_many("dataPoints", _POINT),))
_METRIC: Final = _Level(
    children=tuple(
        _one(kind, _POINTS) for kind in ("gauge", "sum", "histogram", "exponentialHistogram")
    )  # summary points carry no exemplars
)
_SCOPE_METRICS: Final = _Level(children=(_many("metrics", _METRIC),))
_RESOURCE_METRICS: Final = _Level(children=(_many("scopeMetrics", _SCOPE_METRICS),))
_METRICS: Final = _Level(children=(_many("resourceMetrics", _RESOURCE_METRICS),))

_SCOPE_LOGS: Final = _Level(children=(_many("logRecords", _Level(ids=_TRACE_AND_SPAN)),))
_RESOURCE_LOGS: Final = _Level(children=(_many("scopeLogs", _SCOPE_LOGS),))
_LOGS: Final = _Level(children=(_many("resourceLogs", _RESOURCE_LOGS),))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Signal:
    message_type: type[Message]
    descriptor: Descriptor
    level: _Level
    codec: MessageCodec


_SIGNALS: Final = {
    "traces": _Signal(
        message_type=ExportTraceServiceRequest,
        descriptor=ExportTraceServiceRequest.DESCRIPTOR,
        level=_TRACES,
        codec=build_codec(ExportTraceServiceRequest.DESCRIPTOR),
    ),
    "metrics": _Signal(
        message_type=ExportMetricsServiceRequest,
        descriptor=ExportMetricsServiceRequest.DESCRIPTOR,
        level=_METRICS,
        codec=build_codec(ExportMetricsServiceRequest.DESCRIPTOR),
    ),
    "logs": _Signal(
        message_type=ExportLogsServiceRequest,
        descriptor=ExportLogsServiceRequest.DESCRIPTOR,
        level=_LOGS,
        codec=build_codec(ExportLogsServiceRequest.DESCRIPTOR),
    ),
}
_LEVELS_BY_TYPE: Final = {signal.descriptor.full_name: signal.level for signal in _SIGNALS.values()}


@overload
def decode_json(signal: Literal["traces"], body: bytes) -> ExportTraceServiceRequest: ...
@overload
def decode_json(signal: Literal["metrics"], body: bytes) -> ExportMetricsServiceRequest: ...
@overload
def decode_json(signal: Literal["logs"], body: bytes) -> ExportLogsServiceRequest: ...
@overload
def decode_json(signal: str, body: bytes) -> Message: ...
def decode_json(signal: str, body: bytes) -> Message:
    """Decode an OTLP/JSON body (already decompressed) into the export request of `signal`.

    Raises `PermanentError` naming the JSON path of the first problem found, and `ValueError`
    for a signal other than 'traces', 'metrics' or 'logs' (a programming error, not bad input).
    """
    if signal not in _SIGNALS:
        raise ValueError(f"unknown OTLP signal {signal!r}")
    spec = _SIGNALS[signal]
    try:
        tree = json.loads(body)
    except RecursionError:
        raise PermanentError("invalid JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise PermanentError(f"invalid JSON: {error}") from None
    if not isinstance(tree, dict):
        raise PermanentError(f"expected a JSON object at the top level, got {json_type(tree)}")
    message = spec.message_type()
    try:
        fill_message(message, tree, spec.codec, 1)
    except FieldError as error:
        raise PermanentError(error.describe()) from None
    return message


def encode_json(message: Message) -> bytes:
    """Encode an OTLP export request as OTLP/JSON: hex ids, lowerCamelCase keys, integer enums."""
    level = _LEVELS_BY_TYPE.get(message.DESCRIPTOR.full_name)
    if level is None:
        raise ValueError(f"not an OTLP export request: {message.DESCRIPTOR.full_name}")
    tree = json_format.MessageToDict(message, use_integers_for_enums=True)
    _rewrite_ids(tree, level)
    return json.dumps(tree, ensure_ascii=False, separators=(",", ":")).encode()


def _rewrite_ids(tree: dict[str, Any], level: _Level) -> None:
    """Rewrite, in place, every id of `level` below `tree` from base64 to hex."""
    for key in level.ids:
        value = tree.get(key)
        if value is not None:
            tree[key] = base64.b64decode(value).hex()
    for child in level.children:
        value = tree.get(child.key)
        if value is not None:
            for item in value if child.repeated else [value]:
                _rewrite_ids(item, child.level)
