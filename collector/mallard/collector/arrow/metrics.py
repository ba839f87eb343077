"""OTLP `ExportMetricsServiceRequest` bytes to one `metrics` RecordBatch (schema v1), purely.

One row per data point, every point type in the same table. A column that a point type does not
have is NULL for its rows (`value` of a histogram, `quantiles` of a gauge); `temporality` is NULL
for gauges and summaries, `is_monotonic` for all but sums.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Final

import pyarrow as pa
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from mallard.collector.arrow.attributes import (
    SERVICE_KEY,
    AttributeColumns,
    Limits,
    render_into,
    service_name_of,
)
from mallard.collector.arrow.outcome import Converted, Rejections, hex_id
from mallard.collector.errors import PermanentError
from mallard.storage.schema import EXEMPLAR, METRICS, QUANTILE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        Exemplar,
        ExponentialHistogramDataPoint,
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
        SummaryDataPoint,
    )

    _Point = NumberDataPoint | HistogramDataPoint | ExponentialHistogramDataPoint | SummaryDataPoint
    _Path = tuple[int, int, int]  # indices of resource, scope and metric, for messages

TEMPORALITIES: Final = ("unspecified", "delta", "cumulative")
_DEFAULT_LIMITS: Final = Limits()

_SCALAR_LISTS: Final = (
    "bucket_counts",
    "explicit_bounds",
    "positive_bucket_counts",
    "negative_bucket_counts",
)
_MAPS: Final = frozenset(
    {
        "attributes",
        "attribute_types",
        "resource_attributes",
        "resource_attribute_types",
    }
)
_NOT_SCALAR: Final = _MAPS | {"exemplars", "quantiles", *_SCALAR_LISTS}

# Point columns each metric type fills; its rows hold NULL in the others. Besides these, every
# point has its times, flags and attributes, and every row the columns of its metric.
_STATS: Final = ("count", "sum", "min", "max")
_FILLS: Final[dict[str, frozenset[str]]] = {
    "gauge": frozenset({"value", "value_int", "exemplars"}),
    "sum": frozenset({"value", "value_int", "exemplars"}),
    "histogram": frozenset({*_STATS, "bucket_counts", "explicit_bounds", "exemplars"}),
    "exponential_histogram": frozenset(
        {
            *_STATS,
            "scale",
            "zero_count",
            "zero_threshold",
            "positive_offset",
            "positive_bucket_counts",
            "negative_offset",
            "negative_bucket_counts",
            "exemplars",
        }
    ),
    "summary": frozenset({"count", "sum", "quantiles"}),
}
_OPTIONAL: Final = frozenset().union(*_FILLS.values())


class _Lists:
    """Offsets and NULL flags of a LIST column built flat; its items live alongside."""

    __slots__ = ("nulls", "offsets")

    def __init__(self) -> None:
        self.offsets: list[int] = [0]
        self.nulls: list[bool] = []

    def close(self, end: int) -> None:
        """Ends a row whose items run up to `end`."""
        self.offsets.append(end)
        self.nulls.append(False)

    def add_nulls(self, rows: int) -> None:
        self.offsets.extend(repeat(self.offsets[-1], rows))
        self.nulls.extend(repeat(True, rows))

    def to_arrow(self, items: pa.Array) -> pa.Array:
        mask = pa.array(self.nulls, pa.bool_()) if True in self.nulls else None
        offsets = pa.array(self.offsets, pa.int32())
        return pa.ListArray.from_arrays(offsets, items, mask=mask)


class _ScalarLists(_Lists):
    """A LIST of numbers (bucket counts, bounds)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        super().__init__()
        self.items: list[float] = []

    def add(self, items: Iterable[float]) -> None:
        self.items.extend(items)
        self.close(len(self.items))


