"""OTLP/JSON request bodies to and from their protobuf request messages.

The encoding is the proto3 JSON mapping with the deviations of the OTLP specification
("JSON Protobuf Encoding"): `traceId`, `spanId` and `parentSpanId` are case-insensitive hex
strings, not base64 (every other `bytes` field stays base64); enums are integers; unknown fields
are ignored. As a lenient receiver we also accept what the mapping itself allows: the original
snake_case field names, enum names, and 64-bit integers as numbers or strings.

Decoding rewrites the hex ids of the parsed tree to base64 and hands it to `json_format.ParseDict`;
the rewrite knows exactly where ids sit per signal, so it never descends into attributes.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, overload

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mallard.collector.errors import PermanentError

__all__ = ["decode_json", "encode_json"]


class _WalkError(Exception):
    """A structural or id problem met by the id rewrite; gathers its JSON path while unwinding."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def at(self, segment: str) -> _WalkError:
        self.path.insert(0, segment)
        return self

    def describe(self) -> str:
        return f"{'.'.join(self.path)}: {self.reason}" if self.path else self.reason


@dataclass(frozen=True, slots=True, kw_only=True)
class _Child:
    """A message field below a level: its JSON keys (lowerCamelCase, then the proto name)."""

    keys: tuple[str, ...]
    level: _Level
    repeated: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class _Level:
    """Where hex ids sit below one JSON object: id keys of its own, and messages to descend into."""

    ids: tuple[str, ...] = ()
    children: tuple[_Child, ...] = ()


def _keys(camel: str) -> tuple[str, ...]:
    snake = re.sub(r"([A-Z])", r"_\1", camel).lower()
    return (camel, snake) if snake != camel else (camel,)


def _many(camel: str, level: _Level) -> _Child:
    return _Child(keys=_keys(camel), level=level, repeated=True)


def _one(camel: str, level: _Level) -> _Child:
    return _Child(keys=_keys(camel), level=level, repeated=False)


_TRACE_AND_SPAN: Final = (*_keys("traceId"), *_keys("spanId"))

