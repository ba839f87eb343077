"""Field decoders for OTLP/JSON: the JSON tree of a request, field by field, into its protobuf message.

Every field of an OTLP message gets a *filler*, `fill(message, value, depth)`, that checks one JSON
value, converts it and stores it on the message; message fields recurse through `fill_message`.
`build_codec` makes the fillers of a request type and every type below it from the descriptors of
opentelemetry-proto, so a field added to the protos is decoded without code changes (a field type not
handled here fails at import). The rules are those of the OTLP "JSON Protobuf Encoding", lenient only
where the proto3 JSON mapping is:

- keys are lowerCamelCase; the proto (snake_case) names are accepted too, but not both for one field;
- `traceId`, `spanId` and `parentSpanId` are hex; every other `bytes` field is base64 (standard or
  URL-safe alphabet, padding optional, nothing else);
- 64-bit integers are strings or numbers; every integer must be integral (`3.0` is) and in range;
- doubles are numbers, numeric strings, or "NaN", "Infinity", "-Infinity";
- enums are integers (unknown numbers kept, the enums are open) or the names of their values;
- unknown keys, and nulls, are ignored; anything else wrong is a `FieldError` that knows its path.

Attributes (`repeated KeyValue`) are most of a request, so they take a fast path for the usual
`{"key": k, "value": {"<kind>Value": v}}` and fall back to the generic fillers for anything else.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

__all__ = ["MAX_DEPTH", "FieldError", "MessageCodec", "build_codec", "fill_message", "json_type"]

Filler = Callable[[Any, Any, int], None]
"""`fill(message, value, depth)`: store one JSON value (never null) into a field of `message`, which
is nested `depth` messages deep (the request is 1)."""

MAX_DEPTH: Final = 100
"""Messages nest at most this deep, as in `json_format.ParseDict`: protobuf parsers stop at about 100."""


class FieldError(Exception):
    """A JSON value the field cannot take; gathers its path while unwinding."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments: list[str] = []  # innermost first: keys, and "[index]"

    def at(self, segment: str) -> FieldError:
        self.segments.append(segment)
        return self

    def describe(self) -> str:
        path = ""
        for segment in reversed(self.segments):
            path += segment if segment.startswith("[") or not path else f".{segment}"
        return f"{path}: {self.reason}" if path else self.reason


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageCodec:
    """The fillers of one message type, by JSON key."""

    fields: dict[str, Filler] = field(default_factory=dict)  # lowerCamelCase, and one-word names
    aliases: dict[str, tuple[str, Filler]] = field(default_factory=dict)  # snake_case -> (camel, filler)
    oneofs: dict[str, str] = field(default_factory=dict)  # either key -> its oneof, if it has 2+ members
    oneof_keys: frozenset[str] = frozenset()


def fill_message(message: Any, obj: dict[str, Any], codec: MessageCodec, depth: int) -> None:
    """Store the JSON object `obj` into `message`, `depth` deep, of the type `codec` was built for."""
    fields = codec.fields
    for key, value in obj.items():
        fill = fields.get(key)
        if fill is None:
            fill = _alias(key, obj, codec)
            if fill is None:
                continue  # unknown fields are ignored
        if value is None:
            continue
        try:
            fill(message, value, depth)
        except FieldError as error:
            raise error.at(key) from None
    if codec.oneof_keys and len(obj.keys() & codec.oneof_keys) > 1:
        _check_oneofs(obj, codec)


def _alias(key: str, obj: dict[str, Any], codec: MessageCodec) -> Filler | None:
    alias = codec.aliases.get(key)
    if alias is None:
        return None
    camel, fill = alias
    if camel in obj:
        raise FieldError(f"{camel} and {key} are the same field; give it once")
    return fill


def _check_oneofs(obj: dict[str, Any], codec: MessageCodec) -> None:
    seen: dict[str, str] = {}
    for key, value in obj.items():
        oneof = codec.oneofs.get(key)
        if oneof is not None and value is not None:
            first = seen.setdefault(oneof, key)
            if first != key:
                raise FieldError(f"{first} and {key} are both members of oneof {oneof}; give at most one")


# --- scalars --------------------------------------------------------------------------