class _Exemplars(_Lists):
    """The `exemplars` column: one list of exemplar structs per point."""

    __slots__ = ("attributes", "fields")

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, list[object]] = {
            f.name: [] for f in EXEMPLAR if not f.name.startswith("filtered_")
        }
        self.attributes = AttributeColumns()

    def add(self, exemplars: Sequence[Exemplar], limits: Limits) -> None:
        """Appends one point's exemplars; raises PermanentError, leaving what `undo` drops."""
        f = self.fields
        times, times_ns = f["time"], f["time_unix_nano"]
        values, value_ints = f["value"], f["value_int"]
        trace_ids, span_ids = f["trace_id"], f["span_id"]
        for i, exemplar in enumerate(exemplars):
            try:
                trace_id = hex_id(exemplar.trace_id, 16, optional=True)
                span_id = hex_id(exemplar.span_id, 8, optional=True)
            except ValueError as exc:
                raise PermanentError(f"exemplars[{i}] id {exc}") from None
            render_into(exemplar.filtered_attributes, self.attributes, limits)
            time_ns = exemplar.time_unix_nano
            times.append(time_ns // 1000)
            times_ns.append(time_ns)
            kind = exemplar.WhichOneof("value")
            if kind == "as_double":
                values.append(exemplar.as_double)
                value_ints.append(None)
            elif kind == "as_int":
                number = exemplar.as_int
                values.append(float(number))
                value_ints.append(number)
            else:
                values.append(None)
                value_ints.append(None)
            trace_ids.append(trace_id)
            span_ids.append(span_id)
        self.close(len(times))

    def undo(self) -> None:
        """Drops the exemplars appended since the last complete point."""
        end = self.offsets[-1]
        for values in self.fields.values():
            del values[end:]
        self.attributes.truncate(end)

    def to_array(self) -> pa.Array:
        attributes, types = self.attributes.to_arrow()
        children = []
        for field in EXEMPLAR:
            if field.name == "filtered_attributes":
                children.append(attributes)
            elif field.name == "filtered_attribute_types":
                children.append(types)
            else:
                children.append(pa.array(self.fields[field.name], field.type))
        return self.to_arrow(pa.StructArray.from_arrays(children, fields=list(EXEMPLAR)))


class _Quantiles(_Lists):
    """The `quantiles` column of summaries."""

    __slots__ = ("quantiles", "values")

    def __init__(self) -> None:
        super().__init__()
        self.quantiles: list[float] = []
        self.values: list[float] = []

    def add(self, points: Iterable[SummaryDataPoint.ValueAtQuantile]) -> None:
        quantiles, values = self.quantiles, self.values
        for point in points:
            quantiles.append(point.quantile)
            values.append(point.value)
        self.close(len(quantiles))

    def to_array(self) -> pa.Array:
        children = [
            pa.array(self.quantiles, pa.float64()),
            pa.array(self.values, pa.float64()),
        ]
        return self.to_arrow(pa.StructArray.from_arrays(children, fields=list(QUANTILE)))


class _MetricColumns:
    """Column lists for the rows of one request."""

    def __init__(self) -> None:
        self.scalars: dict[str, list[object]] = {n: [] for n in METRICS.names if n not in _NOT_SCALAR}
        self.lists = {name: _ScalarLists() for name in _SCALAR_LISTS}
        self.exemplars = _Exemplars()
        self.quantiles = _Quantiles()
        self.attributes = AttributeColumns()
        self.resources = AttributeColumns()  # one row per resource; `resource_rows` picks
        self.resource_rows: list[int] = []
        pads: dict[str, Callable[[int], None]] = {
            "exemplars": self.exemplars.add_nulls,
            "quantiles": self.quantiles.add_nulls,
        }
        pads.update((name, column.add_nulls) for name, column in self.lists.items())
        for name in _OPTIONAL - pads.keys():
            pads[name] = _padder(self.scalars[name])
        self.pads = {
            kind: [pads[name] for name in sorted(_OPTIONAL - fills)] for kind, fills in _FILLS.items()
        }

    def admit(self, point: _Point, exemplars: Sequence[Exemplar] | None, limits: Limits) -> None:
        """Appends the columns every point has; raises PermanentError, appending nothing."""
        render_into(point.attributes, self.attributes, limits)
        s = self.scalars
        if exemplars is not None:
            try:
                self.exemplars.add(exemplars, limits)
            except PermanentError:
                self.attributes.truncate(len(s["time"]))
                self.exemplars.undo()
                raise
        time_ns, start_ns = point.time_unix_nano, point.start_time_unix_nano
        s["time"].append(time_ns // 1000)
        s["start_time"].append(start_ns // 1000 if start_ns else None)
        s["time_unix_nano"].append(time_ns)
        s["start_time_unix_nano"].append(start_ns)
        s["flags"].append(point.flags)

    def close_metric(self, metric: Metric, kind: str, rows: int, context: tuple[int, str, str, str]) -> None:
        """Fills the metric's and the NULL columns of the `rows` points just admitted."""
        resource_row, service, scope_name, scope_version = context
        temporality: str | None = None
        monotonic: bool | None = None
        if kind == "sum":
            temporality = _temporality(metric.sum.aggregation_temporality)
            monotonic = metric.sum.is_monotonic
        elif kind == "histogram":
            temporality = _temporality(metric.histogram.aggregation_temporality)
        elif kind == "exponential_histogram":
            temporality = _temporality(metric.exponential_histogram.aggregation_temporality)
        s = self.scalars
        for name, value in (
            ("metric_name", metric.name),
            ("metric_description", metric.description),
            ("unit", metric.unit),
            ("metric_type", kind),
            ("service_name", service),
            ("temporality", temporality),
            ("is_monotonic", monotonic),
            ("scope_name", scope_name),
            ("scope_version", scope_version),
        ):
            s[name].extend(repeat(value, rows))
        self.resource_rows.extend(repeat(resource_row, rows))
        for pad in self.pads[kind]:
            pad(rows)

    def to_batch(self) -> pa.RecordBatch:
        arrays: dict[str, pa.Array] = {}
        for name, values in self.scalars.items():
            try:
                arrays[name] = pa.array(values, METRICS.field(name).type)
            except (OverflowError, pa.ArrowInvalid) as exc:
                raise PermanentError(f"{name} out of range: {exc}") from None
        for name, column in self.lists.items():
            item_type = METRICS.field(name).type.value_type
            try:
                arrays[name] = column.to_arrow(pa.array(column.items, item_type))
            except (OverflowError, pa.ArrowInvalid) as exc:
                raise PermanentError(f"{name} out of range: {exc}") from None
        arrays["exemplars"] = self.exemplars.to_array()
        arrays["quantiles"] = self.quantiles.to_array()
        arrays["attributes"], arrays["attribute_types"] = self.attributes.to_arrow()
        resources = self.resources.to_arrow(self.resource_rows)
        arrays["resource_attributes"], arrays["resource_attribute_types"] = resources
        return pa.RecordBatch.from_arrays([arrays[name] for name in METRICS.names], schema=METRICS)


def _padder(column: list[object]) -> Callable[[int], None]:
    def pad(rows: int) -> None:
        column.extend(repeat(None, rows))

    return pad


def _temporality(value: int) -> str:
    return TEMPORALITIES[value] if 0 <= value < len(TEMPORALITIES) else str(value)


def metrics_to_arrow(
    payload: bytes,
    *,
    limits: Limits = _DEFAULT_LIMITS,
    received_unix_nano: int = 0,
) -> Converted:
    """Converts an OTLP metrics export request; malformed protobuf raises PermanentError.

    Data points of a metric without a name, over the limits, or with an exemplar whose id is
    malformed are rejected and counted, the rest kept. A metric without data has no points.
    A time or count beyond int64 fails the whole request with PermanentError.
    """
    del received_unix_nano  # data points carry their own times
    try:
        request = ExportMetricsServiceRequest.FromString(payload)
    except DecodeError as exc:
        raise PermanentError(f"malformed protobuf ExportMetricsServiceRequest: {exc}") from None
    cols = _MetricColumns()
    rejections = Rejections()
    for ri, resource_metrics in enumerate(request.resource_metrics):
        try:
            found = render_into(
                resource_metrics.resource.attributes,
                cols.resources,
                limits,
                SERVICE_KEY,
            )
        except PermanentError as exc:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for _ in _points_of(metric):
                        rejections.add(f"resource_metrics[{ri}].resource", str(exc))
            continue
        resource_row = cols.resources.rows - 1
        service = service_name_of(found)
        for si, scope_metrics in enumerate(resource_metrics.scope_metrics):
            scope = scope_metrics.scope
            context = (resource_row, service, scope.name, scope.version)
            for mi, metric in enumerate(scope_metrics.metrics):
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                if not metric.name:
                    where = f"resource_metrics[{ri}].scope_metrics[{si}].metrics[{mi}]"
                    for _ in _points_of(metric):
                        rejections.add(where, "metric without a name")
                    continue
                path = (ri, si, mi)
                rows = _APPEND_POINTS[kind](cols, metric, limits, rejections, path)
                if rows:
                    cols.close_metric(metric, kind, rows, context)
    return Converted(
        table="metrics",
        batch=cols.to_batch(),
        rejected=rejections.count,
        message=rejections.message(),
    )


def _points_of(metric: Metric) -> Sequence[_Point]:
    kind = metric.WhichOneof("data")
    if kind == "gauge":
        return metric.gauge.data_points
    if kind == "sum":
        return metric.sum.data_points
    if kind == "histogram":
        return metric.histogram.data_points
    if kind == "exponential_histogram":
        return metric.exponential_histogram.data_points
    if kind == "summary":
        return metric.summary.data_points
    return ()


def _reject(rejections: Rejections, path: _Path, kind: str, index: int, exc: PermanentError) -> None:
    ri, si, mi = path
    where = f"resource_metrics[{ri}].scope_metrics[{si}].metrics[{mi}].{kind}"
    rejections.add(f"{where}.data_points[{index}]", str(exc))


def _append_numbers(
    cols: _MetricColumns,
    metric: Metric,
    limits: Limits,
    rejections: Rejections,
    path: _Path,
) -> int:
    """Appends the points of a gauge or sum; returns how many were admitted."""
    kind = "gauge" if metric.HasField("gauge") else "sum"
    points = metric.gauge.data_points if kind == "gauge" else metric.sum.data_points
    admit = cols.admit
    values, value_ints = cols.scalars["value"], cols.scalars["value_int"]
    admitted = 0
    for pi, point in enumerate(points):
        try:
            admit(point, point.exemplars, limits)
        except PermanentError as exc:
            _reject(rejections, path, kind, pi, exc)
            continue
        value_kind = point.WhichOneof("value")
        if value_kind == "as_double":
            values.append(point.as_double)
            value_ints.append(None)
        elif value_kind == "as_int":
            number = point.as_int
            values.append(float(number))
            value_ints.append(number)
        else:
            values.append(None)
            value_ints.append(None)
        admitted += 1
    return admitted


def _append_histograms(
    cols: _MetricColumns,
    metric: Metric,
    limits: Limits,
    rejections: Rejections,
    path: _Path,
) -> int:
    """Appends the points of an explicit-bucket histogram; returns how many were admitted."""
    admit = cols.admit
    s = cols.scalars
    counts, sums, mins, maxes = s["count"], s["sum"], s["min"], s["max"]
    bucket_counts, bounds = cols.lists["bucket_counts"], cols.lists["explicit_bounds"]
    admitted = 0
    for pi, point in enumerate(metric.histogram.data_points):
        try:
            admit(point, point.exemplars, limits)
        except PermanentError as exc:
            _reject(rejections, path, "histogram", pi, exc)
            continue
        counts.append(point.count)
        sums.append(point.sum if point.HasField("sum") else None)
        mins.append(point.min if point.HasField("min") else None)
        maxes.append(point.max if point.HasField("max") else None)
        bucket_counts.add(point.bucket_counts)
        bounds.add(point.explicit_bounds)
        admitted += 1
    return admitted


def _append_exponential_histograms(
    cols: _MetricColumns,
    metric: Metric,
    limits: Limits,
    rejections: Rejections,
    path: _Path,
) -> int:
    """Appends the points of an exponential histogram; returns how many were admitted."""
    admit = cols.admit
    s = cols.scalars
    counts, sums, mins, maxes = s["count"], s["sum"], s["min"], s["max"]
    scales, zero_counts, zero_thresholds = (
        s["scale"],
        s["zero_count"],
        s["zero_threshold"],
    )
    positive_offsets, negative_offsets = s["positive_offset"], s["negative_offset"]
    positive_counts = cols.lists["positive_bucket_counts"]
    negative_counts = cols.lists["negative_bucket_counts"]
    admitted = 0
    for pi, point in enumerate(metric.exponential_histogram.data_points):
        try:
            admit(point, point.exemplars, limits)
        except PermanentError as exc:
            _reject(rejections, path, "exponential_histogram", pi, exc)
            continue
        counts.append(point.count)
        sums.append(point.sum if point.HasField("sum") else None)
        mins.append(point.min if point.HasField("min") else None)
        maxes.append(point.max if point.HasField("max") else None)
        scales.append(point.scale)
        zero_counts.append(point.zero_count)
        zero_thresholds.append(point.zero_threshold)
        positive, negative = point.positive, point.negative
        positive_offsets.append(positive.offset)
        positive_counts.add(positive.bucket_counts)
        negative_offsets.append(negative.offset)
        negative_counts.add(negative.bucket_counts)
        admitted += 1
    return admitted


def _append_summaries(
    cols: _MetricColumns,
    metric: Metric,
    limits: Limits,
    rejections: Rejections,
    path: _Path,
) -> int:
    """Appends the points of a summary; returns how many were admitted."""
    admit = cols.admit
    counts, sums = cols.scalars["count"], cols.scalars["sum"]
    quantiles = cols.quantiles
    admitted = 0
    for pi, point in enumerate(metric.summary.data_points):
        try:
            admit(point, None, limits)
        except PermanentError as exc:
            _reject(rejections, path, "summary", pi, exc)
            continue
        counts.append(point.count)
        sums.append(point.sum)
        quantiles.add(point.quantile_values)
        admitted += 1
    return admitted


_APPEND_POINTS: Final[dict[str, Callable[[_MetricColumns, Metric, Limits, Rejections, _Path], int]]] = {
    "gauge": _append_numbers,
    "sum": _append_numbers,
    "histogram": _append_histograms,
    "exponential_histogram": _append_exponential_histograms,
    "summary": _append_summaries,
}
