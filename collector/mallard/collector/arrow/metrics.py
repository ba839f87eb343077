"""OTLP `ExportMetricsServiceRequest` bytes to one `metrics` RecordBatch (schema v1), purely.

One row per data point, every point type in the same table. A column that a point type does not
have is NULL for its rows (`value` of a histogram, `quantiles` of a gauge); `temporality` is NULL
for gauges and summaries, `is_monotonic` for all but sums.
"""

from __future__ import annotations

from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

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
from mallard.collector.arrow.outcome import Converted, Rejections, optional_id
from mallard.collector.errors import PermanentError
from mallard.storage.schema import ATTRIBUTE_MAP_COLUMNS, EXEMPLAR, METRICS, QUANTILE

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
    _Path = tuple[int, int, int, str]  # resource, scope and metric index, metric type

TEMPORALITIES: Final = ("unspecified", "delta", "cumulative")
_DEFAULT_LIMITS: Final = Limits()

_SCALAR_LISTS: Final = (
    "bucket_counts",
    "explicit_bounds",
    "positive_bucket_counts",
    "negative_bucket_counts",
)
_NOT_SCALAR: Final = frozenset({*ATTRIBUTE_MAP_COLUMNS, "exemplars", "quantiles", *_SCALAR_LISTS})

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
    """Offsets and NULL rows of a LIST column built flat; its items live alongside."""

    __slots__ = ("null_rows", "offsets")

    def __init__(self) -> None:
        self.offsets: list[int] = [0]
        self.null_rows: list[int] = []

    def close(self, end: int) -> None:
        """Ends a row whose items run up to `end`."""
        self.offsets.append(end)

    def add_nulls(self, rows: int) -> None:
        offsets = self.offsets
        first = len(offsets) - 1
        self.null_rows.extend(range(first, first + rows))
        offsets.extend(repeat(offsets[-1], rows))

    def to_arrow(self, items: pa.Array) -> pa.Array:
        mask = None
        if self.null_rows:
            nulls = [False] * (len(self.offsets) - 1)
            for row in self.null_rows:
                nulls[row] = True
            mask = pa.array(nulls, pa.bool_())
        offsets = pa.array(self.offsets, pa.int32())
        return pa.ListArray.from_arrays(offsets, items, mask=mask)


