"""metric_names and metric_series over a store written by the storage writer from OTLP requests.

The counters all count the same events, 1, 2, 3 in the first minute after T0 (at +10 s, +30 s,
+50 s), 4 and 5 in the second (+70 s, +90 s) and 6 in the third (+130 s), so with a 60 s step the
increase is 6, 9, 6 whatever the temporality, unless a restart loses or adds counts (said per test).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from otlp_values import kv

from mallard.collector.arrow import metrics_to_arrow
from mallard.query import Store
from mallard.query.histograms import exponential_histogram_quantile, histogram_quantile
from mallard.query.metrics import MetricInfo, Series, metric_names, metric_series
from mallard.query.timerange import InvalidArgument, to_unix_nano
from mallard.storage.writer import ParquetSink

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
RANGE = {"start": T0, "end": T0 + timedelta(minutes=3)}
STEPS = [T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
DELTA = pb.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = pb.AGGREGATION_TEMPORALITY_CUMULATIVE
SECONDS = (10, 30, 50, 70, 90, 130)
INCREMENTS = (1, 2, 3, 4, 5, 6)


def ns(seconds: float) -> int:
    return to_unix_nano(T0) + int(seconds * 1e9)


def number(
    seconds: float, value: float, *, start: float | None = None, **attributes: object
) -> pb.NumberDataPoint:
    return pb.NumberDataPoint(
        time_unix_nano=ns(seconds),
        start_time_unix_nano=ns(start) if start is not None else 0,
        as_double=value,
        attributes=[kv(key, item) for key, item in attributes.items()],
    )


def counter(name: str, temporality: int, points: list[pb.NumberDataPoint]) -> pb.Metric:
    return pb.Metric(
        name=name,
        unit="1",
        sum=pb.Sum(aggregation_temporality=temporality, is_monotonic=True, data_points=points),
    )


def cumulative(values: Sequence[float], starts: Sequence[float] | None = None) -> list[pb.NumberDataPoint]:
    starts = starts or [0.0] * len(values)
    return [number(s, v, start=b) for s, v, b in zip(SECONDS, values, starts, strict=True)]


def explicit(seconds: float, counts: list[int], total: float, *, start: float) -> pb.HistogramDataPoint:
    return pb.HistogramDataPoint(
        time_unix_nano=ns(seconds), start_time_unix_nano=ns(start), count=sum(counts), sum=total,
        bucket_counts=counts, explicit_bounds=[10, 20, 50], min=5, max=80,
    )  # fmt: skip


def metrics() -> dict[str, list[pb.Metric]]:
    """Metrics by service."""
    delta_points = [number(s, v, start=s - 20) for s, v in zip(SECONDS, INCREMENTS, strict=True)]
    exponential = pb.ExponentialHistogramDataPoint(
        time_unix_nano=ns(10), start_time_unix_nano=ns(0), count=5, scale=0, zero_count=1,
        positive=pb.ExponentialHistogramDataPoint.Buckets(offset=0, bucket_counts=[2, 2]),
    )  # fmt: skip
    return {
        "delta-svc": [
            counter("requests", DELTA, delta_points),
            pb.Metric(
                name="temperature",
                unit="Cel",
                description="room temperature",
                gauge=pb.Gauge(
                    data_points=[
                        number(0, 10, room="kitchen"),
                        number(30, 20, room="kitchen"),
                        number(10, 30, room="hall"),
                        number(70, 40, room="kitchen"),
                    ]
                ),
            ),
            pb.Metric(
                name="latency",
                histogram=pb.Histogram(
                    aggregation_temporality=DELTA,
                    data_points=[
                        explicit(10, [1, 2, 1, 0], 100, start=0),
                        explicit(30, [0, 1, 3, 2], 250, start=10),
                    ],
                ),
            ),
            pb.Metric(
                name="sizes",
                exponential_histogram=pb.ExponentialHistogram(
                    aggregation_temporality=DELTA, data_points=[exponential]
                ),
            ),
        ],
        "cumulative-svc": [
            counter("requests", CUMULATIVE, cumulative([1, 3, 6, 10, 15, 21], [0] * 6)),
            counter("resets", CUMULATIVE, cumulative([1, 3, 6, 4, 9, 15], [0] * 6)),
            counter("restarts", CUMULATIVE, cumulative([1, 3, 6, 7, 12, 18], [0, 0, 0, 65, 65, 65])),
            counter(
                "baseline",
                CUMULATIVE,
                [number(-30, 100, start=-3600), number(10, 101, start=-3600), number(70, 105, start=-3600)],
            ),
            pb.Metric(
                name="latency",
                histogram=pb.Histogram(
                    aggregation_temporality=CUMULATIVE,
                    data_points=[
                        explicit(10, [1, 2, 1, 0], 100, start=0),
                        explicit(30, [1, 3, 4, 2], 350, start=0),
                    ],
                ),
            ),
        ],
    }


def request() -> bytes:
    message = ExportMetricsServiceRequest()
    for service, items in metrics().items():
        resource = message.resource_metrics.add()
        resource.resource.attributes.append(kv("service.name", service))
        resource.scope_metrics.add().metrics.extend(items)
    return message.SerializeToString()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    root: Path = tmp_path_factory.mktemp("metrics")
    converted = metrics_to_arrow(request())
    assert converted.rejected == 0
    ParquetSink(root).write("metrics", [converted.batch], writer="test", first_lsn=1, last_lsn=1)
    with Store(root) as opened:
        yield opened


def by_service(series: list[Series]) -> dict[str, list[tuple[datetime, float]]]:
    return {s.labels["service_name"]: list(s.points) for s in series}


def test_metric_names_lists_each_metric_with_its_point_count(store: Store) -> None:
    names = {info.name: info for info in metric_names(store, **RANGE)}
    assert names["temperature"] == MetricInfo(
        name="temperature", type="gauge", unit="Cel", description="room temperature",
        temporality=None, point_count=4,
    )  # fmt: skip
    assert names["requests"].temporality == "mixed"
    assert names["requests"].point_count == 12
    assert names["baseline"].point_count == 2  # the point before T0 is outside the range
    assert names["sizes"].type == "exponential_histogram"


@pytest.mark.parametrize("agg", ["increase", "rate"])
def test_delta_and_cumulative_counters_agree(store: Store, agg: str) -> None:
    series = metric_series(store, "requests", **RANGE, step_s=60, agg=agg, group_by=["service_name"])
    scale = 1 / 60 if agg == "rate" else 1
    expected = [(step, value * scale) for step, value in zip(STEPS, [6, 9, 6], strict=True)]
    assert by_service(series) == {"cumulative-svc": expected, "delta-svc": expected}
    (total,) = metric_series(store, "requests", **RANGE, step_s=60, agg=agg)
    assert total.labels == {}
    assert total.points == tuple((step, 2 * value) for step, value in expected)


def test_a_drop_of_a_cumulative_counter_is_a_reset(store: Store) -> None:
    (series,) = metric_series(store, "resets", **RANGE, step_s=60, agg="increase")
    assert series.points == tuple(zip(STEPS, [6.0, 9.0, 6.0], strict=True))  # 6 -> 4 counts the 4


def test_a_new_start_time_is_a_reset_even_when_the_value_grows(store: Store) -> None:
    (series,) = metric_series(store, "restarts", **RANGE, step_s=60, agg="increase")
    assert series.points == tuple(zip(STEPS, [6.0, 12.0, 6.0], strict=True))  # 6 -> 7 counts the 7


def test_a_counter_started_before_the_range_counts_from_its_last_point_before(store: Store) -> None:
    (series,) = metric_series(store, "baseline", **RANGE, step_s=60, agg="increase")
    assert series.points == ((STEPS[0], 1.0), (STEPS[1], 4.0))


@pytest.mark.parametrize(
    ("agg", "first", "second"),
    [("avg", 20.0, 40.0), ("sum", 60.0, 40.0), ("min", 10.0, 40.0), ("max", 30.0, 40.0),
     ("count", 3.0, 1.0), ("p50", 20.0, 40.0), ("p90", 28.0, 40.0)],
)  # fmt: skip
def test_gauge_aggregations_per_step(store: Store, agg: str, first: float, second: float) -> None:
    (series,) = metric_series(store, "temperature", **RANGE, step_s=60, agg=agg)
    assert series.points == ((STEPS[0], pytest.approx(first)), (STEPS[1], second))


def test_gauge_grouped_and_filtered_by_attribute(store: Store) -> None:
    grouped = metric_series(store, "temperature", **RANGE, step_s=60, agg="avg", group_by=["room"])
    assert [(s.labels, list(s.points)) for s in grouped] == [
        ({"room": "hall"}, [(STEPS[0], 30.0)]),
        ({"room": "kitchen"}, [(STEPS[0], 15.0), (STEPS[1], 40.0)]),
    ]
    (hall,) = metric_series(store, "temperature", **RANGE, step_s=60, agg="max", attributes={"room": "hall"})
    assert hall.points == ((STEPS[0], 30.0),)


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        # summed buckets [1, 3, 4, 2] over (-inf,10] (10,20] (20,50] (50,+inf), min 5, max 80
        ("p50", 20 + 30 * (5 - 4) / 4),  # rank 5 in (20, 50]: 1 of its 4
        ("p90", 50 + 30 * (9 - 8) / 2),  # rank 9 in (50, +inf), which ends at max 80
        ("p99", 50 + 30 * (9.9 - 8) / 2),
        ("count", 10.0),
        ("rate", 10 / 60),
        ("sum", 350.0),
        ("avg", 35.0),
    ],
)
def test_explicit_histogram_delta_and_cumulative(store: Store, agg: str, expected: float) -> None:
    series = metric_series(store, "latency", **RANGE, step_s=60, agg=agg, group_by=["service_name"])
    assert by_service(series) == {
        "cumulative-svc": [(T0, pytest.approx(expected))],
        "delta-svc": [(T0, pytest.approx(expected))],
    }


def test_exponential_histogram_quantile_is_log_linear_in_its_bucket(store: Store) -> None:
    # zero bucket 1, (1, 2] 2, (2, 4] 2: rank 2.5 is 0.75 of the way through (1, 2]
    (series,) = metric_series(store, "sizes", **RANGE, step_s=60, agg="p50")
    assert series.points == ((T0, pytest.approx(2**0.75)),)


def test_errors(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="unknown metric 'nope'"):
        metric_series(store, "nope", **RANGE, step_s=60)
    with pytest.raises(InvalidArgument, match="does not apply"):
        metric_series(store, "temperature", **RANGE, step_s=60, agg="rate")
    with pytest.raises(InvalidArgument, match="agg is one of"):
        metric_series(store, "temperature", **RANGE, step_s=60, agg="median")
    with pytest.raises(InvalidArgument, match="step_s"):
        metric_series(store, "temperature", **RANGE, step_s=0)
    with pytest.raises(InvalidArgument, match="steps"):
        metric_series(store, "temperature", **RANGE, step_s=0.001)
    late = {"start": T0 + timedelta(hours=5), "end": T0 + timedelta(hours=6)}
    assert metric_series(store, "temperature", **late, step_s=60) == []


# Quantiles against samples


def true_quantile_index(samples: list[float], q: float, index_of: object) -> int:
    ordered = sorted(samples)
    return index_of(ordered[math.ceil(q * len(ordered)) - 1])  # type: ignore[operator,no-any-return]


QS = st.sampled_from([0.5, 0.9, 0.95, 0.99])
VALUES = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(VALUES, min_size=1, max_size=60),
    bounds=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=8, unique=True
    ),
    q=QS,
    known_extremes=st.booleans(),
)
def test_explicit_quantile_lies_in_the_bucket_of_the_true_quantile(
    samples: list[float], bounds: list[float], q: float, known_extremes: bool
) -> None:
    bounds = sorted(bounds)
    counts = [0] * (len(bounds) + 1)
    for sample in samples:
        counts[bisect.bisect_left(bounds, sample)] += 1  # bucket i is (bounds[i-1], bounds[i]]
    index = true_quantile_index(samples, q, lambda v: bisect.bisect_left(bounds, v))
    low = bounds[index - 1] if index > 0 else -math.inf
    high = bounds[index] if index < len(bounds) else math.inf
    extremes = {"minimum": min(samples), "maximum": max(samples)} if known_extremes else {}
    answer = histogram_quantile(q, bounds, counts, **extremes)
    assert answer is not None
    assert low <= answer <= high


def exponential_index(value: float, scale: int) -> int:
    """Index k of the bucket (base^k, base^(k+1)] holding |value|, base 2^(2^-scale)."""
    return math.ceil(math.log2(abs(value)) * 2.0**scale) - 1


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(
        st.one_of(
            st.just(0.0), st.floats(min_value=1e-6, max_value=1e6), st.floats(min_value=-1e6, max_value=-1e-6)
        ),
        min_size=1,
        max_size=60,
    ),
    scale=st.integers(min_value=-3, max_value=8),
    q=QS,
    known_extremes=st.booleans(),
)
def test_exponential_quantile_lies_in_the_bucket_of_the_true_quantile(
    samples: list[float], scale: int, q: float, known_extremes: bool
) -> None:
    positive: dict[int, float] = {}
    negative: dict[int, float] = {}
    for sample in samples:
        if sample != 0:
            side = positive if sample > 0 else negative
            side[exponential_index(sample, scale)] = side.get(exponential_index(sample, scale), 0) + 1
    ordered = sorted(samples)
    truth = ordered[math.ceil(q * len(ordered)) - 1]
    if truth == 0:
        low = high = 0.0
    else:
        k = exponential_index(truth, scale)
        magnitude = (2.0 ** (k / 2.0**scale), 2.0 ** ((k + 1) / 2.0**scale))
        low, high = magnitude if truth > 0 else (-magnitude[1], -magnitude[0])
    extremes = {"minimum": min(samples), "maximum": max(samples)} if known_extremes else {}
    answer = exponential_histogram_quantile(
        q, scale=scale, zero_count=samples.count(0.0), positive=positive, negative=negative, **extremes
    )
    assert answer is not None
    tolerance = 1e-9 * max(abs(low), abs(high))
    assert low - tolerance <= answer <= high + tolerance