_SPAN: Final = _Level(
    ids=(*_TRACE_AND_SPAN, *_keys("parentSpanId")),
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


_SIGNALS: Final = {
    "traces": _Signal(
        message_type=ExportTraceServiceRequest,
        descriptor=ExportTraceServiceRequest.DESCRIPTOR,
        level=_TRACES,
    ),
    "metrics": _Signal(
        message_type=ExportMetricsServiceRequest,
        descriptor=ExportMetricsServiceRequest.DESCRIPTOR,
        level=_METRICS,
    ),
    "logs": _Signal(
        message_type=ExportLogsServiceRequest,
        descriptor=ExportLogsServiceRequest.DESCRIPTOR,
        level=_LOGS,
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
        raise PermanentError(f"expected a JSON object at the top level, got {_json_type(tree)}")
    try:
        _rewrite_ids(tree, spec.level, _hex_to_base64)
    except _WalkError as error:
        raise PermanentError(error.describe()) from None
    message = spec.message_type()
    try:
        json_format.ParseDict(tree, message, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise PermanentError(_explain(tree, spec.descriptor, error)) from error
    return message


def encode_json(message: Message) -> bytes:
    """Encode an OTLP export request as OTLP/JSON: hex ids, lowerCamelCase keys, integer enums."""
    level = _LEVELS_BY_TYPE.get(message.DESCRIPTOR.full_name)
    if level is None:
        raise ValueError(f"not an OTLP export request: {message.DESCRIPTOR.full_name}")
    tree = json_format.MessageToDict(message, use_integers_for_enums=True)
    _rewrite_ids(tree, level, _base64_to_hex)
    return json.dumps(tree, ensure_ascii=False, separators=(",", ":")).encode()


def _rewrite_ids(tree: dict[str, Any], level: _Level, convert: Callable[[object], str]) -> None:
    """Replace, in place, every id of `level` below `tree` by `convert(id)`."""
    for key in level.ids:
        value = tree.get(key)
        if value is not None:
            try:
                tree[key] = convert(value)
            except _WalkError as error:
                raise error.at(key) from None
    for child in level.children:
        for key in child.keys:
            value = tree.get(key)
            if value is None:
                continue
            if not child.repeated:
                if not isinstance(value, dict):
                    raise _WalkError(f"expected an object, got {_json_type(value)}").at(key)
                try:
                    _rewrite_ids(value, child.level, convert)
                except _WalkError as error:
                    raise error.at(key) from None
                continue
            if not isinstance(value, list):
                raise _WalkError(f"expected an array, got {_json_type(value)}").at(key)
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    raise _WalkError(f"expected an object, got {_json_type(item)}").at(f"{key}[{index}]")
                try:
                    _rewrite_ids(item, child.level, convert)
                except _WalkError as error:
                    raise error.at(f"{key}[{index}]") from None


_HEX_DIGITS: Final = re.compile(r"[0-9a-fA-F]*")


def _hex_to_base64(value: object) -> str:
    if not isinstance(value, str):
        raise _WalkError(f"not a hex string: {_preview(value)}")
    try:
        raw = binascii.a2b_hex(value)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        if _HEX_DIGITS.fullmatch(value):
            raise _WalkError(f"odd number of hex digits: {_preview(value)}") from None
        hint = " (OTLP/JSON ids are hex, not base64)" if value.endswith("=") else ""
        raise _WalkError(f"not a hex string{hint}: {_preview(value)}") from None
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _base64_to_hex(value: object) -> str:
    assert isinstance(value, str), "MessageToDict writes bytes as base64 strings"
    return base64.b64decode(value).hex()


def _explain(tree: dict[str, Any], descriptor: Descriptor, error: json_format.ParseError) -> str:
    """Say what ParseDict rejected and where: its own messages lose the path on some errors."""
    path, reason = _find_fault(tree, descriptor)
    if reason is None:
        reason = _innermost_reason(error)
    return f"{'.'.join(path)}: {reason}" if path else reason


def _find_fault(tree: dict[str, Any], descriptor: Descriptor) -> tuple[list[str], str | None]:
    """The path to the first value ParseDict rejects, found by parsing piece by piece (error path only)."""
    fields = {field.name: field for field in descriptor.fields}
    fields.update((field.json_name, field) for field in descriptor.fields)
    for key, value in tree.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        if field.message_type is None:
            if _rejects({key: value}, descriptor):
                return _scalar_fault(key, value, field, descriptor)
            continue
        items = value if field.is_repeated else [value]
        if not isinstance(items, list):
            return [key], f"expected an array, got {_json_type(value)}"
        for index, item in enumerate(items):
            where = f"{key}[{index}]" if field.is_repeated else key
            if not isinstance(item, dict):
                return [where], f"expected an object, got {_json_type(item)}"
            if _rejects(item, field.message_type):
                path, reason = _find_fault(item, field.message_type)
                return [where, *path], reason
    return [], None  # only the combination fails, e.g. two members of one oneof


def _scalar_fault(
    key: str, value: object, field: FieldDescriptor, descriptor: Descriptor
) -> tuple[list[str], str]:
    if not field.is_repeated:
        return [key], f"not a valid {_type_name(field)}: {_preview(value)}"
    if not isinstance(value, list):
        return [key], f"expected an array, got {_json_type(value)}"
    for index, item in enumerate(value):
        if _rejects({key: [item]}, descriptor):
            reason = f"not a valid {_type_name(field)}: {_preview(item)}"
            return [f"{key}[{index}]"], reason
    return [key], f"not a valid array of {_type_name(field)}"


def _rejects(tree: dict[str, Any], descriptor: Descriptor) -> bool:
    try:
        json_format.ParseDict(tree, GetMessageClass(descriptor)(), ignore_unknown_fields=True)
    except json_format.ParseError:
        return True
    return False


def _innermost_reason(error: BaseException) -> str:
    while error.__cause__ is not None:
        error = error.__cause__
    return re.sub(r"\s+at\s+\"?[\w.\[\]]+\"?\.*$", "", str(error)).rstrip(".")


_TYPE_NAMES: Final = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "base64 bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


def _type_name(field: FieldDescriptor) -> str:
    if field.enum_type is not None:
        return f"{field.enum_type.name} (an integer)"
    return _TYPE_NAMES.get(field.type, "value")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _preview(value: object, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