class _ScalarLists(_Lists):
    """A LIST of numbers (bucket counts, bounds)."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        super().__init__()
        self.items: list[float] = []

    def add(self, items: Iterable[float]) -> None:
        values = self.items
        values.extend(items)
        self.offsets.append(len(values))


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
            trace_id = optional_id(exemplar.trace_id, 16, f"exemplars[{i}].trace_id")
            span_id = optional_id(exemplar.span_id, 8, f"exemplars[{i}].span_id")
            render_into(exemplar.filtered_attributes, self.attributes, limits)
            time_ns = exemplar.time_unix_nano
            times.append(time_ns // 1000)
            times_ns.append(time_ns)
            value, value_int = number_value(exemplar)
            values.append(value)
            value_ints.append(value_int)
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
                children.append(_array(f"exemplars.{field.name}", self.fields[field.name], field.type))
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
        children = [pa.array(self.quantiles, pa.float64()), pa.array(self.values, pa.float64())]
        return self.to_arrow(pa.StructArray.from_arrays(children, fields=list(QUANTILE)))


class _MetricColumns:
    """Column lists for the rows of one request, and what was rejected."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rejections = Rejections()
        self.scalars: dict[str, list[object]] = {n: [] for n in METRICS.names if n not in _NOT_SCALAR}
        self.lists = {name: _ScalarLists() for name in _SCALAR_LISTS}
        self.exemplars = _Exemplars()
        self.exemplar_offsets = self.exemplars.offsets
        self.quantiles = _Quantiles()
        self.attributes = AttributeColumns()
        self.resources = AttributeColumns()  # one row per resource; `resource_rows` picks
        self.resource_rows: list[int] = []
        self.scopes = AttributeColumns()  # one row per scope; `scope_rows` picks
        self.scope_rows: list[int] = []
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

    def admit(self, point: _Point, exemplars: Sequence[Exemplar] | None, path: _Path, index: int) -> bool:
        """Appends the columns every point has, or rejects the point and appends nothing."""
        s = self.scalars
        try:
            render_into(point.attributes, self.attributes, self.limits)
            if exemplars:
                try:
                    self.exemplars.add(exemplars, self.limits)
                except PermanentError:
                    self.attributes.truncate(len(s["time"]))
                    self.exemplars.undo()
                    raise
            elif exemplars is not None:  # a point type with exemplars, none sent
                self.exemplar_offsets.append(self.exemplar_offsets[-1])
        except PermanentError as exc:
            ri, si, mi, kind = path
            where = f"resource_metrics[{ri}].scope_metrics[{si}].metrics[{mi}].{kind}.data_points[{index}]"
            self.rejections.add(where, str(exc))
            return False
        time_ns, start_ns = point.time_unix_nano, point.start_time_unix_nano
        s["time"].append(time_ns // 1000)
        s["start_time"].append(start_ns // 1000 if start_ns else None)
        s["time_unix_nano"].append(time_ns)
        s["start_time_unix_nano"].append(start_ns)
        s["flags"].append(point.flags)
        return True

    def close_metric(
        self, metric: Metric, kind: str, rows: int, context: tuple[int, int, str, str, str]
    ) -> None:
        """Fills the metric's and the NULL columns of the `rows` points just admitted."""
        resource_row, scope_row, service, scope_name, scope_version = context
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
        self.scope_rows.extend(repeat(scope_row, rows))
        for pad in self.pads[kind]:
            pad(rows)

    def to_batch(self) -> pa.RecordBatch:
        arrays: dict[str, pa.Array] = {}
        for name, values in self.scalars.items():
            arrays[name] = _array(name, values, METRICS.field(name).type)
        for name, column in self.lists.items():
            arrays[name] = column.to_arrow(_array(name, column.items, METRICS.field(name).type.value_type))
        arrays["exemplars"] = self.exemplars.to_array()
        arrays["quantiles"] = self.quantiles.to_array()
        arrays["attributes"], arrays["attribute_types"] = self.attributes.to_arrow()
        resources = self.resources.to_arrow(self.resource_rows)
        arrays["resource_attributes"], arrays["resource_attribute_types"] = resources
        scopes = self.scopes.to_arrow(self.scope_rows)
        arrays["scope_attributes"], arrays["scope_attribute_types"] = scopes
        return pa.RecordBatch.from_arrays([arrays[name] for name in METRICS.names], schema=METRICS)


def _array(name: str, values: Sequence[object], typ: pa.DataType) -> pa.Array:
    """`values` as an Arrow array; a fixed64 beyond int64 is bad input."""
    try:
        return pa.array(values, typ)
    except (OverflowError, pa.ArrowInvalid) as exc:
        raise PermanentError(f"{name} out of range: {exc}") from None


def _padder(column: list[object]) -> Callable[[int], None]:
    def pad(rows: int) -> None:
        column.extend(repeat(None, rows))

    return pad


def number_value(point: NumberDataPoint | Exemplar) -> tuple[float | None, int | None]:
    """(`value`, `value_int`) of a number point or exemplar: ints are kept exact beside their float."""
    kind = point.WhichOneof("value")
    if kind == "as_double":
        return point.as_double, None
    if kind == "as_int":
        number = point.as_int
        return float(number), number
    return None, None


def _temporality(value: int) -> str:
    return TEMPORALITIES[value] if 0 <= value < len(TEMPORALITIES) else str(value)


def metrics_to_arrow(
    payload: bytes, *, limits: Limits = _DEFAULT_LIMITS, received_unix_nano: int = 0
) -> Converted:
    """Converts an OTLP metrics export request; malformed protobuf raises PermanentError.

    Data points of a metric without a name, over the limits, with an exemplar whose id is
    malformed, or whose resource or scope is over the limits are rejected and counted, the rest
    kept. A metric without data has no points.
    A time or count beyond int64 fails the whole request with PermanentError.
    """
    del received_unix_nano  # data points carry their own times
    try:
        request = ExportMetricsServiceRequest.FromString(payload)
    except DecodeError as exc:
        raise PermanentError(f"malformed protobuf ExportMetricsServiceRequest: {exc}") from None
    cols = _MetricColumns(limits)
    rejections = cols.rejections
    for ri, resource_metrics in enumerate(request.resource_metrics):
        try:
            found = render_into(resource_metrics.resource.attributes, cols.resources, limits, SERVICE_KEY)
        except PermanentError as exc:
            for scope_metrics in resource_metrics.scope_metrics:
                _reject_points(
                    rejections, scope_metrics.metrics, f"resource_metrics[{ri}].resource", str(exc)
                )
            continue
        resource_row = cols.resources.rows - 1
        service = service_name_of(found)
        for si, scope_metrics in enumerate(resource_metrics.scope_metrics):
            scope = scope_metrics.scope
            try:
                render_into(scope.attributes, cols.scopes, limits)
            except PermanentError as exc:
                where = f"resource_metrics[{ri}].scope_metrics[{si}].scope"
                _reject_points(rejections, scope_metrics.metrics, where, str(exc))
                continue
            context = (resource_row, cols.scopes.rows - 1, service, scope.name, scope.version)
            for mi, metric in enumerate(scope_metrics.metrics):
                kind = metric.WhichOneof("data")
                points = _points_of(metric, kind)
                if kind is None or not points:
                    continue
                if not metric.name:
                    where = f"resource_metrics[{ri}].scope_metrics[{si}].metrics[{mi}]"
                    for _ in points:
                        rejections.add(where, "metric without a name")
                    continue
                rows = _APPEND_POINTS[kind](cols, points, (ri, si, mi, kind))
                if rows:
                    cols.close_metric(metric, kind, rows, context)
    return Converted(
        table="metrics", batch=cols.to_batch(), rejected=rejections.count, message=rejections.message()
    )


def _points_of(metric: Metric, kind: str | None) -> Sequence[_Point]:
    return () if kind is None else getattr(metric, kind).data_points


def _reject_points(rejections: Rejections, metrics: Iterable[Metric], where: str, reason: str) -> None:
    """Rejects every data point of `metrics` (their resource or scope is over the limits)."""
    for metric in metrics:
        for _ in _points_of(metric, metric.WhichOneof("data")):
            rejections.add(where, reason)


def _append_numbers(cols: _MetricColumns, points: Sequence[NumberDataPoint], path: _Path) -> int:
    """Appends the points of a gauge or sum; returns how many were admitted."""
    admit = cols.admit
    values, value_ints = cols.scalars["value"], cols.scalars["value_int"]
    admitted = 0
    for index, point in enumerate(points):
        if not admit(point, point.exemplars, path, index):
            continue
        value, value_int = number_value(point)
        values.append(value)
        value_ints.append(value_int)
        admitted += 1
    return admitted


def _append_histograms(cols: _MetricColumns, points: Sequence[HistogramDataPoint], path: _Path) -> int:
    """Appends the points of an explicit-bucket histogram; returns how many were admitted."""
    admit = cols.admit
    s = cols.scalars
    counts, sums, mins, maxes = s["count"], s["sum"], s["min"], s["max"]
    bucket_counts, bounds = cols.lists["bucket_counts"], cols.lists["explicit_bounds"]
    admitted = 0
    for index, point in enumerate(points):
        if not admit(point, point.exemplars, path, index):
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
    cols: _MetricColumns, points: Sequence[ExponentialHistogramDataPoint], path: _Path
) -> int:
    """Appends the points of an exponential histogram; returns how many were admitted."""
    admit = cols.admit
    s = cols.scalars
    counts, sums, mins, maxes = s["count"], s["sum"], s["min"], s["max"]
    scales, zero_counts, zero_thresholds = s["scale"], s["zero_count"], s["zero_threshold"]
    positive_offsets, negative_offsets = s["positive_offset"], s["negative_offset"]
    positive_counts, negative_counts = (
        cols.lists["positive_bucket_counts"],
        cols.lists["negative_bucket_counts"],
    )
    admitted = 0
    for index, point in enumerate(points):
        if not admit(point, point.exemplars, path, index):
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


def _append_summaries(cols: _MetricColumns, points: Sequence[SummaryDataPoint], path: _Path) -> int:
    """Appends the points of a summary; returns how many were admitted."""
    admit = cols.admit
    counts, sums, quantiles = cols.scalars["count"], cols.scalars["sum"], cols.quantiles
    admitted = 0
    for index, point in enumerate(points):
        if not admit(point, None, path, index):
            continue
        counts.append(point.count)
        sums.append(point.sum)
        quantiles.add(point.quantile_values)
        admitted += 1
    return admitted


_APPEND_POINTS: Final[dict[str, Callable[[_MetricColumns, Any, _Path], int]]] = {
    "gauge": _append_numbers,
    "sum": _append_numbers,
    "histogram": _append_histograms,
    "exponential_histogram": _append_exponential_histograms,
    "summary": _append_summaries,
}
