"""OTLP attributes and AnyValues to the store's text-valued maps (see `mallard.storage.schema`).

Strings stay as they are; other values become JSON text (`200`, `1.5`, `true`, `[1,"a"]`,
`{"k":1}`), bytes become base64; a sibling map names the type of every non-string value.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from mallard.collector.errors import PermanentError
from mallard.storage.schema import ATTRIBUTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Per-item limits; an item over them is rejected (OTLP partial success), not truncated."""

    max_attributes: int = 1024
    max_depth: int = 16


def render_into(
    kvs: Sequence[KeyValue],
    target: AttributeColumns,
    limits: Limits,
    wanted: frozenset[str] = frozenset(),
) -> dict[str, object] | None:
    """Appends one row of `kvs` to `target`; returns the raw values of the `wanted` keys found.

    Raises PermanentError when over the limits, leaving `target` as it was.
    """
    if len(kvs) > limits.max_attributes:
        raise PermanentError(f"{len(kvs)} attributes, more than the limit of {limits.max_attributes}")
    values_col, types_col = target.values, target.types
    keys, values = values_col.keys, values_col.values
    keys_append, values_append = keys.append, values.append
    found: dict[str, object] | None = None
    mark = len(keys)
    type_mark = len(types_col.keys)
    try:
        for kv in kvs:
            key = kv.key
            value = kv.value
            kind = value.WhichOneof("value")
            if kind == "string_value":
                raw: object = value.string_value
                keys_append(key)
                values_append(raw)  # type: ignore[arg-type]
            else:
                text, type_name, raw = render_other(value, kind, limits.max_depth)
                keys_append(key)
                values_append(text)
                types_col.keys.append(key)
                types_col.values.append(type_name)
            if key in wanted:
                if found is None:
                    found = {}
                found[key] = raw
    except PermanentError:
        del keys[mark:], values[mark:], types_col.keys[type_mark:], types_col.values[type_mark:]
        raise
    values_col.offsets.append(len(keys))
    types_col.offsets.append(len(types_col.keys))
    return found


def render_other(value: AnyValue, kind: str | None, max_depth: int) -> tuple[str | None, str, object]:
    """A non-string AnyValue as (text, type name, Python value)."""
    if kind == "int_value":
        number = value.int_value
        return str(number), "int", number
    if kind == "double_value":
        real = value.double_value
        return repr(real), "double", real
    if kind == "bool_value":
        flag = value.bool_value
        return ("true" if flag else "false"), "bool", flag
    if kind == "bytes_value":
        data = value.bytes_value
        return base64.b64encode(data).decode("ascii"), "bytes", data
    if kind == "array_value":
        items = [to_python(v, max_depth - 1) for v in value.array_value.values]
        return _dumps(items), "array", items
    if kind == "kvlist_value":
        mapping = {kv.key: to_python(kv.value, max_depth - 1) for kv in value.kvlist_value.values}
        return _dumps(mapping), "kvlist", mapping
    return None, "empty", None


def to_python(value: AnyValue, depth: int) -> Any:
    """An AnyValue as a JSON-ready Python value (bytes as base64 text)."""
    if depth <= 0:
        raise PermanentError("attribute value nested deeper than the limit")
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if kind == "array_value":
        return [to_python(v, depth - 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: to_python(kv.value, depth - 1) for kv in value.kvlist_value.values}
    return None


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class MapColumn:
    """Accumulates one MAP(VARCHAR, VARCHAR) column row by row, as flat arrays."""

    __slots__ = ("keys", "offsets", "values")

    def __init__(self) -> None:
        self.offsets: list[int] = [0]
        self.keys: list[str] = []
        self.values: list[str | None] = []

    def append(self, keys: Iterable[str], values: Iterable[str | None]) -> None:
        self.keys.extend(keys)
        self.values.extend(values)
        self.offsets.append(len(self.keys))

    def to_arrow(self) -> pa.Array:
        return pa.MapArray.from_arrays(
            pa.array(self.offsets, pa.int32()),
            pa.array(self.keys, pa.string()),
            pa.array(self.values, pa.string()),
            type=ATTRIBUTES,
        )


class AttributeColumns:
    """An `attributes` map column and its `attribute_types` sibling."""

    __slots__ = ("types", "values")

    def __init__(self) -> None:
        self.values = MapColumn()
        self.types = MapColumn()

    def truncate(self, rows: int) -> None:
        """Drops every row after the first `rows` (undoes a partly appended item)."""
        for column in (self.values, self.types):
            del column.offsets[rows + 1 :]
            end = column.offsets[-1]
            del column.keys[end:], column.values[end:]

    @property
    def rows(self) -> int:
        return len(self.values.offsets) - 1

    def to_arrow(self, take: list[int] | None = None) -> tuple[pa.Array, pa.Array]:
        """The two map arrays; with `take`, row `take[i]` becomes row i (resources repeated per item)."""
        values, types = self.values.to_arrow(), self.types.to_arrow()
        if take is None:
            return values, types
        indices = pa.array(take, pa.int32())
        return values.take(indices), types.take(indices)


def text_of(value: object) -> str:
    """A raw attribute value (as `render_into` reports it) as the text the attribute maps hold for it:
    `true`, `42`, `1.5`, base64 for bytes, compact JSON for arrays and kvlists, '' for an empty value."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return _dumps(value)


def service_name_of(found: dict[str, object] | None) -> str:
    """The service name among a resource's rendered attributes ('' when it names none)."""
    return text_of((found or {}).get("service.name", ""))


SERVICE_KEY: Final = frozenset({"service.name"})
