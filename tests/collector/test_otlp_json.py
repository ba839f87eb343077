"""OTLP/JSON decoding: golden request files, round trips, and the errors bad bodies get."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from mallard.collector.errors import PermanentError
from mallard.collector.otlp_json import decode_json, encode_json

GOLDEN = Path(__file__).parent.parent / "testdata" / "otlp_json"
GOLDEN_FILES = [
    ("traces", "traces_anyvalue.json"),
    ("traces", "traces_edge_cases.json"),
    ("metrics", "metrics_all_types.json"),
    ("logs", "logs_all.json"),
]

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
CHECKOUT_SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PAYMENTS_SPAN_ID = bytes.fromhex("53995c3f42cd8ad8")
LINKED_TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
LINKED_SPAN_ID = bytes.fromhex("b7ad6b7169203331")


def _golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def _attributes(key_values: Iterable[KeyValue]) -> dict[str, AnyValue]:
    return {kv.key: kv.value for kv in key_values}


def _strings(key_values: Iterable[KeyValue]) -> dict[str, str]:
    return {key: value.string_value for key, value in _attributes(key_values).items()}


# --- golden files ---------------------------------------------------------------------


def test_traces_anyvalue_golden_decodes_every_field() -> None:
    request = decode_json("traces", _golden("traces_anyvalue.json"))

    checkout, payments = request.resource_spans
    assert _strings(checkout.resource.attributes) == {
        "service.name": "checkout",
        "service.version": "2.4.1",
        "deployment.environment.name": "production",
        "telemetry.sdk.language": "python",
    }
    (scope_spans,) = checkout.scope_spans
    assert scope_spans.scope.name == "opentelemetry.instrumentation.fastapi"
    assert scope_spans.scope.version == "0.66b2"
    assert _strings(scope_spans.scope.attributes) == {"instrumentation.provider": "opentelemetry"}
    assert scope_spans.schema_url == "https://opentelemetry.io/schemas/1.37.0"

    (span,) = scope_spans.spans
    assert span.trace_id == TRACE_ID
    assert span.span_id == CHECKOUT_SPAN_ID
    assert span.parent_span_id == b""
    assert span.trace_state == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert span.flags == 0x101
    assert span.name == "POST /api/checkout"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1_717_171_717_000_000_000
    assert span.end_time_unix_nano == 1_717_171_717_250_000_000
    assert span.dropped_attributes_count == 2
    assert span.dropped_events_count == 4
    assert span.dropped_links_count == 0
    assert span.status.code == 2
    assert span.status.message == "payment declined: insufficient funds"

    attributes = _attributes(span.attributes)
    assert list(attributes) == [
        "http.request.method",
        "http.response.status_code",
        "app.order.sequence",
        "app.inventory.delta",
        "app.cart.total",
        "app.cart.items",
        "app.feature.express_checkout",
        "app.cache.hit",
        "app.payload.digest",
        "app.cart.tags",
        "app.customer",
        "app.coupon",
    ]
    assert attributes["http.request.method"].string_value == "POST"
    assert attributes["http.response.status_code"].int_value == 402
    big = attributes["app.order.sequence"]
    assert big.WhichOneof("value") == "int_value"
    assert big.int_value == 9_007_199_254_740_993  # 2**53 + 1: not representable as a double
    assert attributes["app.inventory.delta"].int_value == -42
    assert attributes["app.cart.total"].double_value == 129.95
    items = attributes["app.cart.items"]
    assert items.WhichOneof("value") == "double_value"
    assert items.double_value == 3.0
    assert attributes["app.feature.express_checkout"].bool_value is True
    cache_hit = attributes["app.cache.hit"]
    assert cache_hit.WhichOneof("value") == "bool_value"  # false is still set
    assert cache_hit.bool_value is False
    assert attributes["app.payload.digest"].bytes_value == bytes.fromhex("deadbeef")

    tags = attributes["app.cart.tags"].array_value.values
    assert [value.WhichOneof("value") for value in tags] == [
        "string_value",
        "int_value",
        "bool_value",
        "double_value",
        "array_value",
    ]
    assert tags[0].string_value == "gift"
    assert tags[1].int_value == 3
    assert tags[2].bool_value is True
    assert tags[3].double_value == 1.25
    nested = tags[4].array_value.values
    assert [nested[0].string_value, nested[1].int_value] == ["nested", 7]

    customer = _attributes(attributes["app.customer"].kvlist_value.values)
    assert customer["tier"].string_value == "gold"
    assert customer["lifetime_orders"].int_value == 57
    address = _strings(customer["address"].kvlist_value.values)
    assert address == {"country": "NL", "postcode": "1012 AB"}

    coupon = attributes["app.coupon"]
    assert span.attributes[11].HasField("value")
    assert coupon.WhichOneof("value") is None
    assert coupon == AnyValue()

    reserved, exception = span.events
    assert reserved.name == "inventory.reserved"
    assert reserved.time_unix_nano == 1_717_171_717_050_000_000
    reserved_attributes = _attributes(reserved.attributes)
    assert reserved_attributes["app.sku.count"].int_value == 3
    assert reserved_attributes["app.warehouse"].string_value == "AMS-2"
    assert exception.name == "exception"
    assert exception.time_unix_nano == 1_717_171_717_240_000_000
    assert exception.dropped_attributes_count == 1
    assert _strings(exception.attributes) == {
        "exception.type": "PaymentDeclined",
        "exception.message": "card_declined: insufficient funds",
    }

    (link,) = span.links
    assert link.trace_id == LINKED_TRACE_ID
    assert link.span_id == LINKED_SPAN_ID
    assert link.trace_state == "congo=ucfJifl5GOE"
    assert _strings(link.attributes) == {"messaging.message.id": "msg-8812"}
    assert link.dropped_attributes_count == 1
    assert link.flags == 0x301

    assert _strings(payments.resource.attributes) == {
        "service.name": "payments",
        "telemetry.sdk.language": "go",
    }
    assert payments.schema_url == "https://opentelemetry.io/schemas/1.26.0"
    (payments_scope,) = payments.scope_spans
    assert payments_scope.scope.name == "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
    (child,) = payments_scope.spans
    assert child.trace_id == TRACE_ID
    assert child.span_id == PAYMENTS_SPAN_ID
    assert child.parent_span_id == CHECKOUT_SPAN_ID  # the parent lives in the other service
    assert child.flags == 0x301
    assert child.kind == Span.SPAN_KIND_SERVER
    assert child.start_time_unix_nano == 1_717_171_717_120_000_000
    assert child.end_time_unix_nano == 1_717_171_717_230_000_000
    assert _attributes(child.attributes)["http.response.status_code"].int_value == 402
    assert (child.status.code, child.status.message) == (2, "card_declined")


def test_traces_edge_cases_golden() -> None:
    request = decode_json("traces", _golden("traces_edge_cases.json"))

    anonymous, no_service = request.resource_spans
    assert anonymous.HasField("resource")
    assert len(anonymous.resource.attributes) == 0
    (scope_spans,) = anonymous.scope_spans
    assert scope_spans.HasField("scope")
    assert scope_spans.scope.name == ""
    (root,) = scope_spans.spans
    assert root.trace_id == bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert root.span_id == bytes.fromhex("00f067aa0ba902b7")
    assert root.parent_span_id == b""
    assert root.name == "查询订单 🛒"
    assert root.kind == Span.SPAN_KIND_INTERNAL
    assert _strings(root.attributes) == {
        "用户.名称": "张伟",
        "emoji.🔥": "🚀✨",
        "escaped.surrogate_pair": "\U0001f600",
        "text.combining": "Cafe\u0301 man\u0303ana",
    }
    combining = _strings(root.attributes)["text.combining"]
    assert len(combining) == len("Cafe\u0301 man\u0303ana") == 13  # not normalised

    attributes = _attributes(no_service.resource.attributes)
    assert "service.name" not in attributes
    assert attributes["host.name"].string_value == "worker-7"
    # an int64 given as a JSON number
    assert attributes["process.pid"].int_value == 4242
    (scope_spans,) = no_service.scope_spans
    assert not scope_spans.HasField("scope")
    child, other_root = scope_spans.spans
    assert child.trace_id == root.trace_id  # mixed-case hex of the same id
    assert child.span_id == bytes.fromhex("a3ce929d0e0e4736")
    assert child.parent_span_id == root.span_id
    assert child.name == "Cafe\u0301 ☕ résumé"
    assert child.kind == Span.SPAN_KIND_CLIENT
    assert child.start_time_unix_nano == 1_717_171_800_000_100_000  # exact above 2**53
    assert child.end_time_unix_nano == 1_717_171_800_000_400_000
    assert child.HasField("status")
    assert child.status.code == 0
    assert other_root.trace_id == bytes(14) + b"\xab\xcd"
    assert other_root.span_id == b"\xff" * 8
    assert other_root.parent_span_id == b""
    assert other_root.name == ""
    assert other_root.end_time_unix_nano - other_root.start_time_unix_nano == 1


def test_metrics_all_types_golden() -> None:
    request = decode_json("metrics", _golden("metrics_all_types.json"))

    (resource_metrics,) = request.resource_metrics
    assert _strings(resource_metrics.resource.attributes)["service.name"] == "inventory"
    (scope_metrics,) = resource_metrics.scope_metrics
    assert (scope_metrics.scope.name, scope_metrics.scope.version) == (
        "inventory.metrics",
        "1.2.0",
    )
    metrics = {metric.name: metric for metric in scope_metrics.metrics}
    assert [metrics[name].WhichOneof("data") for name in metrics] == [
        "gauge",
        "gauge",
        "sum",
        "sum",
        "histogram",
        "exponential_histogram",
        "summary",
    ]

    utilization = metrics["system.memory.utilization"]
    assert utilization.description == "Fraction of memory in use."
    assert utilization.unit == "1"
    used, free = utilization.gauge.data_points
    assert used.WhichOneof("value") == "as_double"
    assert used.as_double == 0.6180339887
    assert _strings(used.attributes) == {"system.memory.state": "used"}
    assert used.time_unix_nano == 1_717_171_760_000_000_000
    assert used.start_time_unix_nano == 0
    assert free.as_double == 0.3819660113

    (threads,) = metrics["process.thread.count"].gauge.data_points
    assert metrics["process.thread.count"].unit == "{thread}"
    assert threads.WhichOneof("value") == "as_int"
    assert threads.as_int == 42
    assert threads.start_time_unix_nano == 1_717_171_700_000_000_000

    orders = metrics["orders.processed"].sum
    assert orders.aggregation_temporality == 2  # cumulative
    assert orders.is_monotonic is True
    (point,) = orders.data_points
    assert point.as_int == 1_234_567
    assert _strings(point.attributes) == {"order.channel": "web"}

    stock = metrics["inventory.stock.change"].sum
    assert stock.aggregation_temporality == 1  # delta
    assert stock.is_monotonic is False
    change, no_value = stock.data_points
    assert change.as_int == -17
    assert change.flags == 0
    assert no_value.WhichOneof("value") is None
    assert no_value.flags == 1  # FLAG_NO_RECORDED_VALUE

    duration = metrics["http.server.request.duration"]
    assert duration.unit == "s"
    assert duration.histogram.aggregation_temporality == 2
    (histogram,) = duration.histogram.data_points
    assert histogram.count == 12
    assert histogram.sum == 3.83
    assert list(histogram.bucket_counts) == [2, 5, 3, 1, 1, 0]
    assert list(histogram.explicit_bounds) == [0.05, 0.1, 0.25, 0.5, 1.0]
    assert (histogram.min, histogram.max) == (0.012, 0.87)
    assert histogram.HasField("min") and histogram.HasField("max")
    slow, fast = histogram.exemplars
    assert slow.trace_id == TRACE_ID
    assert slow.span_id == CHECKOUT_SPAN_ID
    assert slow.as_double == 0.87
    assert slow.time_unix_nano == 1_717_171_742_123_000_000
    assert _strings(slow.filtered_attributes) == {"user.id": "u-1138"}
    assert fast.trace_id == LINKED_TRACE_ID  # upper-case hex
    assert fast.span_id == PAYMENTS_SPAN_ID
    assert fast.as_double == 0.012

    skew = metrics["clock.skew"].exponential_histogram
    assert skew.aggregation_temporality == 1
    (exponential,) = skew.data_points
    assert exponential.count == 15
    assert exponential.sum == 25.5
    assert exponential.scale == 3
    assert exponential.zero_count == 2
    assert exponential.zero_threshold == 1e-9
    assert exponential.positive.offset == 10
    assert list(exponential.positive.bucket_counts) == [1, 4, 3, 2]
    assert exponential.negative.offset == -3
    assert list(exponential.negative.bucket_counts) == [1, 2]
    assert (exponential.min, exponential.max) == (-0.9, 3.3)
    assert exponential.flags == 0
    (exemplar,) = exponential.exemplars
    assert exemplar.WhichOneof("value") == "as_int"
    assert exemplar.as_int == 3
    assert exemplar.trace_id == LINKED_TRACE_ID
    assert exemplar.span_id == LINKED_SPAN_ID

    (summary,) = metrics["db.query.latency"].summary.data_points
    assert summary.count == 100
    assert summary.sum == 2510.5
    assert summary.flags == 1
    assert [(q.quantile, q.value) for q in summary.quantile_values] == [
        (0.0, 1.2),
        (0.5, 18.75),
        (0.99, 120.0),
        (1.0, 340.5),
    ]


def test_logs_all_golden() -> None:
    request = decode_json("logs", _golden("logs_all.json"))

    (resource_logs,) = request.resource_logs
    assert _strings(resource_logs.resource.attributes) == {
        "service.name": "checkout",
        "service.version": "2.4.1",
    }
    assert resource_logs.schema_url == "https://opentelemetry.io/schemas/1.37.0"
    (scope_logs,) = resource_logs.scope_logs
    assert scope_logs.scope.name == "checkout.orders"
    placed, failed, retrying, legacy = scope_logs.log_records

    assert placed.time_unix_nano == 1_717_171_717_100_000_000
    assert placed.observed_time_unix_nano == 1_717_171_717_100_200_000
    assert placed.severity_number == 9  # INFO
    assert placed.severity_text == "INFO"
    assert placed.body.string_value == "order 1234 placed"
    placed_attributes = _attributes(placed.attributes)
    assert placed_attributes["app.order.id"].int_value == 1234
    assert placed_attributes["code.function.name"].string_value == "place_order"
    assert placed.flags == 1
    assert placed.trace_id == TRACE_ID
    assert placed.span_id == CHECKOUT_SPAN_ID
    assert placed.event_name == ""

    assert failed.severity_number == 17  # ERROR
    assert failed.severity_text == "ERROR"
    assert failed.event_name == "payment.failed"
    body = _attributes(failed.body.kvlist_value.values)
    assert body["reason"].string_value == "card_declined"
    assert body["amount"].double_value == 129.95
    assert _strings(body["card"].kvlist_value.values) == {
        "brand": "visa",
        "last4": "4242",
    }
    assert _strings(failed.attributes) == {"exception.type": "PaymentDeclined"}
    assert failed.dropped_attributes_count == 3
    assert failed.trace_id == TRACE_ID  # upper-case hex
    assert failed.span_id == PAYMENTS_SPAN_ID

    assert retrying.severity_number == 5  # DEBUG
    values = retrying.body.array_value.values
    assert values[0].string_value == "retrying"
    assert values[1].int_value == 2
    assert values[2].WhichOneof("value") == "bool_value"
    assert values[2].bool_value is False
    assert [v.double_value for v in values[3].array_value.values] == [0.25, 0.5]
    assert retrying.trace_id == b"" and retrying.span_id == b""

    assert legacy.time_unix_nano == 0
    assert legacy.observed_time_unix_nano == 1_717_171_718_000_000_000
    assert legacy.severity_number == 13  # WARN
    assert legacy.body.WhichOneof("value") == "int_value"
    assert legacy.body.int_value == -9_007_199_254_740_993
    assert _strings(legacy.attributes) == {"log.file.name": "legacy.log"}


@pytest.mark.parametrize(("signal", "name"), GOLDEN_FILES)
def test_golden_round_trips(signal: str, name: str) -> None:
    message = decode_json(signal, _golden(name))
    assert decode_json(signal, encode_json(message)) == message


def test_encode_json_writes_otlp_json() -> None:
    message = decode_json("traces", _golden("traces_anyvalue.json"))
    tree = json.loads(encode_json(message))
    span = tree["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "5b8efff798038103d269b633813fc60c"
    assert span["spanId"] == "eee19b7ec3c1b174"
    assert "parentSpanId" not in span
    assert span["kind"] == 2
    assert span["status"] == {
        "code": 2,
        "message": "payment declined: insufficient funds",
    }
    assert span["links"][0]["traceId"] == "0af7651916cd43dd8448eb211c80319c"
    assert span["startTimeUnixNano"] == "1717171717000000000"
    digest = next(a for a in span["attributes"] if a["key"] == "app.payload.digest")
    assert digest["value"] == {"bytesValue": "3q2+7w=="}  # other bytes stay base64


# --- property tests -------------------------------------------------------------------

_SCALARS: st.SearchStrategy[AnyValue] = st.one_of(
    st.text().map(lambda s: AnyValue(string_value=s)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats(allow_nan=False).map(lambda d: AnyValue(double_value=d)),
    st.binary().map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()),
)


def _any_values(depth: int) -> st.SearchStrategy[AnyValue]:
    if depth == 0:
        return _SCALARS
    inner = _any_values(depth - 1)
    return st.one_of(
        _SCALARS,
        st.lists(inner, max_size=4).map(lambda values: AnyValue(array_value=ArrayValue(values=values))),
        st.lists(_key_values(inner), max_size=4).map(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=kvs))
        ),
    )


def _key_values(values: st.SearchStrategy[AnyValue]) -> st.SearchStrategy[KeyValue]:
    return st.builds(KeyValue, key=st.text(), value=values)


_ATTRIBUTES = st.lists(_key_values(_any_values(3)), max_size=5)
_TRACE_IDS = st.binary(min_size=16, max_size=16)
_SPAN_IDS = st.binary(min_size=8, max_size=8)


@st.composite
def _spans(draw: st.DrawFn) -> Span:
    return Span(
        trace_id=draw(_TRACE_IDS),
        span_id=draw(_SPAN_IDS),
        parent_span_id=draw(st.one_of(st.just(b""), _SPAN_IDS)),
        name=draw(st.text()),
        kind=draw(st.sampled_from(Span.SpanKind.values())),
        start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        attributes=draw(_ATTRIBUTES),
        links=draw(
            st.lists(
                st.builds(
                    Span.Link,
                    trace_id=_TRACE_IDS,
                    span_id=_SPAN_IDS,
                    attributes=_ATTRIBUTES,
                ),
                max_size=2,
            )
        ),
    )


@settings(deadline=None, max_examples=200)
@given(st.lists(_spans(), min_size=1, max_size=3))
def test_random_spans_round_trip(spans: list[Span]) -> None:
    message = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
    assert decode_json("traces", encode_json(message)) == message


@settings(deadline=None, max_examples=100)
@given(
    st.builds(
        LogRecord,
        trace_id=_TRACE_IDS,
        span_id=_SPAN_IDS,
        body=_any_values(3),
        attributes=_ATTRIBUTES,
        observed_time_unix_nano=st.integers(0, 2**64 - 1),
    )
)
def test_random_log_records_round_trip(record: LogRecord) -> None:
    message = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(scope_logs=[ScopeLogs(log_records=[record])])]
    )
    assert decode_json("logs", encode_json(message)) == message


# --- lenient where the mapping allows -------------------------------------------------


def _one_span(span: dict[str, object]) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def test_unknown_fields_are_ignored() -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [], "entityRefs": [{"type": "k8s.pod"}]},
                "futureField": {"traceId": "not hex at all"},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "brandNewField": 17,
                                "links": [
                                    {
                                        "traceId": "0af7651916cd43dd8448eb211c80319c",
                                        "spanId": "b7ad6b7169203331",
                                        "parentSpanId": "zz",  # not a Link field: ignored
                                    }
                                ],
                            }
                        ]
                    }
                ],
            }
        ],
        "unknownTopLevel": [1, 2, 3],
    }
    request = decode_json("traces", json.dumps(body).encode())
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert span.trace_id == TRACE_ID
    assert span.links[0].span_id == LINKED_SPAN_ID


def test_enum_names_are_accepted() -> None:
    body = _one_span({"kind": "SPAN_KIND_CLIENT", "status": {"code": "STATUS_CODE_OK"}})
    (span,) = decode_json("traces", body).resource_spans[0].scope_spans[0].spans
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert span.status.code == 1


def test_snake_case_names_are_accepted() -> None:
    snake = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": "5b8efff798038103d269b633813fc60c",
                                "span_id": "53995c3f42cd8ad8",
                                "parent_span_id": "eee19b7ec3c1b174",
                                "start_time_unix_nano": "1717171717120000000",
                                "dropped_attributes_count": 1,
                            }
                        ]
                    }
                ]
            }
        ]
    }
    camel = _one_span(
        {
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "53995c3f42cd8ad8",
            "parentSpanId": "eee19b7ec3c1b174",
            "startTimeUnixNano": 1717171717120000000,
            "droppedAttributesCount": "1",
        }
    )
    decoded = decode_json("traces", json.dumps(snake).encode())
    assert decoded == decode_json("traces", camel)
    assert decoded.resource_spans[0].scope_spans[0].spans[0].parent_span_id == CHECKOUT_SPAN_ID


def test_empty_object_is_an_empty_request() -> None:
    assert decode_json("metrics", b"{}") == decode_json("metrics", b'{"x": null}')
    assert decode_json("logs", b'{"resourceLogs": null}') == ExportLogsServiceRequest()


# --- errors ---------------------------------------------------------------------------

_SPAN_PATH = "resourceSpans[0].scopeSpans[0].spans[0]"


@pytest.mark.parametrize(
    ("signal", "body", "expected"),
    [
        ("traces", b'{"resourceSpans": [', "invalid JSON"),
        ("traces", b"\xff\xfe\x00", "invalid JSON"),
        ("traces", b"[" * 100_000, "invalid JSON"),
        ("traces", b"[]", "expected a JSON object at the top level, got an array"),
        ("logs", b'"hello"', "expected a JSON object at the top level, got a string"),
        ("traces", b'{"resourceSpans": {}}', "resourceSpans: expected an array"),
        (
            "traces",
            b'{"resourceSpans": [{"scopeSpans": [7]}]}',
            "resourceSpans[0].scopeSpans[0]: expected an object, got a number",
        ),
        (
            "traces",
            _one_span({"traceId": "zz" * 16}),
            f"{_SPAN_PATH}.traceId: not a hex string",
        ),
        (
            "traces",
            _one_span({"spanId": "eee19b7ec3c1b17"}),
            f"{_SPAN_PATH}.spanId: odd number of hex digits",
        ),
        (
            "traces",
            _one_span({"spanId": "7uGbfsPBsXQ="}),
            f"{_SPAN_PATH}.spanId: not a hex string (OTLP/JSON ids are hex, not base64)",
        ),
        ("traces", _one_span({"parentSpanId": 42}), f"{_SPAN_PATH}.parentSpanId"),
        (
            "traces",
            _one_span({"links": [{"traceId": "0af7651916cd43dd8448eb211c8031 9c"}]}),
            f"{_SPAN_PATH}.links[0].traceId: not a hex string",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"intValue": "abc"}}]}),
            f'{_SPAN_PATH}.attributes[0].value.intValue: not a valid int64: "abc"',
        ),
        (
            "traces",
            _one_span({"startTimeUnixNano": "soon"}),
            f"{_SPAN_PATH}.startTimeUnixNano: not a valid fixed64",
        ),
        (
            "traces",
            _one_span({"attributes": {"key": "n"}}),
            f"{_SPAN_PATH}.attributes: expected an array, got an object",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": 5}]}),
            f"{_SPAN_PATH}.attributes[0].value: expected an object, got a number",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"intValue": 1, "boolValue": True}}]}),
            f"{_SPAN_PATH}.attributes[0].value: ",
        ),
        (
            "metrics",
            json.dumps(
                {
                    "resourceMetrics": [
                        {
                            "scopeMetrics": [
                                {
                                    "metrics": [
                                        {"histogram": {"dataPoints": [{"exemplars": [{"spanId": "12G4"}]}]}}
                                    ]
                                }
                            ]
                        }
                    ]
                }
            ).encode(),
            (
                "resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0]"
                ".exemplars[0].spanId: not a hex string"
            ),
        ),
        (
            "metrics",
            (
                b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"histogram":'
                b' {"dataPoints": [{"bucketCounts": ["1", "two"]}]}}]}]}]}'
            ),
            (
                "resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0]"
                '.bucketCounts[1]: not a valid fixed64: "two"'
            ),
        ),
        (
            "metrics",
            b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": []}]}]}]}',
            "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge: expected an object",
        ),
        (
            "logs",
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "abc"}]}]}]}',
            "resourceLogs[0].scopeLogs[0].logRecords[0].traceId: odd number of hex digits",
        ),
        (
            "logs",
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"boolValue": "yes"}}]}]}]}',
            "resourceLogs[0].scopeLogs[0].logRecords[0].body.boolValue: not a valid bool",
        ),
        (
            "logs",
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"severityNumber": "LOUD"}]}]}]}',
            "resourceLogs[0].scopeLogs[0].logRecords[0].severityNumber: not a valid SeverityNumber",
        ),
        (
            "traces",
            json.dumps(
                {
                    "resourceSpans": [
                        {
                            "scopeSpans": [
                                {
                                    "spans": [
                                        {},
                                        {},
                                        {"attributes": [{"key": "a"}, {"key": "b", "value": "text"}]},
                                    ]
                                }
                            ]
                        }
                    ]
                }
            ).encode(),
            "resourceSpans[0].scopeSpans[0].spans[2].attributes[1].value: expected an object, got a string",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"stringValue": 5}}]}),
            f"{_SPAN_PATH}.attributes[0].value.stringValue: expected a string, got a number",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": 5, "value": {"stringValue": "five"}}]}),
            f"{_SPAN_PATH}.attributes[0].key: expected a string, got a number",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "d", "value": {"bytesValue": "3q2+7w=!"}}]}),
            f'{_SPAN_PATH}.attributes[0].value.bytesValue: not valid base64: "3q2+7w=!"',
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "d", "value": {"bytesValue": "3q2+7"}}]}),
            f"{_SPAN_PATH}.attributes[0].value.bytesValue: not valid base64",
        ),
        ("traces", _one_span({"name": 5}), f"{_SPAN_PATH}.name: expected a string, got a number"),
        ("traces", _one_span({"name": "\ud800"}), f"{_SPAN_PATH}.name: not valid Unicode"),
        (
            "traces",
            _one_span({"attributes": [{"key": "\udfff", "value": {"boolValue": True}}]}),
            f"{_SPAN_PATH}.attributes[0].key: not valid Unicode",
        ),
        ("traces", _one_span({"kind": "SPAN_KIND_SIDEWAYS"}), f"{_SPAN_PATH}.kind: not a valid SpanKind"),
        ("traces", _one_span({"kind": 2**31}), f"{_SPAN_PATH}.kind: out of range for SpanKind"),
        ("traces", _one_span({"kind": 1.5}), f"{_SPAN_PATH}.kind: not a valid SpanKind"),
        ("traces", _one_span({"status": "ok"}), f"{_SPAN_PATH}.status: expected an object, got a string"),
        (
            "traces",
            _one_span({"droppedAttributesCount": 1.5}),
            f"{_SPAN_PATH}.droppedAttributesCount: not a valid uint32: 1.5",
        ),
        (
            "traces",
            _one_span({"droppedAttributesCount": -1}),
            f"{_SPAN_PATH}.droppedAttributesCount: out of range for uint32: -1",
        ),
        (
            "traces",
            _one_span({"droppedEventsCount": 2**32}),
            f"{_SPAN_PATH}.droppedEventsCount: out of range for uint32",
        ),
        ("traces", _one_span({"flags": True}), f"{_SPAN_PATH}.flags: not a valid fixed32: true"),
        ("traces", _one_span({"flags": " 1"}), f'{_SPAN_PATH}.flags: not a valid fixed32: " 1"'),
        ("traces", _one_span({"flags": "1_000"}), f"{_SPAN_PATH}.flags: not a valid fixed32"),
        ("traces", _one_span({"flags": "\u0661"}), f"{_SPAN_PATH}.flags: not a valid fixed32"),
        (
            "traces",
            _one_span({"startTimeUnixNano": "-1"}),
            f'{_SPAN_PATH}.startTimeUnixNano: out of range for fixed64: "-1"',
        ),
        (
            "traces",
            _one_span({"endTimeUnixNano": "18446744073709551616"}),
            f"{_SPAN_PATH}.endTimeUnixNano: out of range for fixed64",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"intValue": "9223372036854775808"}}]}),
            f"{_SPAN_PATH}.attributes[0].value.intValue: out of range for int64",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"intValue": "1" * 5000}}]}),
            f"{_SPAN_PATH}.attributes[0].value.intValue: out of range for int64",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"doubleValue": "fast"}}]}),
            f'{_SPAN_PATH}.attributes[0].value.doubleValue: not a valid double: "fast"',
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"doubleValue": "inf"}}]}),
            f"{_SPAN_PATH}.attributes[0].value.doubleValue: not a valid double",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"doubleValue": False}}]}),
            f"{_SPAN_PATH}.attributes[0].value.doubleValue: not a valid double: false",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"doubleValue": 10**400}}]}),
            f"{_SPAN_PATH}.attributes[0].value.doubleValue: out of range for a double",
        ),
        (
            "traces",
            _one_span({"attributes": [{"key": "n", "value": {"intValue": "1", "int_value": "2"}}]}),
            f"{_SPAN_PATH}.attributes[0].value: intValue and int_value are the same field",
        ),
        (
            "traces",
            _one_span({"spanId": "eee19b7ec3c1b174", "span_id": "eee19b7ec3c1b174"}),
            f"{_SPAN_PATH}: spanId and span_id are the same field",
        ),
        ("traces", b'{"resourceSpans": [null]}', "resourceSpans[0]: expected an object, got null"),
        (
            "traces",
            _one_span({"events": [{"name": "e"}, [{"name": "f"}]]}),
            f"{_SPAN_PATH}.events[1]: expected an object, got an array",
        ),
        (
            "logs",
            b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": "hello"}]}]}]}',
            "resourceLogs[0].scopeLogs[0].logRecords[0].body: expected an object, got a string",
        ),
        (
            "logs",
            b'{"resourceLogs": [{"resource": {"entityRefs": [{"idKeys": ["a", 7]}]}}]}',
            "resourceLogs[0].resource.entityRefs[0].idKeys[1]: expected a string, got a number",
        ),
        (
            "metrics",
            (
                b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge":'
                b' {"dataPoints": [{"asInt": "1", "asDouble": 2.5}]}}]}]}]}'
            ),
            (
                "resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0]: asInt and asDouble"
                " are both members of oneof value"
            ),
        ),
        (
            "metrics",
            b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {}, "sum": {}}]}]}]}',
            "resourceMetrics[0].scopeMetrics[0].metrics[0]: gauge and sum are both members of oneof data",
        ),
        (
            "metrics",
            (
                b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"histogram":'
                b' {"dataPoints": [{"explicitBounds": [1, "two"]}]}}]}]}]}'
            ),
            (
                "resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0]"
                '.explicitBounds[1]: not a valid double: "two"'
            ),
        ),
        (
            "metrics",
            (
                b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"histogram":'
                b' {"dataPoints": [{"bucketCounts": 5}]}}]}]}]}'
            ),
            (
                "resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0]"
                ".bucketCounts: expected an array, got a number"
            ),
        ),
    ],
)
def test_bad_bodies_are_permanent_errors_that_say_where(signal: str, body: bytes, expected: str) -> None:
    with pytest.raises(PermanentError) as raised:
        decode_json(signal, body)
    assert expected in str(raised.value)
    str(raised.value).encode()  # fit for the wire, even when the input had a lone surrogate


def test_unknown_signal_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="profiles"):
        decode_json("profiles", b"{}")
    with pytest.raises(ValueError, match="not an OTLP export request"):
        encode_json(AnyValue())


def test_nesting_stops_where_protobuf_parsers_stop() -> None:
    def logs_with_body_nested(levels: int) -> bytes:
        body: dict[str, object] = {"stringValue": "innermost"}
        for _ in range(levels):
            body = {"arrayValue": {"values": [body]}}
        record = {"body": body}
        return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}).encode()

    # request, ResourceLogs, ScopeLogs, LogRecord, then an AnyValue and an ArrayValue per level
    deepest = logs_with_body_nested(47)  # the innermost AnyValue is 99 deep
    message = decode_json("logs", deepest)
    assert ExportLogsServiceRequest.FromString(message.SerializeToString()) == message
    assert message == _reference_decode("logs", deepest)
    with pytest.raises(PermanentError, match="messages nested more than 100 deep"):
        decode_json("logs", logs_with_body_nested(48))
    with pytest.raises(json_format.ParseError, match="too deep"):
        _reference_decode("logs", logs_with_body_nested(48))


def test_lenient_spellings_the_mapping_allows() -> None:
    lenient = _one_span(
        {
            "kind": "2",
            "flags": 257.0,
            "droppedAttributesCount": "3",
            "droppedEventsCount": "+4",
            "startTimeUnixNano": 1e18,
            "attributes": [
                {"key": "nan", "value": {"doubleValue": "NaN"}},
                {"key": "inf", "value": {"double_value": "-Infinity"}},
                {"key": "text", "value": {"doubleValue": "2.5e3"}},
                {"key": "int", "value": {"doubleValue": 7}},
                {"key": "padless", "value": {"bytesValue": "3q2-7w"}},
                {"key": "big", "value": {"int_value": -(2**63)}},
                {"key": "kvlist", "value": {"kvlistValue": {"values": [{"key": "k"}]}}},
                {"key": "extra", "value": {"boolValue": True, "comment": "ignored"}, "note": None},
                {"key": "null", "value": {"stringValue": None}},
            ],
            "status": {"code": "STATUS_CODE_ERROR", "message": None},
            "events": None,
        }
    )
    (span,) = decode_json("traces", lenient).resource_spans[0].scope_spans[0].spans
    assert (span.kind, span.flags, span.dropped_attributes_count, span.dropped_events_count) == (2, 257, 3, 4)
    assert span.start_time_unix_nano == 10**18
    values = [kv.value for kv in span.attributes]
    assert math.isnan(values[0].double_value)
    assert values[1].double_value == -math.inf
    assert values[2].double_value == 2500.0
    assert values[3].WhichOneof("value") == "double_value"
    assert values[3].double_value == 7.0
    assert values[4].bytes_value == bytes.fromhex("deadbeef")
    assert values[5].int_value == -(2**63)
    assert values[6].kvlist_value.values[0].key == "k"
    assert values[7].bool_value is True
    assert span.attributes[8].HasField("value")
    assert values[8].WhichOneof("value") is None
    assert span.status.code == 2
    assert decode_json("traces", _one_span({"kind": 42})).resource_spans[0].scope_spans[0].spans[0].kind == 42


# --- every field, and a differential test against json_format.ParseDict -----------------

_REQUESTS: dict[str, type[Message]] = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}
_ID_FIELDS = {"trace_id", "span_id", "parent_span_id"}
_SIGNED = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UNSIGNED = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_SIGNED_64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
_UNSIGNED_64 = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}


def _reference_decode(signal: str, body: bytes) -> Message:
    """The decoder this module replaced, kept as an oracle: ids to base64, then ParseDict."""
    message = _REQUESTS[signal]()
    tree = json.loads(body)
    _hex_ids_to_base64(tree, message.DESCRIPTOR)
    return json_format.ParseDict(tree, message, ignore_unknown_fields=True)


def _hex_ids_to_base64(tree: dict[str, Any], descriptor: Descriptor) -> None:
    for field in descriptor.fields:
        for key in {field.json_name, field.name}:
            value = tree.get(key)
            if value is None:
                continue
            if field.message_type is not None:
                for item in value if field.is_repeated else [value]:
                    _hex_ids_to_base64(item, field.message_type)
            elif field.name in _ID_FIELDS:
                tree[key] = base64.b64encode(bytes.fromhex(value)).decode()


def _reachable_fields(descriptor: Descriptor, seen: set[str] | None = None) -> set[tuple[str, str]]:
    seen = set() if seen is None else seen
    seen.add(descriptor.full_name)
    fields = {(descriptor.full_name, field.name) for field in descriptor.fields}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.full_name not in seen:
            fields |= _reachable_fields(field.message_type, seen)
    return fields


def _sample(field: FieldDescriptor, variant: int) -> object:
    """A value for a scalar field, far from its default and awkward for JSON where possible."""
    kind = field.type
    if field.enum_type is not None:
        return field.enum_type.values[-1 - variant % len(field.enum_type.values)].number
    if kind == FieldDescriptor.TYPE_BYTES:
        if field.name in _ID_FIELDS:
            return bytes(range(16 if field.name == "trace_id" else 8, 0, -1))
        return b"\x00\xfb\xff binary"
    samples: dict[int, object] = {
        FieldDescriptor.TYPE_STRING: f"Ünïcode {field.name} 🚀",
        FieldDescriptor.TYPE_BOOL: True,
        FieldDescriptor.TYPE_DOUBLE: [-1.5e300, math.inf, 0.1, -0.0][variant % 4],
    }
    samples.update(dict.fromkeys(_SIGNED, -(2**31) + variant))
    samples.update(dict.fromkeys(_UNSIGNED, 2**32 - 1 - variant))
    samples.update(dict.fromkeys(_SIGNED_64, -(2**63) + variant))
    samples.update(dict.fromkeys(_UNSIGNED_64, 2**64 - 1 - variant))
    return samples[kind]


def _populate(message: Message, variant: int, depth: int, covered: set[tuple[str, str]]) -> None:
    """Set every field of `message`, but one member per oneof (picked by `variant`), recursively."""
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[variant % len(oneof.fields)] is not field:
            continue
        if field.message_type is not None and depth > 8:
            continue  # AnyValue, ArrayValue and KeyValueList nest without end
        covered.add((descriptor.full_name, field.name))
        value = getattr(message, field.name)
        if field.message_type is None:
            if field.is_repeated:
                value.extend([_sample(field, variant), _sample(field, variant + 1)])
            else:
                setattr(message, field.name, _sample(field, variant))
        elif field.is_repeated:
            for offset in range(2):
                _populate(value.add(), variant + offset, depth + 1, covered)
        else:
            value.SetInParent()
            _populate(value, variant + 1, depth + 1, covered)


@pytest.mark.parametrize("signal", sorted(_REQUESTS))
def test_every_field_of_the_request_round_trips(signal: str) -> None:
    request_type = _REQUESTS[signal]
    covered: set[tuple[str, str]] = set()
    for variant in range(8):  # AnyValue has the largest oneof: 8 members
        message = request_type()
        _populate(message, variant, 1, covered)
        body = encode_json(message)
        decoded = decode_json(signal, body)
        assert decoded == message
        assert decoded == _reference_decode(signal, body)
    assert covered == _reachable_fields(request_type.DESCRIPTOR)


def _scalars(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if field.enum_type is not None:
        return st.sampled_from([value.number for value in field.enum_type.values]) | st.integers(0, 99)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=8)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_DOUBLE:  # JSON keeps no NaN payloads: the one quiet NaN only
        return st.floats(allow_nan=False) | st.just(math.nan)
    for kinds, low, high in [
        (_SIGNED, -(2**31), 2**31 - 1),
        (_UNSIGNED, 0, 2**32 - 1),
        (_SIGNED_64, -(2**63), 2**63 - 1),
        (_UNSIGNED_64, 0, 2**64 - 1),
    ]:
        if kind in kinds:
            return st.integers(low, high)
    raise AssertionError(f"no strategy for {field.full_name}")


def _messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Random messages of `descriptor`: each field set or not; oneof members set last win."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = GetMessageClass(descriptor)()
        for field in draw(st.permutations(list(descriptor.fields))):
            if not draw(st.booleans()) or (field.message_type is not None and depth > 4):
                continue
            if field.message_type is None:
                values = _scalars(field)
                if field.is_repeated:
                    getattr(message, field.name).extend(draw(st.lists(values, max_size=3)))
                else:
                    setattr(message, field.name, draw(values))
            elif field.is_repeated:
                items = draw(st.lists(_messages(field.message_type, depth + 1), max_size=2))
                getattr(message, field.name).extend(items)
            else:
                getattr(message, field.name).CopyFrom(draw(_messages(field.message_type, depth + 1)))
        return message

    return build()


def _respell(draw: st.DrawFn, tree: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """The same message, spelled in another way the proto3 JSON mapping allows."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        field = descriptor.fields_by_camelcase_name[key]
        items = value if field.is_repeated else [value]
        if field.message_type is not None:
            items = [_respell(draw, item, field.message_type) for item in items]
        else:
            items = [_respell_scalar(draw, field, item) for item in items]
        out[field.name if draw(st.booleans()) else key] = items if field.is_repeated else items[0]
    absent = [field.json_name for field in descriptor.fields if field.json_name not in tree]
    if absent and draw(st.booleans()):
        out[draw(st.sampled_from(absent))] = None  # null: as if absent
    if draw(st.booleans()):
        out["futureField"] = draw(st.none() | st.integers() | st.just({"traceId": "zz"}))
    return out


def _respell_scalar(draw: st.DrawFn, field: FieldDescriptor, value: Any) -> Any:
    if not draw(st.booleans()):
        return value
    kind = field.type
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else str(value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return value.upper() if field.name in _ID_FIELDS else value.rstrip("=").replace("+", "-")
    if kind == FieldDescriptor.TYPE_DOUBLE and isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if kind in _SIGNED_64 | _UNSIGNED_64:
        return int(value)  # as a number
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


@settings(deadline=None, max_examples=150)
@given(st.data())
def test_decodes_like_parse_dict(data: st.DataObject) -> None:
    signal = data.draw(st.sampled_from(sorted(_REQUESTS)))
    descriptor = _REQUESTS[signal].DESCRIPTOR
    message = data.draw(_messages(descriptor))
    tree = _respell(data.draw, json.loads(encode_json(message)), descriptor)
    body = json.dumps(tree).encode()

    decoded = decode_json(signal, body)
    expected = message.SerializeToString(deterministic=True)  # bytes: NaN is not == NaN
    assert decoded.SerializeToString(deterministic=True) == expected
    assert _reference_decode(signal, body).SerializeToString(deterministic=True) == expected
