"""metrics_to_arrow: one row per data point with OTLP metric semantics, checked field by field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Exemplar,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    SummaryDataPoint,
)
from otlp_values import kv

from mallard.collector.arrow import (
    CONVERTERS,
    TABLE_OF_SIGNAL,
    Limits,
    metrics_to_arrow,
)
from mallard.collector.errors import PermanentError
from mallard.storage.schema import METRICS

DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
T0 = 1_700_000_000_123_456_789  # nanoseconds
T1 = T0 + 10_000_000_000
TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def request(
    *metrics: Metric,
    resource: dict[str, object] | None = None,
    scope: tuple[str, str] = ("meter", "1.0"),
    scope_attributes: dict[str, object] | None = None,
) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    add_resource(req, list(metrics), resource, scope, scope_attributes=scope_attributes)
    return req


def add_resource(
    req: ExportMetricsServiceRequest,
    metrics: list[Metric],
    resource: dict[str, object] | None = None,
    scope: tuple[str, str] = ("meter", "1.0"),
    *,
    scope_attributes: dict[str, object] | None = None,
) -> None:
    rm = req.resource_metrics.add()
    if resource is None:
        resource = {"service.name": "checkout"}
    rm.resource.attributes.extend(kv(k, v) for k, v in resource.items())
    add_scope(rm, metrics, scope, scope_attributes)


def add_scope(
    rm: ResourceMetrics,
    metrics: list[Metric],
    scope: tuple[str, str] = ("meter", "1.0"),
    attributes: dict[str, object] | None = None,
) -> None:
    sm = rm.scope_metrics.add()
    sm.scope.name, sm.scope.version = scope
    sm.scope.attributes.extend(kv(k, v) for k, v in (attributes or {}).items())
    sm.metrics.extend(metrics)


def convert(
    req: ExportMetricsServiceRequest, limits: Limits | None = None
) -> tuple[list[dict[str, Any]], int, str]:
    out = metrics_to_arrow(req.SerializeToString(), limits=limits or Limits())
    assert out.table == "metrics"
    assert out.batch.schema == METRICS
    out.batch.validate(full=True)
    return out.batch.to_pylist(), out.rejected, out.message


def ts(ns: int) -> datetime:
    return EPOCH + timedelta(microseconds=ns // 1000)


def number(value: float | int, **fields: Any) -> NumberDataPoint:
    point = NumberDataPoint(time_unix_nano=T1, start_time_unix_nano=T0, **fields)
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value
    return point


def only(rows: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [{n: row[n] for n in names} for row in rows]


EMPTY_ROW_TAIL = {
    "bucket_counts": None,
    "explicit_bounds": None,
    "scale": None,
    "zero_count": None,
    "zero_threshold": None,
    "positive_offset": None,
    "positive_bucket_counts": None,
    "negative_offset": None,
    "negative_bucket_counts": None,
    "quantiles": None,
}


def test_gauge_row_has_every_column_as_expected() -> None:
    metric = Metric(name="queue.depth", description="Items waiting", unit="{item}")
    metric.gauge.data_points.append(number(7, attributes=[kv("queue", "high"), kv("shard", 3)], flags=1))
    scope_attributes: dict[str, object] = {"library.language": "python", "library.stable": True}
    req = request(
        metric, resource={"service.name": "checkout", "host.cpus": 8}, scope_attributes=scope_attributes
    )
    rows, rejected, message = convert(req)
    assert (rejected, message) == (0, "")
    assert rows == [
        {
            "metric_name": "queue.depth",
            "metric_description": "Items waiting",
            "unit": "{item}",
            "metric_type": "gauge",
            "service_name": "checkout",
            "time": ts(T1),
            "start_time": ts(T0),
            "time_unix_nano": T1,
            "start_time_unix_nano": T0,
            "temporality": None,
            "is_monotonic": None,
            "value": 7.0,
            "value_int": 7,
            "count": None,
            "sum": None,
            "min": None,
            "max": None,
            **EMPTY_ROW_TAIL,
            "exemplars": [],
            "flags": 1,
            "attributes": [("queue", "high"), ("shard", "3")],
            "attribute_types": [("shard", "int")],
            "resource_attributes": [("service.name", "checkout"), ("host.cpus", "8")],
            "resource_attribute_types": [("host.cpus", "int")],
            "scope_name": "meter",
            "scope_version": "1.0",
            "scope_attributes": [("library.language", "python"), ("library.stable", "true")],
            "scope_attribute_types": [("library.stable", "bool")],
        }
    ]


def test_time_keeps_microseconds_and_start_time_is_null_when_unset() -> None:
    metric = Metric(name="g")
    metric.gauge.data_points.append(NumberDataPoint(time_unix_nano=T1, as_double=1.0))
    (row,), _, _ = convert(request(metric))
    assert row["time"] == datetime(2023, 11, 14, 22, 13, 30, 123456, UTC)
    assert row["start_time"] is None
    assert (row["time_unix_nano"], row["start_time_unix_nano"]) == (T1, 0)


def test_int_and_double_values() -> None:
    big = 2**53 + 1  # not representable as a double
    metric = Metric(name="g")
    metric.gauge.data_points.extend(
        [number(2.5), number(big), number(-(2**63)), NumberDataPoint(time_unix_nano=T1)]
    )
    rows, _, _ = convert(request(metric))
    assert only(rows, "value", "value_int") == [
        {"value": 2.5, "value_int": None},
        {"value": float(big), "value_int": big},
        {"value": -(2.0**63), "value_int": -(2**63)},
        {"value": None, "value_int": None},  # a point without a value
    ]


def test_sum_temporality_and_monotonicity() -> None:
    delta = Metric(name="requests")
    delta.sum.aggregation_temporality = DELTA
    delta.sum.is_monotonic = True
    delta.sum.data_points.append(number(3))
    cumulative = Metric(name="in.flight")
    cumulative.sum.aggregation_temporality = CUMULATIVE
    cumulative.sum.data_points.append(number(-2.0))
    unspecified = Metric(name="odd")
    unspecified.sum.data_points.append(number(1))
    rows, _, _ = convert(request(delta, cumulative, unspecified))
    assert only(rows, "metric_type", "temporality", "is_monotonic", "value") == [
        {"metric_type": "sum", "temporality": "delta", "is_monotonic": True, "value": 3.0},
        {
            "metric_type": "sum",
            "temporality": "cumulative",
            "is_monotonic": False,
            "value": -2.0,
        },
        {
            "metric_type": "sum",
            "temporality": "unspecified",
            "is_monotonic": False,
            "value": 1.0,
        },
    ]


def test_histogram_buckets_and_optional_min_max_sum() -> None:
    metric = Metric(name="http.server.duration", unit="ms")
    metric.histogram.aggregation_temporality = CUMULATIVE
    metric.histogram.data_points.extend(
        [
            HistogramDataPoint(
                time_unix_nano=T1,
                start_time_unix_nano=T0,
                count=6,
                sum=12.5,
                min=0.5,
                max=9.0,
                bucket_counts=[1, 3, 2],
                explicit_bounds=[1.0, 5.0],
            ),
            HistogramDataPoint(time_unix_nano=T1, count=0),  # no sum, min, max
            HistogramDataPoint(time_unix_nano=T1, count=1, sum=0.0, min=0.0, max=0.0),
        ]
    )
    rows, _, _ = convert(request(metric))
    names = ("metric_type", "temporality", "is_monotonic", "value", "count", "sum")
    names += ("min", "max", "bucket_counts", "explicit_bounds", "scale", "quantiles")
    assert only(rows, *names) == [
        {
            "metric_type": "histogram",
            "temporality": "cumulative",
            "is_monotonic": None,
            "value": None,
            "count": 6,
            "sum": 12.5,
            "min": 0.5,
            "max": 9.0,
            "bucket_counts": [1, 3, 2],
            "explicit_bounds": [1.0, 5.0],
            "scale": None,
            "quantiles": None,
        },
        {
            "metric_type": "histogram",
            "temporality": "cumulative",
            "is_monotonic": None,
            "value": None,
            "count": 0,
            "sum": None,
            "min": None,
            "max": None,
            "bucket_counts": [],
            "explicit_bounds": [],
            "scale": None,
            "quantiles": None,
        },
        {
            "metric_type": "histogram",
            "temporality": "cumulative",
            "is_monotonic": None,
            "value": None,
            "count": 1,
            "sum": 0.0,  # present though zero
            "min": 0.0,
            "max": 0.0,
            "bucket_counts": [],
            "explicit_bounds": [],
            "scale": None,
            "quantiles": None,
        },
    ]


def test_exponential_histogram_scale_offsets_and_negative_buckets() -> None:
    metric = Metric(name="latency")
    metric.exponential_histogram.aggregation_temporality = DELTA
    point = ExponentialHistogramDataPoint(
        time_unix_nano=T1,
        count=9,
        sum=-3.5,
        scale=-2,
        zero_count=2,
        zero_threshold=1e-9,
        min=-8.0,
        max=4.0,
    )
    point.positive.offset = 3
    point.positive.bucket_counts.extend([1, 0, 2])
    point.negative.offset = -4
    point.negative.bucket_counts.extend([4])
    metric.exponential_histogram.data_points.extend([point, ExponentialHistogramDataPoint(time_unix_nano=T1)])
    rows, _, _ = convert(request(metric))
    names = ("metric_type", "temporality", "count", "sum", "min", "max", "scale")
    names += ("zero_count", "zero_threshold", "positive_offset", "positive_bucket_counts")
    names += ("negative_offset", "negative_bucket_counts", "bucket_counts", "value")
    assert only(rows, *names) == [
        {
            "metric_type": "exponential_histogram",
            "temporality": "delta",
            "count": 9,
            "sum": -3.5,
            "min": -8.0,
            "max": 4.0,
            "scale": -2,
            "zero_count": 2,
            "zero_threshold": 1e-9,
            "positive_offset": 3,
            "positive_bucket_counts": [1, 0, 2],
            "negative_offset": -4,
            "negative_bucket_counts": [4],
            "bucket_counts": None,
            "value": None,
        },
        {
            "metric_type": "exponential_histogram",
            "temporality": "delta",
            "count": 0,
            "sum": None,
            "min": None,
            "max": None,
            "scale": 0,
            "zero_count": 0,
            "zero_threshold": 0.0,
            "positive_offset": 0,
            "positive_bucket_counts": [],
            "negative_offset": 0,
            "negative_bucket_counts": [],
            "bucket_counts": None,
            "value": None,
        },
    ]


def test_summary_quantiles() -> None:
    metric = Metric(name="rpc.latency")
    point = SummaryDataPoint(time_unix_nano=T1, start_time_unix_nano=T0, count=4, sum=10.0)
    point.quantile_values.add(quantile=0.5, value=2.0)
    point.quantile_values.add(quantile=0.99, value=4.5)
    metric.summary.data_points.extend([point, SummaryDataPoint(time_unix_nano=T1)])
    rows, _, _ = convert(request(metric))
    names = ("metric_type", "temporality", "is_monotonic", "count", "sum", "min")
    names += ("max", "value", "quantiles", "exemplars", "bucket_counts")
    assert only(rows, *names) == [
        {
            "metric_type": "summary",
            "temporality": None,
            "is_monotonic": None,
            "count": 4,
            "sum": 10.0,
            "min": None,
            "max": None,
            "value": None,
            "quantiles": [
                {"quantile": 0.5, "value": 2.0},
                {"quantile": 0.99, "value": 4.5},
            ],
            "exemplars": None,
            "bucket_counts": None,
        },
        {
            "metric_type": "summary",
            "temporality": None,
            "is_monotonic": None,
            "count": 0,
            "sum": 0.0,
            "min": None,
            "max": None,
            "value": None,
            "quantiles": [],
            "exemplars": None,
            "bucket_counts": None,
        },
    ]


def test_exemplars_with_trace_context() -> None:
    metric = Metric(name="requests")
    metric.sum.data_points.append(
        number(
            5,
            exemplars=[
                Exemplar(
                    time_unix_nano=T0,
                    as_double=0.25,
                    trace_id=TRACE_ID,
                    span_id=SPAN_ID,
                    filtered_attributes=[kv("user", "u1"), kv("retry", True)],
                ),
                Exemplar(time_unix_nano=T1, as_int=2**62 + 1),
                Exemplar(time_unix_nano=T1, trace_id=bytes(16), span_id=bytes(8)),
            ],
        )
    )
    hist = Metric(name="h")
    hist.histogram.data_points.append(HistogramDataPoint(exemplars=[Exemplar(as_int=3, span_id=SPAN_ID)]))
    rows, rejected, _ = convert(request(metric, hist))
    assert rejected == 0
    assert rows[0]["exemplars"] == [
        {
            "time": ts(T0),
            "time_unix_nano": T0,
            "value": 0.25,
            "value_int": None,
            "trace_id": TRACE_ID.hex(),
            "span_id": SPAN_ID.hex(),
            "filtered_attributes": [("user", "u1"), ("retry", "true")],
            "filtered_attribute_types": [("retry", "bool")],
        },
        {
            "time": ts(T1),
            "time_unix_nano": T1,
            "value": float(2**62 + 1),
            "value_int": 2**62 + 1,
            "trace_id": "",
            "span_id": "",
            "filtered_attributes": [],
            "filtered_attribute_types": [],
        },
        {
            "time": ts(T1),
            "time_unix_nano": T1,
            "value": None,
            "value_int": None,
            "trace_id": "",  # all-zero ids mean none
            "span_id": "",
            "filtered_attributes": [],
            "filtered_attribute_types": [],
        },
    ]
    assert [(e["value_int"], e["span_id"]) for e in rows[1]["exemplars"]] == [(3, SPAN_ID.hex())]


def test_rows_follow_their_resource_and_scope() -> None:
    first, second, third = Metric(name="a"), Metric(name="b"), Metric(name="c")
    first.gauge.data_points.extend([number(1), number(2)])
    second.gauge.data_points.append(number(3))
    third.gauge.data_points.append(number(4))
    scope_attributes: dict[str, object] = {"lib.kind": "http", "lib.ratio": 1.5}
    req = request(
        first,
        resource={"service.name": "api", "k": "v"},
        scope=("s1", "1"),
        scope_attributes=scope_attributes,
    )
    add_scope(req.resource_metrics[0], [third], ("s3", "3"), {"lib.blob": b"\x00\x01"})
    add_resource(req, [second], resource={"region": "eu"}, scope=("s2", "2"))
    rows, _, _ = convert(req)
    names = ("metric_name", "value_int", "service_name", "resource_attributes")
    names += ("scope_name", "scope_version", "scope_attributes", "scope_attribute_types")
    api = {"service_name": "api", "resource_attributes": [("service.name", "api"), ("k", "v")]}
    s1 = {
        "scope_name": "s1",
        "scope_version": "1",
        "scope_attributes": [("lib.kind", "http"), ("lib.ratio", "1.5")],
        "scope_attribute_types": [("lib.ratio", "double")],
    }
    assert only(rows, *names) == [
        {"metric_name": "a", "value_int": 1, **api, **s1},
        {"metric_name": "a", "value_int": 2, **api, **s1},
        {
            "metric_name": "c",
            "value_int": 4,
            **api,
            "scope_name": "s3",
            "scope_version": "3",
            "scope_attributes": [("lib.blob", "AAE=")],
            "scope_attribute_types": [("lib.blob", "bytes")],
        },
        {
            "metric_name": "b",
            "value_int": 3,
            "service_name": "",  # no service.name
            "resource_attributes": [("region", "eu")],
            "scope_name": "s2",
            "scope_version": "2",
            "scope_attributes": [],
            "scope_attribute_types": [],
        },
    ]


def test_metric_without_name_is_rejected_and_without_data_is_empty() -> None:
    nameless = Metric(name="")
    nameless.gauge.data_points.extend([number(1), number(2)])
    no_data = Metric(name="declared.only")
    kept = Metric(name="kept")
    kept.gauge.data_points.append(number(3))
    rows, rejected, message = convert(request(nameless, no_data, kept))
    assert [row["metric_name"] for row in rows] == ["kept"]
    assert rejected == 2
    assert message == (
        "rejected 2: resource_metrics[0].scope_metrics[0].metrics[0]: metric without a name;"
        " resource_metrics[0].scope_metrics[0].metrics[0]: metric without a name"
    )


def test_points_over_limits_or_with_malformed_exemplar_ids_are_rejected() -> None:
    metric = Metric(name="m")
    metric.sum.data_points.extend(
        [
            number(1, attributes=[kv("a", 1), kv("b", 2), kv("c", 3)]),  # over the limit
            number(2, exemplars=[Exemplar(as_int=1), Exemplar(trace_id=b"\x01" * 3)]),
            number(3, attributes=[kv("ok", 1)], exemplars=[Exemplar(as_int=9)]),
        ]
    )
    hist = Metric(name="h")
    hist.histogram.data_points.append(HistogramDataPoint(count=1, exemplars=[Exemplar(span_id=b"\x01" * 9)]))
    rows, rejected, message = convert(request(metric, hist), Limits(max_attributes=2))
    # the rejected points leave nothing behind: the kept row has its own attributes and exemplars
    assert only(rows, "value_int", "attributes", "attribute_types") == [
        {"value_int": 3, "attributes": [("ok", "1")], "attribute_types": [("ok", "int")]}
    ]
    assert [e["value_int"] for e in rows[0]["exemplars"]] == [9]
    assert rejected == 3
    where = "resource_metrics[0].scope_metrics[0].metrics"
    assert message == (
        f"rejected 3: {where}[0].sum.data_points[0]: 3 attributes, more than the limit of 2;"
        f" {where}[0].sum.data_points[1]: exemplars[1].trace_id 3 bytes, expected 16;"
        f" {where}[1].histogram.data_points[0]: exemplars[0].span_id 9 bytes, expected 8"
    )


def test_resource_over_limits_rejects_all_of_its_points() -> None:
    metric = Metric(name="m")
    metric.gauge.data_points.extend([number(1), number(2)])
    summary = Metric(name="s")
    summary.summary.data_points.append(SummaryDataPoint())
    req = request(metric, summary, resource={"a": 1, "b": 2})
    kept = Metric(name="kept")
    kept.gauge.data_points.append(number(3))
    add_resource(req, [kept], resource={"service.name": "ok"})
    rows, rejected, message = convert(req, Limits(max_attributes=1))
    assert only(rows, "metric_name", "service_name", "resource_attributes") == [
        {
            "metric_name": "kept",
            "service_name": "ok",
            "resource_attributes": [("service.name", "ok")],
        }
    ]
    assert rejected == 3
    assert message.startswith(
        "rejected 3: resource_metrics[0].resource: 2 attributes, more than the limit of 1"
    )


def test_scope_over_limits_rejects_all_of_its_points() -> None:
    metric = Metric(name="m")
    metric.gauge.data_points.extend([number(1), number(2)])
    summary = Metric(name="s")
    summary.summary.data_points.append(SummaryDataPoint())
    nameless = Metric(name="")  # rejected for its scope, counted once
    nameless.gauge.data_points.append(number(5))
    req = request(metric, summary, nameless, scope=("over", "1"), scope_attributes={"a": 1, "b": 2})
    kept = Metric(name="kept")
    kept.gauge.data_points.append(number(3))
    add_scope(req.resource_metrics[0], [kept], ("ok", "2"), {"c": 3})
    rows, rejected, message = convert(req, Limits(max_attributes=1))
    # the rejected scope leaves nothing behind: the kept row has its own scope attributes
    assert only(rows, "metric_name", "scope_name", "scope_attributes", "scope_attribute_types") == [
        {
            "metric_name": "kept",
            "scope_name": "ok",
            "scope_attributes": [("c", "3")],
            "scope_attribute_types": [("c", "int")],
        }
    ]
    assert rejected == 4
    reason = "resource_metrics[0].scope_metrics[0].scope: 2 attributes, more than the limit of 1"
    assert message == f"rejected 4: {reason}; {reason}; {reason} (and 1 more)"


def test_scope_attribute_nested_too_deep_rejects_its_points() -> None:
    metric = Metric(name="m")
    metric.gauge.data_points.append(number(1))
    req = request(metric)
    nested = AnyValue(array_value=ArrayValue(values=[AnyValue(array_value=ArrayValue(values=[AnyValue()]))]))
    req.resource_metrics[0].scope_metrics[0].scope.attributes.append(KeyValue(key="deep", value=nested))
    assert convert(req, Limits(max_depth=3))[1] == 0
    rows, rejected, message = convert(req, Limits(max_depth=2))
    assert (rows, rejected) == ([], 1)
    assert message == (
        "rejected 1: resource_metrics[0].scope_metrics[0].scope: attribute value nested deeper than the limit"
    )


def test_resource_over_limits_is_reported_before_its_scopes() -> None:
    metric = Metric(name="m")
    metric.gauge.data_points.append(number(1))
    req = request(metric, resource={"a": 1, "b": 2}, scope_attributes={"c": 1, "d": 2})
    _, rejected, message = convert(req, Limits(max_attributes=1))
    assert (rejected, message) == (
        1,
        "rejected 1: resource_metrics[0].resource: 2 attributes, more than the limit of 1",
    )


def test_malformed_bytes_are_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match=r"^malformed protobuf ExportMetricsServiceRequest: "):
        metrics_to_arrow(b"\x0a\xff\xff\xff")


@pytest.mark.parametrize(
    ("point", "column"),
    [
        (HistogramDataPoint(bucket_counts=[2**64 - 1]), "bucket_counts"),
        (HistogramDataPoint(count=2**63), "count"),
        (HistogramDataPoint(time_unix_nano=2**64 - 1), "time_unix_nano"),
        (HistogramDataPoint(exemplars=[Exemplar(time_unix_nano=2**63)]), "exemplars.time_unix_nano"),
    ],
)
def test_values_beyond_int64_are_a_permanent_error(point: HistogramDataPoint, column: str) -> None:
    metric = Metric(name="h")
    metric.histogram.data_points.append(point)
    with pytest.raises(PermanentError, match=rf"^{column} out of range"):
        metrics_to_arrow(request(metric).SerializeToString())


def test_empty_request_is_an_empty_batch_with_the_schema() -> None:
    out = metrics_to_arrow(b"")
    assert (out.batch.num_rows, out.rejected, out.message) == (0, 0, "")
    assert out.batch.schema == METRICS


def test_registered_as_the_metrics_converter() -> None:
    assert CONVERTERS["metrics"] is metrics_to_arrow
    assert TABLE_OF_SIGNAL["metrics"] == metrics_to_arrow(b"").table


# --- property: any valid request converts, one row per point -------------------------------

_u63 = st.integers(0, 2**63 - 1)
_floats = st.floats(allow_nan=True, allow_infinity=True)
_attr_value = st.one_of(
    st.text(max_size=6),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.binary(max_size=6),
)
_attributes = st.dictionaries(st.text(max_size=6), _attr_value, max_size=4).map(
    lambda d: [kv(k, v) for k, v in d.items()]
)
_ids = {
    "filtered_attributes": _attributes,
    "time_unix_nano": _u63,
    "trace_id": st.sampled_from([b"", bytes(16), TRACE_ID]),
    "span_id": st.sampled_from([b"", bytes(8), SPAN_ID]),
}
_exemplar = st.one_of(
    st.builds(Exemplar, as_double=_floats, **_ids),
    st.builds(Exemplar, as_int=st.integers(-(2**63), 2**63 - 1), **_ids),
)
_exemplars = st.lists(_exemplar, max_size=2)
_common = {
    "attributes": _attributes,
    "time_unix_nano": _u63,
    "start_time_unix_nano": _u63,
    "flags": st.integers(0, 2**32 - 1),
}
_number = st.one_of(
    st.builds(NumberDataPoint, as_double=_floats, exemplars=_exemplars, **_common),
    st.builds(
        NumberDataPoint,
        as_int=st.integers(-(2**63), 2**63 - 1),
        exemplars=_exemplars,
        **_common,
    ),
)
_histogram = st.builds(
    HistogramDataPoint,
    count=_u63,
    sum=_floats,
    bucket_counts=st.lists(_u63, max_size=4),
    explicit_bounds=st.lists(_floats, max_size=3),
    exemplars=_exemplars,
    **_common,
)
_exponential = st.builds(
    ExponentialHistogramDataPoint,
    count=_u63,
    scale=st.integers(-10, 20),
    zero_count=_u63,
    positive=st.builds(
        ExponentialHistogramDataPoint.Buckets,
        offset=st.integers(-(2**31), 2**31 - 1),
        bucket_counts=st.lists(_u63, max_size=4),
    ),
    exemplars=_exemplars,
    **_common,
)
_summary = st.builds(
    SummaryDataPoint,
    count=_u63,
    sum=_floats,
    quantile_values=st.lists(
        st.builds(SummaryDataPoint.ValueAtQuantile, quantile=_floats, value=_floats),
        max_size=3,
    ),
    **_common,
)
_POINTS = {
    "gauge": _number,
    "sum": _number,
    "histogram": _histogram,
    "exponential_histogram": _exponential,
    "summary": _summary,
}


_scope_attributes = st.dictionaries(
    st.text(max_size=4),
    st.text(max_size=4) | st.integers(-(2**63), 2**63 - 1) | st.booleans() | st.binary(max_size=3) | _floats,
    max_size=3,
)


@st.composite
def _metric(draw: st.DrawFn) -> Metric:
    kind = draw(st.sampled_from(sorted(_POINTS)))
    metric = Metric(name=draw(st.text(min_size=1, max_size=8)))
    getattr(metric, kind).data_points.extend(draw(st.lists(_POINTS[kind], max_size=4)))
    return metric


@st.composite
def _request(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        add_resource(
            req,
            draw(st.lists(_metric(), max_size=4)),
            resource={"service.name": draw(st.text(max_size=6))},
            scope_attributes=draw(_scope_attributes),
        )
    return req


@settings(max_examples=200, deadline=None)
@given(_request())
def test_any_valid_request_converts_one_row_per_point(req: ExportMetricsServiceRequest) -> None:
    metrics = [m for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    expected_types = [
        kind for m in metrics if (kind := m.WhichOneof("data")) for _ in getattr(m, kind).data_points
    ]
    out = metrics_to_arrow(req.SerializeToString())
    assert out.rejected == 0
    assert out.batch.schema == METRICS
    out.batch.validate(full=True)
    assert out.batch.num_rows == len(expected_types)
    assert out.batch.column("metric_type").to_pylist() == expected_types
    expected_scope_keys = [
        [a.key for a in sm.scope.attributes]
        for rm in req.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if (kind := m.WhichOneof("data"))
        for _ in getattr(m, kind).data_points
    ]
    scope_keys = [[key for key, _ in row] for row in out.batch.column("scope_attributes").to_pylist()]
    assert scope_keys == expected_scope_keys