_ID_FIELDS: Final = frozenset({"trace_id", "span_id", "parent_span_id"})
_HEX_DIGITS: Final = re.compile(r"[0-9a-fA-F]*")
_URL_SAFE: Final = str.maketrans("-_", "+/")
_SIGNS: Final = ("-", "+")
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SPECIAL_DOUBLES: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_INT32: Final = (-(2**31), 2**31 - 1)
_INT64: Final = (-(2**63), 2**63 - 1)
_RANGES: Final = {
    FieldDescriptor.TYPE_INT32: ("int32", *_INT32),
    FieldDescriptor.TYPE_SINT32: ("sint32", *_INT32),
    FieldDescriptor.TYPE_SFIXED32: ("sfixed32", *_INT32),
    FieldDescriptor.TYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: ("fixed32", 0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: ("int64", *_INT64),
    FieldDescriptor.TYPE_SINT64: ("sint64", *_INT64),
    FieldDescriptor.TYPE_SFIXED64: ("sfixed64", *_INT64),
    FieldDescriptor.TYPE_UINT64: ("uint64", 0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: ("fixed64", 0, 2**64 - 1),
}


def _to_string(value: object) -> str:
    if type(value) is not str:
        raise _expected("a string", value)
    return value


def _to_bool(value: object) -> bool:
    if type(value) is not bool:
        raise FieldError(f"not a valid bool: {_preview(value)}")
    return value


def _to_double(value: object) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise FieldError(f"out of range for a double: {_preview(value)}") from None
    if type(value) is str:
        special = _SPECIAL_DOUBLES.get(value)
        if special is not None:
            return special
        if _NUMBER.fullmatch(value):
            return float(value)  # may round to ±inf, as a JSON number would
    raise FieldError(f"not a valid double: {_preview(value)}")


def _hex_id(value: object) -> bytes:
    if type(value) is not str:
        raise FieldError(f"not a hex string: {_preview(value)}")
    try:
        return binascii.a2b_hex(value)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        if _HEX_DIGITS.fullmatch(value):
            raise FieldError(f"odd number of hex digits: {_preview(value)}") from None
        hint = " (OTLP/JSON ids are hex, not base64)" if value.endswith("=") else ""
        raise FieldError(f"not a hex string{hint}: {_preview(value)}") from None


def _base64(value: object) -> bytes:
    text = _to_string(value)
    if "-" in text or "_" in text:
        text = text.translate(_URL_SAFE)
    try:
        return binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        raise FieldError(f"not valid base64: {_preview(value)}") from None


def _integer_converter(type_name: str, low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if type(value) is int:
            number = value
        elif type(value) is str and (value.isdigit() or (value[:1] in _SIGNS and value[1:].isdigit())):
            if not value.isascii():  # isdigit() also takes other scripts' digits
                raise FieldError(f"not a valid {type_name}: {_preview(value)}")
            try:
                number = int(value)
            except ValueError:  # more digits than int() will parse
                raise FieldError(f"out of range for {type_name}: {_preview(value)}") from None
        elif type(value) is float and value.is_integer():
            number = int(value)
        else:
            raise FieldError(f"not a valid {type_name}: {_preview(value)}")
        if low <= number <= high:
            return number
        raise FieldError(f"out of range for {type_name}: {_preview(value)}")

    return convert


def _enum_converter(descriptor: FieldDescriptor) -> Callable[[object], int]:
    enum = descriptor.enum_type
    assert enum is not None
    numbers = {value.name: value.number for value in enum.values}
    as_int32 = _integer_converter(f"{enum.name} (an integer or a value name)", *_INT32)

    def convert(value: object) -> int:
        if type(value) is int:
            return as_int32(value)
        number = numbers.get(value) if type(value) is str else None
        return as_int32(value) if number is None else number

    return convert


def _converter(descriptor: FieldDescriptor) -> Callable[[object], Any]:
    kind = descriptor.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _to_string
    if kind == FieldDescriptor.TYPE_BYTES:
        return _hex_id if descriptor.name in _ID_FIELDS else _base64
    if kind == FieldDescriptor.TYPE_BOOL:
        return _to_bool
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _to_double
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum_converter(descriptor)
    if kind in _RANGES:
        return _integer_converter(*_RANGES[kind])
    raise NotImplementedError(f"OTLP/JSON: no decoder for {descriptor.full_name} (type {kind})")


# --- fillers --------------------------------------------------------------------------


def _scalar_filler(descriptor: FieldDescriptor) -> Filler:
    name, convert = descriptor.name, _converter(descriptor)
    if descriptor.is_repeated:

        def fill_list(message: Any, value: Any, _depth: int) -> None:
            items = _expect_list(value)
            converted = []
            for index, item in enumerate(items):
                try:
                    converted.append(convert(item))
                except FieldError as error:
                    raise error.at(f"[{index}]") from None
            getattr(message, name).extend(converted)

        return fill_list

    def fill(message: Any, value: Any, _depth: int) -> None:
        try:
            setattr(message, name, convert(value))
        except UnicodeEncodeError:  # protobuf strings are UTF-8
            raise FieldError(f"not valid Unicode (a lone surrogate): {_preview(value)}") from None

    return fill


def _message_filler(descriptor: FieldDescriptor, codec: MessageCodec) -> Filler:
    name = descriptor.name
    if descriptor.is_repeated:

        def fill_list(message: Any, value: Any, depth: int) -> None:
            add = getattr(message, name).add
            for index, item in enumerate(_expect_list(value)):
                try:
                    fill_message(add(), _expect_object(item), codec, _deeper(depth))
                except FieldError as error:
                    raise error.at(f"[{index}]") from None

        return fill_list

    def fill(message: Any, value: Any, depth: int) -> None:
        child = getattr(message, name)
        child.SetInParent()  # present, even as {}
        fill_message(child, _expect_object(value), codec, _deeper(depth))

    return fill


def _key_values_filler(descriptor: FieldDescriptor, codec: MessageCodec, any_value: MessageCodec) -> Filler:
    """`repeated KeyValue`, fast for `{"key": k, "value": {"<kind>Value": v}}`, else the generic way.

    The fast path checks little itself: protobuf refuses a key or a string that is not a str, and
    anything else it cannot take (an error, a missing key, a shape it does not know) starts the list
    over with the generic fillers, which decode it or say what is wrong and where.
    """
    name, generic = descriptor.name, _message_filler(descriptor, codec)
    kinds = any_value.fields  # still empty while AnyValue is being built: read it per call

    def fill_list(message: Any, value: Any, depth: int) -> None:
        if type(value) is not list:
            raise _expected("an array", value)
        pairs = getattr(message, name)
        try:
            if depth + 2 > MAX_DEPTH:  # a KeyValue and its AnyValue
                raise FieldError("the generic fillers check the depth")
            add = pairs.add
            for item in value:
                pair = add()
                if len(item) != 2:
                    raise FieldError("a KeyValue with other fields")
                pair.key = item["key"]
                ((kind, raw),) = item["value"].items()
                if kind == "stringValue":  # most attributes
                    pair.value.string_value = raw
                else:
                    kinds[kind](pair.value, raw, depth + 2)
        except (FieldError, LookupError, TypeError, ValueError, AttributeError):
            del pairs[:]
            generic(message, value, depth)

    return fill_list


_KEY_VALUE: Final = "opentelemetry.proto.common.v1.KeyValue"


def build_codec(descriptor: Descriptor, built: dict[str, MessageCodec] | None = None) -> MessageCodec:
    """The fillers for messages of `descriptor` and of every message type below it.

    `built` holds the codecs made so far, by type name: message types can recurse (AnyValue).
    """
    built = {} if built is None else built
    codec = built.get(descriptor.full_name)
    if codec is not None:
        return codec
    oneofs = {}
    for oneof in descriptor.oneofs:
        if len(oneof.fields) > 1:  # not the synthetic oneof of a proto3 `optional`
            for member in oneof.fields:
                oneofs[member.name] = oneofs[member.json_name] = oneof.name
    codec = MessageCodec(oneofs=oneofs, oneof_keys=frozenset(oneofs))
    built[descriptor.full_name] = codec  # before the fields: they may lead back here
    for member in descriptor.fields:
        fill = _filler(member, built)
        codec.fields[member.json_name] = fill
        if member.name != member.json_name:
            codec.aliases[member.name] = (member.json_name, fill)
    return codec


def _filler(descriptor: FieldDescriptor, built: dict[str, MessageCodec]) -> Filler:
    message_type = descriptor.message_type
    if message_type is None:
        return _scalar_filler(descriptor)
    if message_type.GetOptions().map_entry:
        raise NotImplementedError(f"OTLP/JSON: no decoder for the map {descriptor.full_name}")
    codec = build_codec(message_type, built)
    if descriptor.is_repeated and message_type.full_name == _KEY_VALUE:
        any_value = message_type.fields_by_name["value"].message_type
        assert any_value is not None
        return _key_values_filler(descriptor, codec, build_codec(any_value, built))
    return _message_filler(descriptor, codec)


# --- JSON types -----------------------------------------------------------------------


def _deeper(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise FieldError(f"messages nested more than {MAX_DEPTH} deep")
    return depth + 1


def _expect_object(value: object) -> dict[str, Any]:
    if type(value) is not dict:
        raise _expected("an object", value)
    return value


def _expect_list(value: object) -> list[Any]:
    if type(value) is not list:
        raise _expected("an array", value)
    return value


def _expected(what: str, value: object) -> FieldError:
    return FieldError(f"expected {what}, got {json_type(value)}")


def json_type(value: object) -> str:
    """The JSON type of a parsed value, with its article: 'a string', 'an array', 'null'."""
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
    text = text if len(text) <= limit else f"{text[: limit - 3]}..."
    return text.encode(errors="backslashreplace").decode()  # a lone surrogate would not encode later
