"""The native span converter against its oracle, `spans_to_arrow_python`: for every input both give an
equal RecordBatch and the same rejections, or both raise PermanentError with the same message.

Requests come from the protobuf runtime (realistic, every value type, rejections, limits, random ones
from hypothesis) and from a wire-level re-encoder that injects unknown fields, known fields with the
wrong wire type, duplicates and groups; malformed bytes (every truncation, random flips) must never
crash the process and must fail exactly where upb fails.
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span, Status

from mallard.collector.arrow import spans as spans_module
from mallard.collector.arrow.attributes import Limits
from mallard.collector.arrow.outcome import Converted
from mallard.collector.arrow.spans import spans_to_arrow, spans_to_arrow_python
from mallard.collector.errors import PermanentError
from mallard.storage.schema import SPANS

native = pytest.importorskip(
    "mallard.collector.arrow._native_spans",
    reason="native span converter not built (no C compiler or Python headers at install, or "
    "MALLARD_NO_NATIVE=1): rebuild with `pip install -e .`",
)

TRACE = bytes(range(1, 17))
SPAN = bytes(range(1, 9))
T0 = 1_700_000_000_000_000_000
DEFAULT = Limits()


# ---------------------------------------------------------------------------------------------------
# Comparing the two converters


def run(convert: Callable[..., Converted], payload: bytes, limits: Limits) -> tuple[Any, ...]:
    try:
        done = convert(payload, limits=limits)
    except PermanentError as exc:
        return ("permanent", str(exc))
    except Exception as exc:  # the oracle's own failures (pyarrow overflow) must be reproduced too
        return ("error", type(exc), str(exc))
    return ("ok", done.batch, done.rejected, done.message)


def run_native(payload: bytes, *, limits: Limits = DEFAULT) -> Converted:
    done = native.convert(payload, limits.max_attributes, limits.max_depth)
    if done is None:
        raise _Deferred
    batch, rejected, message = done
    return Converted(table="spans", batch=batch, rejected=rejected, message=message)


class _Deferred(Exception):
    """The native converter handed the request to the Python one."""


def same(payload: bytes, limits: Limits = DEFAULT, *, deferred: bool = False) -> tuple[Any, ...]:
    """Asserts the two converters agree on `payload`; returns the oracle's outcome."""
    expected = run(spans_to_arrow_python, payload, limits)
    got = run(run_native, payload, limits)
    if got[0] == "error" and got[1] is _Deferred:
        # the native converter leaves times outside int64 to the Python one
        out_of_range = expected[0] == "ok" and "2262" in expected[3]
        assert deferred or out_of_range or expected[0] == "error", (
            f"native deferred a request the oracle takes: {expected}"
        )
        got = run(spans_to_arrow, payload, limits)
    else:
        assert not deferred, "expected the native converter to defer to Python"
    assert got[0] == expected[0], (got, expected)
    if expected[0] != "ok":
        assert got == expected
        return expected
    batch, oracle = got[1], expected[1]
    assert batch.schema == SPANS
    batch.validate(full=True)
    if not batch.equals(oracle):
        diffs = [n for n in SPANS.names if not batch.column(n).equals(oracle.column(n))]
        raise AssertionError(
            f"columns differ: {diffs}\n"
            + "\n".join(f"{n}: native {batch.column(n)} oracle {oracle.column(n)}" for n in diffs[:3])
        )
    assert got[2:] == expected[2:]
    return expected


# ---------------------------------------------------------------------------------------------------
# Building requests


def set_value(target: AnyValue, value: object) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, list):
        target.array_value.SetInParent()
        for item in value:
            set_value(target.array_value.values.add(), item)
    elif isinstance(value, tuple):  # kvlist as (key, value) pairs, so keys may repeat
        target.kvlist_value.SetInParent()
        for key, item in value:
            kv = target.kvlist_value.values.add()
            kv.key = key
            set_value(kv.value, item)
    else:
        assert value is None  # an empty AnyValue


def add_attributes(attributes: Any, items: dict[str, object] | list[tuple[str, object]]) -> None:
    for key, value in items.items() if isinstance(items, dict) else items:
        kv = attributes.add()
        kv.key = key
        if value is not None:
            set_value(kv.value, value)
        else:
            kv.value.SetInParent()


def add_span(resource_spans: ResourceSpans, scope: str = "scope", **fields: Any) -> Span:
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = scope
    span = scope_spans.spans.add()
    fill_span(span, **fields)
    return span


def fill_span(
    span: Span, *, attributes: Any = (), trace_id: bytes = TRACE, span_id: bytes = SPAN, **fields: Any
) -> None:
    span.trace_id, span.span_id = trace_id, span_id
    span.name = fields.pop("name", "op")
    span.start_time_unix_nano = fields.pop("start", T0)
    span.end_time_unix_nano = fields.pop("end", T0 + 5_000)
    for name, value in fields.items():
        setattr(span, name, value)
    add_attributes(span.attributes, list(attributes))


SCOPE_ATTRIBUTES: list[tuple[str, object]] = [("lib.kind", "http"), ("lib.major", 2), ("lib.stable", True)]


def request_with(
    *spans: dict[str, Any], resource: Any = (("service.name", "svc"),), scope: Any = SCOPE_ATTRIBUTES
) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(rs.resource.attributes, list(resource))
    scope_spans = rs.scope_spans.add()
    scope_spans.scope.name, scope_spans.scope.version = "lib", "1.0"
    add_attributes(scope_spans.scope.attributes, list(scope))
    for fields in spans:
        fill_span(scope_spans.spans.add(), **fields)
    return request.SerializeToString()


