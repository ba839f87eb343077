"""Query results as text: an aligned table for people, CSV and JSON for programs.

All three render values the same way:

| value | table | CSV | JSON |
|---|---|---|---|
| NULL | `NULL` | empty field | `null` |
| integer (any size, DuckDB HUGEINT too) | exact digits | exact digits | exact number, even beyond 2^53 |
| decimal | exact digits | exact digits | number (integral ones exact, others as a double) |
| NaN, ±infinity | `NaN`, `Infinity`, `-Infinity` | same | strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
| boolean | `true` / `false` | same | `true` / `false` |
| timestamp with time zone | ISO 8601 in UTC ending in `Z`: `2026-11-22T10:00:00.123456Z` | same | string |
| timestamp without time zone, date, time | ISO 8601 without zone | same | string |
| interval, duration | ISO 8601 duration: `P1M2DT0.5S` | same | string |
| bytes | base64 | same | string |
| map | JSON object text | same | object (keys as text) |
| list, struct | JSON array / object text | same | array / object |

Nanosecond timestamps keep all nine digits in top-level columns; nested in a list or struct they are
cut to microseconds. The JSON output is one array with one row object per line; a duplicated column
name keeps its last value.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Final, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None

DEFAULT_MAX_CELL_WIDTH: Final = 60
_NON_FINITE: Final = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_ESCAPES: Final = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def format_table(table: pa.Table, *, max_cell_width: int | None = DEFAULT_MAX_CELL_WIDTH) -> str:
    """An aligned text table: header, rule, rows, then `(N rows)`.

    Numbers are right-aligned; line breaks in values show as `\\n`; a cell longer than
    `max_cell_width` characters is cut and ends in `…` (None: never cut).
    """
    header = [str(name) for name in table.column_names]
    cells = [[_cut(_cell_text(value), max_cell_width) for value in row] for row in _rows(table)]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(header)]
    right = [_is_numeric(field.type) for field in table.schema]
    lines = []
    if header:
        lines.append(_table_line([name.ljust(width) for name, width in zip(header, widths, strict=True)]))
        lines.append("-" + "-+-".join("-" * width for width in widths) + "-")
        for row in cells:
            padded = [
                text.rjust(width) if align_right else text.ljust(width)
                for text, width, align_right in zip(row, widths, right, strict=True)
            ]
            lines.append(_table_line(padded))
    count = table.num_rows
    lines.append(f"({count} row{'' if count == 1 else 's'})")
    return "\n".join(lines) + "\n"


def format_csv(table: pa.Table) -> str:
    """CSV with a header row and `\\n` line ends; NULL is an empty field, nested values JSON text."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in _rows(table):
        writer.writerow(["" if value is None else _cell_text(value) for value in row])
    return buffer.getvalue()


def format_json(table: pa.Table) -> str:
    """A JSON array of row objects (column name -> value), one row per line."""
    lines = [_dump(row) for row in to_json_rows(table)]
    if not lines:
        return "[]\n"
    return "[\n" + ",\n".join(lines) + "\n]\n"


def to_json_rows(table: pa.Table) -> list[dict[str, JsonValue]]:
    """The rows of `table` as JSON-ready objects (column name -> value), rendered as in the table above."""
    names = table.column_names
    return [dict(zip(names, row, strict=True)) for row in _rows(table)]


def _json_value(value: object, data_type: pa.DataType) -> JsonValue:
    """One value as `to_pylist()` gives it, of Arrow type `data_type`, as a JSON-ready value."""
    if value is None:
        return None
    if pa.types.is_map(data_type):
        assert isinstance(value, list)
        return {
            _key_text(_json_value(key, data_type.key_type)): _json_value(item, data_type.item_type)
            for key, item in value
        }
    if _is_list(data_type):
        assert isinstance(value, list)
        return [_json_value(item, data_type.value_type) for item in value]
    if pa.types.is_struct(data_type):
        assert isinstance(value, dict)
        fields = [data_type.field(i) for i in range(data_type.num_fields)]
        return {field.name: _json_value(value.get(field.name), field.type) for field in fields}
    if pa.types.is_dictionary(data_type):
        return _json_value(value, data_type.value_type)
    return _scalar(value)


def _rows(table: pa.Table) -> list[tuple[JsonValue, ...]]:
    columns = [_column_values(column) for column in table.columns]
    return list(zip(*columns, strict=True)) if columns else [() for _ in range(table.num_rows)]


def _column_values(column: pa.ChunkedArray) -> list[JsonValue]:
    data_type = column.type
    if pa.types.is_timestamp(data_type) and data_type.unit == "ns":
        return _nanosecond_timestamps(column)
    return [_json_value(value, data_type) for value in column.to_pylist()]


def _nanosecond_timestamps(column: pa.ChunkedArray) -> list[JsonValue]:
    """`to_pylist()` would cut nanoseconds to microseconds: format from the integers instead."""
    has_zone = column.type.tz is not None
    values: list[JsonValue] = []
    for nanos in pc.cast(column, pa.int64()).to_pylist():
        if nanos is None:
            values.append(None)
            continue
        seconds, fraction = divmod(nanos, 1_000_000_000)
        moment = datetime.fromtimestamp(seconds, tz=UTC).replace(tzinfo=None)
        values.append(f"{moment.isoformat()}.{fraction:09d}{'Z' if has_zone else ''}")
    return values


def _scalar(value: object) -> JsonValue:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE[repr(value)]
    if isinstance(value, Decimal):  # Arrow decimals are always finite
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return _iso_datetime(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _iso_duration(0, value.days, value.seconds * 10**9 + value.microseconds * 1000)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, pa.MonthDayNano):
        return _iso_duration(value.months, value.days, value.nanoseconds)
    return str(value)


def _iso_datetime(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is None:
        return value.isoformat()
    return (value - offset).replace(tzinfo=None).isoformat() + "Z"


def _iso_duration(months: int, days: int, nanoseconds: int) -> str:
    """ISO 8601 duration; each part keeps its own sign (`PT-1.5S`), as PostgreSQL writes them."""
    text = "P"
    if months:
        text += f"{months}M"
    if days:
        text += f"{days}D"
    if nanoseconds or text == "P":
        sign = "-" if nanoseconds < 0 else ""
        seconds, fraction = divmod(abs(nanoseconds), 1_000_000_000)
        digits = f".{fraction:09d}".rstrip("0") if fraction else ""
        text += f"T{sign}{seconds}{digits}S"
    return text


def _cell_text(value: JsonValue) -> str:
    """A JSON-ready value as table/CSV text: strings bare, everything else as JSON."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    return _dump(value)


def _dump(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _key_text(key: JsonValue) -> str:
    return key if isinstance(key, str) else _dump(key)


def _cut(text: str, max_width: int | None) -> str:
    text = text.translate(_ESCAPES)
    if max_width is None or len(text) <= max_width:
        return text
    return text[: max(max_width - 1, 0)] + "…"


def _table_line(cells: Sequence[str]) -> str:
    return " " + " | ".join(cells).rstrip()


def _is_numeric(data_type: pa.DataType) -> bool:
    checks: tuple[Callable[[pa.DataType], bool], ...] = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_decimal,
    )
    return any(check(data_type) for check in checks)


def _is_list(data_type: pa.DataType) -> bool:
    checks: tuple[Callable[[pa.DataType], bool], ...] = (
        pa.types.is_list,
        pa.types.is_large_list,
        pa.types.is_fixed_size_list,
        pa.types.is_list_view,
        pa.types.is_large_list_view,
    )
    return any(check(data_type) for check in checks)