REALISTIC_ATTRIBUTES: list[tuple[str, object]] = [
    ("http.request.method", "GET"),
    ("http.route", "/api/users/{id}"),
    ("http.response.status_code", 200),
    ("url.scheme", "https"),
    ("server.address", "api.example.com"),
    ("server.port", 443),
    ("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"),
    ("network.protocol.version", "1.1"),
    ("client.address", "10.1.2.3"),
    ("app.cache_hit", True),
]


def realistic_request(spans: int = 512, services: int = 20, seed: int = 7) -> bytes:
    """`spans` server spans over `services` services: 10 attributes and 2 events (1 int attribute) each;
    each service's scope has 2 attributes."""
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    for s in range(services):
        rs = request.resource_spans.add()
        add_attributes(
            rs.resource.attributes,
            {"service.name": f"service-{s}", "service.version": "2.4.1", "host.name": f"host-{s}"},
        )
        scope_spans = rs.scope_spans.add()
        scope_spans.scope.name, scope_spans.scope.version = "opentelemetry.instrumentation.flask", "0.45b0"
        add_attributes(
            scope_spans.scope.attributes, {"instrumentation.provider": "opentelemetry", "shard": s}
        )
        for i in range(spans // services + (s < spans % services)):
            span = scope_spans.spans.add()
            span.trace_id, span.span_id = rng.randbytes(16), rng.randbytes(8)
            span.parent_span_id = rng.randbytes(8)
            span.name, span.kind = "GET /api/users/{id}", Span.SPAN_KIND_SERVER
            span.start_time_unix_nano = T0 + i * 1_000_000
            span.end_time_unix_nano = span.start_time_unix_nano + rng.randrange(10**6, 10**9)
            add_attributes(span.attributes, REALISTIC_ATTRIBUTES)
            for e in range(2):
                event = span.events.add()
                event.name, event.time_unix_nano = f"step-{e}", span.start_time_unix_nano + e * 1000
                add_attributes(event.attributes, {"attempt": e})
            span.status.code = Status.STATUS_CODE_OK
    return request.SerializeToString()


# wire format, for what the protobuf runtime will not write


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def ld(number: int, body: bytes) -> bytes:
    return tag(number, 2) + varint(len(body)) + body


def vi(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def f64(number: int, value: int) -> bytes:
    return tag(number, 1) + struct.pack("<Q", value)


def f32(number: int, value: int) -> bytes:
    return tag(number, 5) + struct.pack("<I", value)


def group(number: int, body: bytes) -> bytes:
    return tag(number, 3) + body + tag(number, 4)


def wire_span(*fields: bytes, ids: bool = True) -> bytes:
    head = ld(1, TRACE) + ld(2, SPAN) if ids else b""
    return head + b"".join(fields)


def wire_request(
    *spans: bytes,
    resource: bytes = ld(1, ld(1, b"service.name") + ld(2, ld(1, b"svc"))),
    scope: bytes = ld(1, b"lib"),
) -> bytes:
    scope_spans = ld(1, scope) + b"".join(ld(2, s) for s in spans)
    return ld(1, ld(1, resource) + ld(2, scope_spans))


def kv(key: bytes, *value_fields: bytes) -> bytes:
    return ld(1, key) + b"".join(ld(2, v) for v in value_fields)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


Inject = Callable[[str], tuple[bytes, bytes]]


def reencode(data: bytes, descriptor: Descriptor, inject: Inject) -> bytes:
    """`data` (a well-formed message) with `inject(message type)` bytes before and after every message."""
    head, tail = inject(descriptor.full_name)
    out = bytearray(head)
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            size, pos = read_varint(data, pos)
            body = data[pos : pos + size]
            pos += size
            field = descriptor.fields_by_number.get(number)
            if field is not None and field.message_type is not None:
                body = reencode(body, field.message_type, inject)
            out += tag(number, 2) + varint(len(body)) + body
        elif wire_type == 0:
            value, pos = read_varint(data, pos)
            out += vi(number, value)
        else:
            size = 8 if wire_type == 1 else 4
            out += tag(number, wire_type) + data[pos : pos + size]
            pos += size
    return bytes(out + tail)


# ---------------------------------------------------------------------------------------------------
# Requests the converters agree on


def test_realistic_request() -> None:
    ok = same(realistic_request())
    assert ok[1].num_rows == 512 and ok[2] == 0
    assert ok[1].column("http_status_code").to_pylist()[:2] == [200, 200]
    assert ok[1].column("scope_attributes")[-1].as_py() == [
        ("instrumentation.provider", "opentelemetry"),
        ("shard", "19"),
    ]
    assert ok[1].column("scope_attribute_types")[-1].as_py() == [("shard", "int")]


def test_empty_request_and_empty_resource_spans() -> None:
    assert same(b"")[1].num_rows == 0
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add()
    request.resource_spans.add()
    assert same(request.SerializeToString())[1].num_rows == 0


VALUES: list[object] = [
    "",
    "plain",
    "ünïcødé ✓ 中文 🦆",
    0,
    -1,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    0.1,
    1e300,
    -2.5e-310,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
    b"",
    b"\x00\xff",
    b"abc",
    b"abcd",
    None,
    [],
    [1, "a", 2.5, True, None, b"\x01"],
    [[1, [2, [3]]], (("k", 1),)],
    (),
    (("a", 1), ("b", [1, 2]), ("a", "dup"), ("ü", None), ("", math.nan)),
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_value_type(value: object) -> None:
    attributes = [("k", value), ("k2", "s")]
    same(
        request_with(
            {"attributes": attributes}, resource=[("service.name", "svc"), ("r", value)], scope=[("s", value)]
        )
    )


def test_unicode_everywhere() -> None:
    text = "sërvïce-名前-🦆"
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(rs.resource.attributes, {"service.name": text, "ключ": "значение"})
    span = add_span(rs, scope=text, name=text, trace_state=f"k={text}", attributes=[(text, text)])
    add_attributes(rs.scope_spans[0].scope.attributes, {text: text, "ключ": [text]})
    span.status.message = text
    event = span.events.add()
    event.name = text
    add_attributes(event.attributes, {text: [text, (("ü", text),)]})
    link = span.links.add()
    link.trace_id, link.span_id, link.trace_state = TRACE, SPAN, text
    same(request.SerializeToString())


def test_multiple_resources_scopes_events_and_links() -> None:
    request = ExportTraceServiceRequest()
    for r in range(3):
        rs = request.resource_spans.add()
        rs.schema_url = "https://opentelemetry.io/schemas/1.26.0"
        add_attributes(rs.resource.attributes, {"service.name": f"s{r}", "deployment.environment": "prod"})
        for s in range(2):
            scope_spans = rs.scope_spans.add()
            scope_spans.scope.name, scope_spans.scope.version = f"scope{s}", f"{s}.0"
            add_attributes(
                scope_spans.scope.attributes,
                {"scope.index": s, "scope.ratio": s / 2, "scope.tags": ["a", s], "scope.on": bool(s)},
            )
            for p in range(3):
                span = scope_spans.spans.add()
                fill_span(
                    span,
                    span_id=bytes([r, s, p, 1, 1, 1, 1, 1]),
                    kind=p,
                    flags=0x301,
                    trace_state="a=b",
                    dropped_attributes_count=3,
                    dropped_events_count=4,
                    dropped_links_count=5,
                    parent_span_id=SPAN if p else b"",
                )
                span.status.code, span.status.message = Status.STATUS_CODE_ERROR, "boom"
                for e in range(p):
                    event = span.events.add()
                    event.time_unix_nano, event.name, event.dropped_attributes_count = T0 + e, f"e{e}", e
                    add_attributes(event.attributes, {"n": e, "f": e / 3, "l": [e]})
                for ln in range(2 - p % 2):
                    link = span.links.add()
                    link.trace_id, link.span_id = TRACE, bytes([ln + 1]) * 8
                    link.trace_state, link.flags, link.dropped_attributes_count = "x=y", 256 + ln, 7
                    add_attributes(link.attributes, {"link.n": ln, "b": b"\x01\x02"})
    ok = same(request.SerializeToString())
    assert ok[1].num_rows == 18


@pytest.mark.parametrize("kind", [-1, 0, 5, 6, 2**31 - 1, -(2**31)])
def test_enum_names_and_numbers(kind: int) -> None:
    request = ExportTraceServiceRequest()
    span = add_span(request.resource_spans.add(), kind=kind)
    span.status.code = Status.StatusCode.ValueType(kind)
    same(request.SerializeToString())


PROMOTED_CASES: list[list[tuple[str, object]]] = [
    [("http.method", "POST"), ("http.request.method", "GET")],  # the first key listed wins
    [("http.request.method", "GET"), ("http.request.method", "PUT")],  # the last value of a key wins
    [("http.request.method", None), ("http.method", "GET")],  # present but empty stops the search
    [("http.status_code", "404"), ("http.response.status_code", " 201 ")],
    [("http.response.status_code", "abc")],
    [("http.response.status_code", "٤٠٤")],  # int() takes any Unicode digits
    [("http.response.status_code", "1_000")],
    [("http.response.status_code", "9" * 5000)],  # past int()'s digit limit: ValueError, so null
    [("http.response.status_code", 200.0)],
    [("http.response.status_code", 200.5)],
    [("http.response.status_code", math.nan)],
    [("http.response.status_code", True)],
    [("http.response.status_code", b"200")],
    [("http.response.status_code", [200])],
    [("http.response.status_code", None)],
    [("gen_ai.usage.input_tokens", 10), ("gen_ai.usage.prompt_tokens", 20)],
    [("gen_ai.usage.prompt_tokens", 20), ("gen_ai.usage.completion_tokens", "30")],
    [("http.route", 7), ("gen_ai.system", 1.5), ("gen_ai.request.model", True)],
    [("http.route", b"\x00\xfe"), ("gen_ai.system", [1, "a"]), ("gen_ai.request.model", (("k", 1),))],
    [("gen_ai.provider.name", "openai"), ("gen_ai.operation.name", "chat")],
    [("gen_ai.response.model", None), ("gen_ai.system", math.inf)],
]


@pytest.mark.parametrize("attributes", PROMOTED_CASES, ids=repr)
def test_promoted_columns(attributes: list[tuple[str, object]]) -> None:
    same(request_with({"attributes": attributes}))
    same(request_with({}, scope=attributes))  # a scope's attributes are not promoted


@pytest.mark.parametrize("value", ["svc", 42, 1.5, True, b"\x01", None, [1], (("a", 1),), "ü"], ids=repr)
def test_service_name_of_any_type(value: object) -> None:
    same(request_with({}, resource=[("service.name", "first"), ("service.name", value)]))
    same(request_with({}, scope=[("service.name", value)]))  # not the service: that is the resource's


def test_resource_without_service_name_or_attributes() -> None:
    same(request_with({}, resource=[]))
    same(request_with({}, resource=[("host.name", "h")]))


# ---------------------------------------------------------------------------------------------------
# Rejections and limits


BAD_IDS = [b"", bytes(16), b"\x01" * 15, b"\x01" * 17]


@pytest.mark.parametrize("trace_id", BAD_IDS, ids=repr)
def test_bad_trace_ids(trace_id: bytes) -> None:
    ok = same(request_with({"trace_id": trace_id}, {"span_id": b"\x02" * 8}))
    assert ok[2] == 1


@pytest.mark.parametrize("bad", [b"", bytes(8), b"\x01" * 7, b"\x01" * 9], ids=repr)
def test_bad_span_parent_and_link_ids(bad: bytes) -> None:
    same(request_with({"span_id": bad}))
    same(request_with({"parent_span_id": bad}))
    for link_ids in ((TRACE, bad), (bad + bad, SPAN), (bad, SPAN)):
        request = ExportTraceServiceRequest()
        span = add_span(request.resource_spans.add(), attributes=[("a", 1)])
        span.events.add().name = "kept only with its span"
        link = span.links.add()
        link.trace_id, link.span_id = link_ids
        same(request.SerializeToString())


def test_rejections_of_each_kind_and_the_message_tail() -> None:
    deep: list[object] = [1]
    for _ in range(5):
        deep = [deep]
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(rs.resource.attributes, {"service.name": "svc"})
    scope_spans = rs.scope_spans.add()
    cases: list[dict[str, Any]] = [
        {"trace_id": b""},
        {"span_id": bytes(8)},
        {"parent_span_id": b"\x01"},
        {"attributes": [(f"a{i}", i) for i in range(5)]},
        {"attributes": [("deep", deep)]},
        {},
        {"attributes": [("ok", 1)]},
    ]
    for fields in cases:
        fill_span(scope_spans.spans.add(), **fields)
    span = scope_spans.spans.add()
    fill_span(span)
    add_attributes(span.events.add().attributes, [(f"e{i}", i) for i in range(5)])
    span = scope_spans.spans.add()
    fill_span(span)
    add_attributes(span.events.add().attributes, [("deep", deep)])
    span = scope_spans.spans.add()
    fill_span(span)
    link = span.links.add()
    link.trace_id, link.span_id = TRACE, SPAN
    add_attributes(link.attributes, [("deep", deep)])
    payload = request.SerializeToString()
    limits = Limits(max_attributes=4, max_depth=4)
    ok = same(payload, limits)
    assert ok[2] == 8 and "(and 5 more)" in ok[3]
    same(payload, Limits(max_attributes=4, max_depth=16))


def test_resource_over_the_limits_rejects_each_of_its_spans() -> None:
    request = ExportTraceServiceRequest()
    over: list[list[tuple[str, object]]] = [[("a", 1), ("b", 2), ("c", 3)], [("deep", [[[1]]])], [("ok", 1)]]
    for r, attributes in enumerate(over):
        rs = request.resource_spans.add()
        add_attributes(rs.resource.attributes, [("service.name", f"s{r}"), *attributes])
        for s in range(2):
            scope_spans = rs.scope_spans.add()
            for p in range(2):
                fill_span(scope_spans.spans.add(), span_id=bytes([r + 1, s + 1, p + 1]) * 2 + b"xy")
    ok = same(request.SerializeToString(), Limits(max_attributes=3, max_depth=3))
    assert ok[2] == 8


def test_scope_over_the_limits_rejects_each_of_its_spans() -> None:
    request = ExportTraceServiceRequest()
    scopes: list[list[tuple[str, object]]] = [
        [("a", 1), ("b", 2.5), ("c", "x"), ("d", True)],  # too many
        [("deep", [[[1]]])],  # too deep
        [("ok", 1), ("list", [1, "a"])],
        [],
    ]
    for r in range(2):
        rs = request.resource_spans.add()
        add_attributes(rs.resource.attributes, [("service.name", f"s{r}")] + [("x", 1)] * (4 * r))
        for s, attributes in enumerate(scopes):
            scope_spans = rs.scope_spans.add()
            scope_spans.scope.name = f"scope{s}"
            add_attributes(scope_spans.scope.attributes, attributes)
            for p in range(2):
                span_id = bytes([r + 1, s + 1, p + 1]) * 2 + b"xy"
                fill_span(scope_spans.spans.add(), span_id=span_id, attributes=[("a", p), ("b", [p])])
    ok = same(request.SerializeToString(), Limits(max_attributes=3, max_depth=3))
    # scopes 0 and 1 of resource 0, and every span of resource 1 (its resource is over the limits)
    assert ok[2] == 4 + 8
    assert ok[3].startswith("rejected 12: resource_spans[0].scope_spans[0].scope: 4 attributes, more than")
    batch = ok[1]
    assert batch.column("scope_name").to_pylist() == ["scope2", "scope2", "scope3", "scope3"]
    assert batch.column("scope_attributes").to_pylist() == [[("ok", "1"), ("list", '[1,"a"]')]] * 2 + [[]] * 2
    assert (
        batch.column("scope_attribute_types").to_pylist()
        == [[("ok", "int"), ("list", "array")]] * 2 + [[]] * 2
    )


@pytest.mark.parametrize("max_attributes", [0, 1, 10, 11])
@pytest.mark.parametrize("max_depth", [0, 1, 2, 3])
def test_limits(max_attributes: int, max_depth: int) -> None:
    attributes: list[tuple[str, object]] = [*REALISTIC_ATTRIBUTES[:9], ("arr", [[1], []])]
    limits = Limits(max_attributes=max_attributes, max_depth=max_depth)
    same(request_with({"attributes": attributes}, {"attributes": []}, scope=[]), limits)
    same(request_with({"attributes": []}, scope=attributes), limits)


# ---------------------------------------------------------------------------------------------------
# The wire format: merges, oddities, unknown fields


def test_repeated_singular_fields_merge_like_protobuf() -> None:
    status = ld(15, ld(2, b"first") + vi(3, 2)) + ld(15, vi(3, 1)) + ld(15, b"")
    span = wire_span(
        vi(6, 1),
        vi(6, 3),
        ld(5, b"a"),
        ld(5, b"b"),
        f64(7, T0),
        f64(7, T0 + 1),
        ld(3, b"x"),
        ld(3, b""),
        status,
        vi(10, 2**32 + 7),
        f32(16, 0xFFFFFFFF),
        vi(12, 2**64 - 1),
        ld(2, b"\x09" * 8),  # a second span id replaces the first
    )
    resource = (
        ld(1, ld(1, b"service.name") + ld(2, ld(1, b"one")))
        + vi(2, 3)
        + ld(1, ld(1, b"service.name") + ld(2, vi(3, 2)))
    )
    scope = (
        ld(1, ld(1, b"lib") + ld(2, b"1") + ld(3, kv(b"a", ld(1, b"x"))))
        + ld(1, ld(2, b"2") + ld(3, kv(b"b", vi(3, 7))))
        + ld(2, span)
        + ld(1, ld(1, b"late") + ld(3, kv(b"a", vi(2, 1))))
    )
    same(ld(1, ld(1, resource) + ld(2, scope) + ld(1, ld(1, kv(b"extra", ld(1, b"x"))))))


@pytest.mark.parametrize(
    "value_fields",
    [
        [ld(1, b"s") + vi(3, 5)],  # oneof: the last member wins
        [vi(3, 5) + ld(1, b"s")],
        [ld(5, ld(1, vi(3, 1))) + ld(5, ld(1, vi(3, 2)))],  # the same message member merges
        [ld(5, ld(1, vi(3, 1))) + ld(1, b"s") + ld(5, ld(1, vi(3, 2)))],  # a switch in between resets
        [ld(6, kv(b"a", vi(3, 1))) + ld(5, b"")],
        [ld(1, b"a"), vi(3, 9)],  # the value field twice: the AnyValues merge
        [ld(5, ld(1, vi(3, 1))), ld(5, ld(1, vi(3, 2)))],
        [ld(1, b"a"), b""],
        [b"", b""],
        [vi(8, 3)],  # string_value_strindex: rendered as empty
        [ld(1, b"s") + vi(8, 3)],
        [vi(2, 2**64 - 1)],  # any non-zero varint is true
        [vi(3, 2**64 - 1)],
        [f64(4, 0x7FF8000000000001)],  # a NaN payload
        [f64(4, 0xFFF0000000000000)],
        [f64(4, 1)],  # subnormal
    ],
    ids=repr,
)
def test_anyvalue_oneof_and_merges(value_fields: list[bytes]) -> None:
    attributes = kv(b"http.route", *value_fields)
    span = wire_span(ld(9, attributes), ld(9, kv(b"http.response.status_code", *value_fields)))
    scope = ld(1, b"lib") + ld(3, kv(b"s", *value_fields))
    same(wire_request(span, resource=ld(1, kv(b"service.name", *value_fields)), scope=scope))


def test_keyvalue_without_key_or_value_and_key_strindex() -> None:
    odd = [b"", ld(2, ld(1, b"v")), ld(1, b"k") + vi(3, 4), ld(1, b"a") + ld(1, b"b")]
    span = wire_span(*(ld(9, pair) for pair in odd))
    same(wire_request(span, scope=b"".join(ld(3, pair) for pair in odd)))


UNKNOWN_FIELDS = {
    "varint": vi(1000, 2**64 - 1),
    "fixed64": f64(1001, 2**64 - 1),
    "len": ld(1002, b"\xff\xfe not utf-8"),
    "fixed32": f32(1003, 7),
    "group": group(1004, vi(1, 5) + ld(2, b"\xff") + group(7, f32(1, 1)) + f64(3, 9)),
    "empty group": group(19, b""),
    "max field number": vi(2**29 - 1, 1),
    "long tag": bytes([0x80 | (1005 << 3 & 0x7F), 0x80 | (1005 >> 4), 0x80, 0x80, 0x00]) + varint(1),
}


def request_for_injection() -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(rs.resource.attributes, {"service.name": "svc", "arr": [1, (("k", "v"),)]})
    rs.resource.entity_refs.add(type="service", id_keys=["service.name"])
    rs.schema_url = "u"
    span = add_span(rs, attributes=[("http.route", "/r"), ("n", 1), ("l", [1, [2]])], kind=2)
    add_attributes(rs.scope_spans[0].scope.attributes, {"lib": "x", "kv": (("k", [1]),)})
    span.status.code, span.status.message = Status.STATUS_CODE_OK, "m"
    event = span.events.add()
    event.name, event.time_unix_nano = "e", T0
    add_attributes(event.attributes, {"a": 1})
    link = span.links.add()
    link.trace_id, link.span_id, link.flags = TRACE, SPAN, 1
    add_attributes(link.attributes, {"b": (("x", 1),)})
    return request.SerializeToString()


MESSAGE_TYPES = sorted(
    {
        "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
        "opentelemetry.proto.trace.v1.ResourceSpans",
        "opentelemetry.proto.resource.v1.Resource",
        "opentelemetry.proto.common.v1.KeyValue",
        "opentelemetry.proto.common.v1.AnyValue",
        "opentelemetry.proto.common.v1.ArrayValue",
        "opentelemetry.proto.common.v1.KeyValueList",
        "opentelemetry.proto.common.v1.EntityRef",
        "opentelemetry.proto.trace.v1.ScopeSpans",
        "opentelemetry.proto.common.v1.InstrumentationScope",
        "opentelemetry.proto.trace.v1.Span",
        "opentelemetry.proto.trace.v1.Span.Event",
        "opentelemetry.proto.trace.v1.Span.Link",
        "opentelemetry.proto.trace.v1.Status",
    }
)


@pytest.mark.parametrize("where", ["head", "tail"])
@pytest.mark.parametrize("unknown", sorted(UNKNOWN_FIELDS))
@pytest.mark.parametrize("message", MESSAGE_TYPES, ids=lambda m: m.rsplit(".", 1)[-1])
def test_unknown_fields_are_skipped(message: str, unknown: str, where: str) -> None:
    extra = UNKNOWN_FIELDS[unknown]

    def inject(name: str) -> tuple[bytes, bytes]:
        if name != message:
            return b"", b""
        return (extra, b"") if where == "head" else (b"", extra)

    payload = reencode(request_for_injection(), ExportTraceServiceRequest.DESCRIPTOR, inject)
    assert payload != request_for_injection()
    ok = same(payload)
    assert ok[0] == "ok"


def wrong_wire_types(descriptor: Descriptor) -> bytes:
    """Every known field of `descriptor` once more with a wire type it does not have."""
    out = bytearray()
    for field in descriptor.fields:
        if field.type in (
            FieldDescriptor.TYPE_MESSAGE,
            FieldDescriptor.TYPE_STRING,
            FieldDescriptor.TYPE_BYTES,
        ):
            out += vi(field.number, 1) + f32(field.number, 1) + group(field.number, b"")
        elif field.type in (FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_DOUBLE):
            out += vi(field.number, 1) + f32(field.number, 1) + ld(field.number, b"\xff")
        elif field.type == FieldDescriptor.TYPE_FIXED32:
            out += vi(field.number, 1) + f64(field.number, 1) + ld(field.number, b"\xff")
        else:
            out += ld(field.number, b"\xff\xff") + f64(field.number, 1) + f32(field.number, 1)
    return bytes(out)


@pytest.mark.parametrize("message", MESSAGE_TYPES, ids=lambda m: m.rsplit(".", 1)[-1])
def test_known_fields_with_the_wrong_wire_type_are_skipped(message: str) -> None:
    def inject(name: str) -> tuple[bytes, bytes]:
        if name != message:
            return b"", b""
        descriptor = _descriptors()[name]
        return wrong_wire_types(descriptor), wrong_wire_types(descriptor)

    same(reencode(request_for_injection(), ExportTraceServiceRequest.DESCRIPTOR, inject))


def _descriptors() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(descriptor: Descriptor) -> None:
        if descriptor.full_name in found:
            return
        found[descriptor.full_name] = descriptor
        for field in descriptor.fields:
            if field.message_type is not None:
                walk(field.message_type)

    walk(ExportTraceServiceRequest.DESCRIPTOR)
    return found


def test_the_message_types_listed_are_all_of_them() -> None:
    assert sorted(_descriptors()) == MESSAGE_TYPES


# ---------------------------------------------------------------------------------------------------
# Malformed bytes


MALFORMED = [
    b"\x0a",  # a length missing
    b"\x0a\x05abc",  # a length past the end
    b"\x08",  # a varint missing
    b"\x08\x80",  # a truncated varint
    b"\x08" + b"\x80" * 10 + b"\x01",  # an 11-byte varint
    b"\x09\x00\x00",  # a short fixed64
    b"\x0d\x00",  # a short fixed32
    b"\x00\x01",  # field number 0
    b"\x02\x00",  # field number 0, length-delimited
    b"\x03\x04",  # a group with field number 0
    b"\x0e",  # wire type 6
    b"\x0f",  # wire type 7
    b"\x0c",  # an end-group tag with no group
    b"\x0b",  # a group never closed
    b"\x0b\x14",  # a group closed by another number
    b"\x80\x80\x80\x80\x80\x01\x00",  # a tag over 5 bytes and 32 bits
    b"\x88\x80\x80\x80\x80\x00\x01",  # a tag over 5 bytes (field 1, varint, padded)
    b"\xf8\xff\xff\xff\x1f\x00",  # a tag over 32 bits
    b"\x0a\xff\xff\xff\xff\x07" + b"\x00" * 8,  # a length at INT32_MAX
    ld(1, ld(2, ld(2, ld(5, b"\xff")))),  # invalid UTF-8 in a span name
    ld(1, ld(2, ld(2, wire_span(ld(9, kv(b"k", ld(1, b"\xed\xa0\x80"))))))),  # a surrogate
    ld(1, ld(2, ld(2, wire_span(ld(9, kv(b"\xc0\xaf", ld(1, b"v"))))))),  # an overlong key
    ld(1, ld(2, ld(2, wire_span(ld(9, kv(b"k", ld(1, b"\xf4\x90\x80\x80"))))))),  # past U+10FFFF
    ld(1, ld(3, b"\xe2\x82")),  # a truncated sequence in ResourceSpans.schema_url
    ld(1, ld(1, ld(3, ld(3, b"\xff")))),  # in EntityRef.id_keys
    ld(1, ld(2, ld(1, ld(3, kv(b"k", ld(1, b"\x80")))))),  # in a scope attribute
    ld(1, ld(2, ld(2, wire_span(ld(11, ld(2, b"\xff")))))),  # in an event name
    ld(1, ld(2, ld(2, wire_span(ld(15, ld(2, b"\xff")))))),  # in a status message
    ld(1, ld(2, ld(2, wire_span(ld(9, kv(b"k", ld(6, ld(1, kv(b"\xff", b""))))))))),  # deep in a kvlist
    ld(1, ld(2, ld(2, wire_span(ld(9, b"\x0a\x05ab"))))),  # a field crossing its message's end
    ld(1, ld(2, ld(2, wire_span(group(200, b"")[:-1])))),  # a truncated end-group tag
    ld(1, tag(5, 4)),  # an end-group inside a length-delimited message
]


@pytest.mark.parametrize("payload", MALFORMED, ids=repr)
def test_malformed_bytes_are_a_permanent_error(payload: bytes) -> None:
    failed = same(payload)
    assert failed[0] == "permanent"
    assert failed[1].startswith("malformed protobuf ExportTraceServiceRequest: ")


def nested(depth: int) -> bytes:
    value = vi(3, 1)
    for _ in range(depth):
        value = ld(5, ld(1, value))
    return value


@pytest.mark.parametrize("depth", [46, 47, 48])
@pytest.mark.parametrize("owner", ["span", "event", "scope"])
def test_nesting_at_the_protobuf_depth_limit(depth: int, owner: str) -> None:
    # levels: ResourceSpans 1, ScopeSpans 2, Span or InstrumentationScope 3, [Event 4,] KeyValue,
    # AnyValue, then 2 per array
    attribute = kv(b"k", nested(depth))
    if owner == "scope":
        same(wire_request(wire_span(), scope=ld(3, attribute)), Limits(max_depth=200))
        return
    span = wire_span(ld(9, attribute) if owner == "span" else ld(11, ld(3, attribute)))
    same(wire_request(span), Limits(max_depth=200))


@pytest.mark.parametrize("depth", [98, 99, 100, 101])
def test_group_nesting_at_the_protobuf_depth_limit(depth: int) -> None:
    body = b""
    for _ in range(depth):
        body = group(7, body)
    same(body)
    same(ld(1, body))


def small_request() -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(rs.resource.attributes, {"service.name": "svc"})
    span = add_span(rs, attributes=[("http.route", "/a/ü"), ("n", -3), ("arr", [1, "x"])], kind=3)
    add_attributes(rs.scope_spans[0].scope.attributes, {"lib": "x", "v": 2})
    event = span.events.add()
    event.name = "e"
    add_attributes(event.attributes, {"x": 1.5})
    link = span.links.add()
    link.trace_id, link.span_id = TRACE, SPAN
    span.status.message = "st"
    return request.SerializeToString()


def test_every_truncation() -> None:
    payload = small_request()
    outcomes = {same(payload[:end])[0] for end in range(len(payload) + 1)}
    assert outcomes == {"ok", "permanent"}


def byte_flips(payload: bytes, count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(payload)
        for _ in range(rng.choice((1, 1, 2, 3))):
            position = rng.randrange(len(data))
            data[position] = rng.choice((rng.randrange(256), data[position] ^ (1 << rng.randrange(8))))
        yield bytes(data)


def test_random_byte_flips() -> None:
    outcomes: dict[str, int] = {}
    for payload in byte_flips(small_request(), 3000, seed=1):
        kind = same(payload)[0]
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("ok", 0) > 100 and outcomes.get("permanent", 0) > 100


def test_byte_flips_in_a_realistic_request() -> None:
    for payload in byte_flips(realistic_request(spans=20, services=2), 300, seed=2):
        same(payload)


@given(st.binary(max_size=64))
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes(payload: bytes) -> None:
    same(payload)


# ---------------------------------------------------------------------------------------------------
# Requests the native converter leaves to the Python one (times outside int64, which the oracle
# rejects), and int64 columns' values outside int64, which both store as NULL


@pytest.mark.parametrize(
    ("fields", "deferred"),
    [
        ({"start": 2**63}, True),
        ({"end": 2**64 - 1}, True),
        ({"start": 2**63 - 1, "end": 0}, False),
        # an int64 column's value outside int64 is NULL in both, not deferred
        ({"attributes": [("http.response.status_code", 1e19)]}, False),
        ({"attributes": [("http.response.status_code", 2.0**63)]}, False),  # the first double past it
        ({"attributes": [("http.response.status_code", -(2.0**63))]}, False),  # int64's minimum
        ({"attributes": [("http.response.status_code", -9.2e18)]}, False),
        ({"attributes": [("http.response.status_code", "9" * 30)]}, False),
        ({"attributes": [("http.response.status_code", str(2**63))]}, False),
        ({"attributes": [("http.response.status_code", str(-(2**63)))]}, False),
        ({"attributes": [("http.response.status_code", [2**63 - 1])]}, False),
    ],
    ids=repr,
)
def test_deferred_to_python(fields: dict[str, Any], deferred: bool) -> None:
    same(request_with(fields), deferred=deferred)


def test_event_time_past_int64_defers_only_for_kept_spans() -> None:
    request = ExportTraceServiceRequest()
    span = add_span(request.resource_spans.add(), trace_id=b"")  # rejected: its event never counts
    span.events.add().time_unix_nano = 2**64 - 1
    same(request.SerializeToString())
    span.trace_id = TRACE
    same(request.SerializeToString(), deferred=True)


def test_dispatch_uses_the_native_converter_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("", native.convert), ("0", native.convert), ("1", None)):
        monkeypatch.setenv(spans_module.PURE_PYTHON_ENV, value)
        assert spans_module._load_native() is expected
    loaded = spans_module._native_convert
    assert loaded is native.convert or os.environ.get(spans_module.PURE_PYTHON_ENV, "") not in ("", "0")
    payload = realistic_request(spans=10, services=2)
    assert spans_to_arrow(payload).batch.equals(spans_to_arrow_python(payload).batch)


# ---------------------------------------------------------------------------------------------------
# Random requests


KEYS = st.sampled_from(
    [
        "service.name",
        "http.route",
        "http.request.method",
        "http.method",
        "http.response.status_code",
        "http.status_code",
        "gen_ai.usage.input_tokens",
        "gen_ai.system",
        "k",
        "",
        "ü",
    ]
) | st.text(max_size=6)
SCALARS = (
    st.text(max_size=8)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.binary(max_size=6)
    | st.none()
    | st.sampled_from(["200", " 42", "x", "1e3"])
)
VALUES_ST = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.lists(st.tuples(KEYS, inner), max_size=3).map(tuple),
    max_leaves=6,
)
ATTRIBUTES_ST = st.lists(st.tuples(KEYS, VALUES_ST), max_size=5)
IDS = st.sampled_from([b"", bytes(8), bytes(16), b"\x01" * 5]) | st.binary(min_size=16, max_size=16)
SPAN_IDS = st.sampled_from([b"", bytes(8), b"\x02" * 3]) | st.binary(min_size=8, max_size=8)
TIMES = st.integers(0, 2**63 - 1) | st.sampled_from([0, T0, 2**63, 2**64 - 1])
UINT32 = st.integers(0, 2**32 - 1)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rs = request.resource_spans.add()
        add_attributes(rs.resource.attributes, draw(ATTRIBUTES_ST))
        for _ in range(draw(st.integers(0, 2))):
            scope_spans = rs.scope_spans.add()
            scope_spans.scope.name = draw(st.text(max_size=5))
            scope_spans.scope.version = draw(st.text(max_size=3))
            add_attributes(scope_spans.scope.attributes, draw(ATTRIBUTES_ST))
            for _ in range(draw(st.integers(0, 3))):
                span = scope_spans.spans.add()
                span.trace_id, span.span_id = draw(IDS), draw(SPAN_IDS)
                span.parent_span_id = draw(SPAN_IDS)
                span.name, span.trace_state = draw(st.text(max_size=6)), draw(st.text(max_size=4))
                span.kind = Span.SpanKind.ValueType(draw(st.integers(-2, 7)))
                span.flags = draw(UINT32)
                span.start_time_unix_nano, span.end_time_unix_nano = draw(TIMES), draw(TIMES)
                span.dropped_attributes_count = draw(UINT32)
                add_attributes(span.attributes, draw(ATTRIBUTES_ST))
                span.status.code = Status.StatusCode.ValueType(draw(st.integers(-1, 3)))
                span.status.message = draw(st.text(max_size=4))
                for _ in range(draw(st.integers(0, 2))):
                    event = span.events.add()
                    event.name, event.time_unix_nano = draw(st.text(max_size=4)), draw(TIMES)
                    add_attributes(event.attributes, draw(ATTRIBUTES_ST))
                for _ in range(draw(st.integers(0, 2))):
                    link = span.links.add()
                    link.trace_id, link.span_id = draw(IDS), draw(SPAN_IDS)
                    link.flags, link.trace_state = draw(UINT32), draw(st.text(max_size=3))
                    add_attributes(link.attributes, draw(ATTRIBUTES_ST))
    return request.SerializeToString()


LIMITS_ST = st.builds(Limits, max_attributes=st.integers(0, 6), max_depth=st.integers(0, 5)) | st.just(
    DEFAULT
)


@given(requests(), LIMITS_ST)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_requests(payload: bytes, limits: Limits) -> None:
    same(payload, limits)


@given(requests(), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_requests_cut_and_flipped(payload: bytes, data: st.DataObject) -> None:
    if not payload:
        return
    cut = data.draw(st.integers(0, len(payload)))
    same(payload[:cut])
    flipped = bytearray(payload)
    position = data.draw(st.integers(0, len(payload) - 1))
    flipped[position] = data.draw(st.integers(0, 255))
    same(bytes(flipped))


def test_output_types_are_exactly_the_schema() -> None:
    batch = run_native(realistic_request(spans=4, services=1)).batch
    assert batch.schema == SPANS
    assert all(isinstance(column, pa.Array) for column in batch.columns)
