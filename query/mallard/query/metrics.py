"""Typed metric queries over a `Store`: the metric names of a range, and `metric_series` on a step grid.

Time ranges are half-open, `[start, end)`, on the point `time`, and prune the hive partitions. The
grid's step `k` covers `[start + k·step, start + (k+1)·step)`; a point belongs to the step its time
falls in, and a series has a value only at steps where it has data. Labels are the `group_by` keys:
`service_name` (the column) or an attribute key, looked up in the point attributes, then the resource
attributes; a missing label is `''`. Attribute filters match the same way, by stored text.

Aggregations (`agg`):

- **gauge** (and the raw values of a `sum`): `avg`, `sum`, `min`, `max`, `count` of the point values
  of the group in the step, and `pNN`: their quantile (linear interpolation, as `quantile_cont`).
  Computed in DuckDB.
- **sum** (counters): `increase` and `rate` (= increase / step_s), per series (same resource, scope,
  attributes and temporality), summed over the group. A delta point adds its value. A cumulative point
  adds its difference from the series' previous point; the point starts the counter again from zero
  when its `start_time` differs from the previous point's, or (monotonic sums only) when its value is
  lower. The first point of a series adds its whole value when its `start_time` lies in the range
  (the counter started there), else it is only a baseline; the baseline may come from a point up to
  `LOOKBACK_S` before `start`. `unspecified` temporality is read as cumulative.
- **histogram** / **exponential_histogram**: per series as counters, on the bucket counts, `count`
  and `sum` (a drop of `count` or of any bucket is a reset). `pNN` is the quantile of the bucket
  counts summed over the group in the step; `count`/`increase` the number of observations, `rate`
  observations per second, `sum` their sum, `avg` sum / count. Explicit buckets interpolate linearly
  within the bucket (Prometheus `histogram_quantile`): the first bucket starts at the point `min`
  when known, else at 0 (or is answered by its upper bound when that is ≤ 0); the `+Inf` bucket ends
  at `max` when known, else is answered by its lower bound. Exponential buckets interpolate
  log-linearly (geometrically) within the bucket, the zero bucket linearly; scales are merged by
  downscaling to the smallest. Known `min`/`max` narrow the bucket the answer is taken from.
  Explicit layouts of different series are merged by upper bound (exact when they agree).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final

from mallard.query.engine import Store, hours_predicate
from mallard.query.histograms import exponential_histogram_quantile, histogram_quantile
from mallard.query.timerange import (
    InvalidArgument,
    TimeRange,
    from_unix_nano,
    partition_predicate,
    time_range,
)
from mallard.storage.schema import SERIES_ID_SQL

QUANTILES: Final = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
AGGREGATIONS: Final = ("avg", "sum", "min", "max", "count", "rate", "increase", *QUANTILES)
VALUE_AGGREGATIONS: Final = frozenset({"avg", "sum", "min", "max", "count", *QUANTILES})
HISTOGRAM_AGGREGATIONS: Final = frozenset({"avg", "sum", "count", "rate", "increase", *QUANTILES})
MAX_STEPS: Final = 11_000
LOOKBACK_S: Final = 300
_NS = 1_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricInfo:
    name: str
    type: str  # gauge, sum, histogram, exponential_histogram or summary
    unit: str  # of the newest point
    description: str  # of the newest point
    temporality: str | None  # delta, cumulative, unspecified, 'mixed', or None (gauge, summary)
    point_count: int  # points in the range


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    labels: dict[str, str]  # one entry per `group_by` key
    points: tuple[tuple[datetime, float], ...]  # (step start, value), by time


def metric_names(store: Store, *, start: datetime, end: datetime) -> list[MetricInfo]:
    """Every metric with a point in `[start, end)`, by name then type (a name sent with two types
    has a row for each)."""
    params: list[object] = []
    where = _range_predicate(time_range(start, end), params)
    query = f"""
        SELECT metric_name, metric_type, arg_max(unit, time_unix_nano) AS unit,
            arg_max(metric_description, time_unix_nano) AS description,
            CASE WHEN count(DISTINCT temporality) > 1 THEN 'mixed' ELSE any_value(temporality) END
                AS temporality,
            count(*) AS points
        FROM metrics WHERE {where} GROUP BY metric_name, metric_type ORDER BY metric_name, metric_type
    """
    return [
        MetricInfo(
            name=row["metric_name"],
            type=row["metric_type"],
            unit=row["unit"],
            description=row["description"],
            temporality=row["temporality"],
            point_count=row["points"],
        )
        for row in store.sql(query, params, order_joins=False).to_pylist()
    ]


def metric_series(
    store: Store,
    name: str,
    *,
    start: datetime,
    end: datetime,
    step_s: float,
    agg: str = "avg",
    group_by: Sequence[str] = (),
    attributes: Mapping[str, str] | None = None,
) -> list[Series]:
    """The series of metric `name` in `[start, end)`, one per distinct `group_by` labels, by labels.

    Raises `InvalidArgument` for an unknown metric, a bad range, step or aggregation, or an
    aggregation that the metric's type has not (see the module docstring).
    """
    time = time_range(start, end)
    step_ns = _step_ns(time, step_s)
    if agg not in AGGREGATIONS:
        raise InvalidArgument(f"agg is one of {', '.join(AGGREGATIONS)}, got {agg!r}")
    keys = _group_keys(group_by)
    metric_type = _metric_type(store, name, time)
    if metric_type is None:
        return []
    query = _Query(name=name, time=time, step_ns=step_ns, keys=keys, filters=dict(attributes or {}))
    if metric_type in ("gauge", "sum") and agg in VALUE_AGGREGATIONS:
        return _value_series(store, query, agg)
    if metric_type == "sum" and agg in ("rate", "increase"):
        return _counter_series(store, query, agg)
    if metric_type == "histogram" and agg in HISTOGRAM_AGGREGATIONS:
        increases = _increases(store, query, _EXPLICIT_COLUMNS, _explicit_point)
        return _series(
            query, increases, lambda points: _histogram_value(agg, _ExplicitSum.of(points), step_ns)
        )
    if metric_type == "exponential_histogram" and agg in HISTOGRAM_AGGREGATIONS:
        increases = _increases(store, query, _EXPONENTIAL_COLUMNS, _exponential_point)
        return _series(
            query, increases, lambda points: _histogram_value(agg, _ExponentialSum.of(points), step_ns)
        )
    raise InvalidArgument(f"agg {agg!r} does not apply to metric {name!r} of type {metric_type}")


# Quantiles of one histogram


# A key's value in the point attributes, else in the resource attributes (two `?`: the key twice).
# (`map_extract_value`: the first value of the key, as `attributes[?]` gives it; the same cost.)
_ATTRIBUTE_OR_RESOURCE: Final = (
    "coalesce(map_extract_value(attributes, ?), map_extract_value(resource_attributes, ?))"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Query:
    name: str
    time: TimeRange
    step_ns: int
    keys: tuple[str, ...]
    filters: dict[str, str]

    def where(self, time: TimeRange, params: list[object]) -> str:
        params.append(self.name)
        terms = ["metric_name = ?", _range_predicate(time, params), "(flags & 1) = 0"]
        for key, value in self.filters.items():
            if key == "service_name":
                terms.append("service_name = ?")
                params.append(value)
            else:
                terms.append(f"{_ATTRIBUTE_OR_RESOURCE} = ?")
                params.extend((key, key, value))
        return " AND ".join(terms)

    def labels(self, params: list[object]) -> str:
        """A `VARCHAR[]` expression of the group labels, in `keys` order."""
        items = []
        for key in self.keys:
            if key == "service_name":
                items.append("service_name")
            else:
                items.append(f"coalesce({_ATTRIBUTE_OR_RESOURCE}, '')")
                params.extend((key, key))
        return f"[{', '.join(items)}]::VARCHAR[]"


def _range_predicate(time: TimeRange, params: list[object]) -> str:
    params.extend((time.start_unix_nano, time.end_unix_nano))
    return f"({partition_predicate(time)} AND time_unix_nano >= ? AND time_unix_nano < ?)"


def _step_ns(time: TimeRange, step_s: float) -> int:
    if isinstance(step_s, bool) or not isinstance(step_s, int | float) or not step_s > 0:
        raise InvalidArgument(f"step_s is a positive number of seconds, got {step_s!r}")
    step_ns = round(step_s * _NS)
    if step_ns < 1_000_000:
        raise InvalidArgument(f"step_s is at least 0.001, got {step_s!r}")
    steps = -(-(time.end_unix_nano - time.start_unix_nano) // step_ns)
    if steps > MAX_STEPS:
        raise InvalidArgument(f"the range has {steps} steps of {step_s} s; at most {MAX_STEPS} are allowed")
    return step_ns


def _group_keys(group_by: Sequence[str]) -> tuple[str, ...]:
    if isinstance(group_by, str):
        raise InvalidArgument(f"group_by is a list of keys, got the string {group_by!r}")
    keys = tuple(group_by)
    if any(not isinstance(key, str) or key == "" for key in keys) or len(set(keys)) != len(keys):
        raise InvalidArgument(f"group_by is a list of distinct non-empty keys, got {list(keys)!r}")
    return keys


def _metric_type(store: Store, name: str, time: TimeRange) -> str | None:
    """The type of `name`'s points in the range; None when it has none there but some elsewhere."""
    params: list[object] = [name]
    where = _range_predicate(time, params)
    query = f"SELECT DISTINCT metric_type FROM metrics WHERE metric_name = ? AND {where} ORDER BY 1"
    types = store.sql(query, params, order_joins=False).column("metric_type").to_pylist()
    if len(types) > 1:
        raise InvalidArgument(f"metric {name!r} has points of several types in the range: {types}")
    if types:
        return str(types[0])
    if (
        store.sql("SELECT 1 FROM metrics WHERE metric_name = ? LIMIT 1", [name], order_joins=False).num_rows
        == 0
    ):
        raise InvalidArgument(f"unknown metric {name!r}")
    return None


# Values per step, aggregated in DuckDB


def _value_series(store: Store, query: _Query, agg: str) -> list[Series]:
    params: list[object] = []
    labels = query.labels(params)
    params.extend((query.time.start_unix_nano, query.step_ns))
    expression = f"quantile_cont(value, {QUANTILES[agg]})" if agg in QUANTILES else f"{agg}(value)"
    where = query.where(query.time, params)
    sql = f"""
        SELECT {labels} AS labels, (time_unix_nano - ?) // ? AS step, {expression} AS value
        FROM metrics WHERE {where} AND value IS NOT NULL GROUP BY ALL ORDER BY labels, step
    """
    grouped: dict[tuple[str, ...], list[tuple[int, float]]] = defaultdict(list)
    for row in store.sql(sql, params, order_joins=False).to_pylist():
        grouped[tuple(row["labels"])].append((row["step"], float(row["value"])))
    return _finish(query, grouped)


def _finish(query: _Query, grouped: Mapping[tuple[str, ...], list[tuple[int, float]]]) -> list[Series]:
    start_ns, step_ns = query.time.start_unix_nano, query.step_ns
    return [
        Series(
            labels=dict(zip(query.keys, labels, strict=True)),
            points=tuple(
                (from_unix_nano(start_ns + index * step_ns), value) for index, value in sorted(points)
            ),
        )
        for labels, points in sorted(grouped.items())
    ]


# Counter increases per series, in DuckDB (the same rules as `_series_increases`)


def _counter_series(store: Store, query: _Query, agg: str) -> list[Series]:
    lookback = TimeRange(start=query.time.start - timedelta(seconds=LOOKBACK_S), end=query.time.end)
    selection: list[object] = []  # the parameters of one branch of `points`
    labels = query.labels(selection)
    where = query.where(lookback, selection)
    first_ns = query.time.start_unix_nano
    params = [*selection, *selection, first_ns, first_ns, first_ns, query.step_ns]
    # Compacted hours carry each point's series id; the others compute it (reading two maps).
    open_hours = hours_predicate(store.open_hours("metrics"))
    columns = f"""{labels} AS labels, temporality = 'delta' AS is_delta,
                coalesce(is_monotonic, true) AS monotonic, start_time_unix_nano AS start_ns,
                time_unix_nano AS time_ns, value"""
    sql = f"""
        WITH points AS (
            SELECT series_id AS series, {columns}
            FROM metrics WHERE {where} AND value IS NOT NULL AND NOT ({open_hours or "false"})
            UNION ALL
            SELECT {SERIES_ID_SQL} AS series, {columns}
            FROM metrics WHERE {where} AND value IS NOT NULL AND ({open_hours or "false"})
        ),
        paired AS (
            SELECT *, lag(value) OVER w AS previous, lag(start_ns) OVER w AS previous_start
            FROM points WINDOW w AS (PARTITION BY series ORDER BY time_ns)
        ),
        increases AS (
            SELECT labels, time_ns, CASE
                WHEN is_delta THEN value
                WHEN previous IS NULL THEN CASE WHEN start_ns <> 0 AND start_ns >= ? THEN value END
                WHEN start_ns <> previous_start OR (monotonic AND value < previous) THEN value
                ELSE value - previous
            END AS increase
            FROM paired WHERE time_ns >= ?
        )
        SELECT labels, (time_ns - ?) // ? AS step, fsum(increase) AS increase
        FROM increases WHERE increase IS NOT NULL GROUP BY ALL ORDER BY labels, step
    """
    grouped: dict[tuple[str, ...], list[tuple[int, float]]] = defaultdict(list)
    for row in store.sql(sql, params, order_joins=False).to_pylist():
        grouped[tuple(row["labels"])].append((row["step"], _per_step(agg, row["increase"], query.step_ns)))
    return _finish(query, grouped)


# Increases per series, in Python


@dataclass(frozen=True, slots=True, kw_only=True)
class _Point:
    start_ns: int
    time_ns: int
    value: Any  # float, _Explicit or _Exponential


_EXPLICIT_COLUMNS: Final = "count, sum, min, max, bucket_counts, explicit_bounds"
_EXPONENTIAL_COLUMNS: Final = (
    "count, sum, min, max, scale, zero_count, zero_threshold,"
    " positive_offset, positive_bucket_counts, negative_offset, negative_bucket_counts"
)

Increase = tuple[tuple[str, ...], int, Any]  # labels, time_ns, increase


def _increases(
    store: Store, query: _Query, columns: str, point: Callable[[dict[str, Any]], Any]
) -> Iterator[Increase]:
    """The increase each point adds, per series (see the module docstring), for points in the range."""
    lookback = TimeRange(start=query.time.start - timedelta(seconds=LOOKBACK_S), end=query.time.end)
    params: list[object] = []
    labels = query.labels(params)
    where = query.where(lookback, params)
    sql = f"""
        SELECT hash(service_name, scope_name, scope_version, resource_attributes, attributes,
                temporality, explicit_bounds) AS series,
            {labels} AS labels, temporality = 'delta' AS is_delta, coalesce(is_monotonic, true) AS monotonic,
            start_time_unix_nano AS start_ns, time_unix_nano AS time_ns, {columns}
        FROM metrics WHERE {where} ORDER BY time_unix_nano
    """
    series: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in store.sql(sql, params, order_joins=False).to_pylist():
        series[row["series"]].append(row)
    first_ns = query.time.start_unix_nano
    for rows in series.values():
        labels_of, is_delta, monotonic = tuple(rows[0]["labels"]), rows[0]["is_delta"], rows[0]["monotonic"]
        points = [
            _Point(start_ns=row["start_ns"], time_ns=row["time_ns"], value=value)
            for row in rows
            if (value := point(row)) is not None
        ]
        for time_ns, increase in _series_increases(points, is_delta, monotonic, first_ns):
            yield labels_of, time_ns, increase


def _series_increases(
    points: Iterable[_Point], is_delta: bool, monotonic: bool, first_ns: int
) -> Iterator[tuple[int, Any]]:
    previous: _Point | None = None
    for point in points:
        increase: Any = None
        if is_delta:
            increase = point.value
        elif previous is None:
            if point.start_ns != 0 and point.start_ns >= first_ns:
                increase = point.value  # the counter started in the range
        elif point.start_ns != previous.start_ns or (monotonic and _dropped(point.value, previous.value)):
            increase = point.value  # restarted: counted from zero
        else:
            increase = _minus(point.value, previous.value)
        previous = point
        if increase is not None and point.time_ns >= first_ns:
            yield point.time_ns, increase


def _series(
    query: _Query, increases: Iterable[Increase], value_of: Callable[[list[Any]], float | None]
) -> list[Series]:
    """Collects the increases per labels and step, and answers `value_of` them at each step."""
    steps: dict[tuple[tuple[str, ...], int], list[Any]] = defaultdict(list)
    for labels, time_ns, increase in increases:
        steps[labels, (time_ns - query.time.start_unix_nano) // query.step_ns].append(increase)
    grouped: dict[tuple[str, ...], list[tuple[int, float]]] = defaultdict(list)
    for (labels, step), points in steps.items():
        value = value_of(points)
        if value is not None:
            grouped[labels].append((step, value))
    return _finish(query, grouped)


def _per_step(agg: str, increase: float, step_ns: int) -> float:
    return increase / (step_ns / _NS) if agg == "rate" else increase


def _counter_point(row: dict[str, Any]) -> float | None:
    value = row["value"]
    return None if value is None else float(value)


def _dropped(current: Any, previous: Any) -> bool:
    if isinstance(current, float):
        return bool(current < previous)
    return bool(current.dropped_from(previous))


def _minus(current: Any, previous: Any) -> Any:
    return current - previous


# Histogram points and their sums


@dataclass(frozen=True, slots=True, kw_only=True)
class _Explicit:
    count: float
    sum: float | None
    minimum: float | None
    maximum: float | None
    counts: dict[float, float]  # upper bound (math.inf for the last bucket) -> count

    def dropped_from(self, previous: _Explicit) -> bool:
        return self.count < previous.count or any(
            count < previous.counts.get(bound, 0) for bound, count in self.counts.items()
        )

    def __sub__(self, previous: _Explicit) -> _Explicit:
        return replace(
            self,
            count=self.count - previous.count,
            sum=None if self.sum is None or previous.sum is None else self.sum - previous.sum,
            counts={bound: count - previous.counts.get(bound, 0) for bound, count in self.counts.items()},
        )


def _explicit_point(row: dict[str, Any]) -> _Explicit | None:
    bounds, counts = row["explicit_bounds"] or [], row["bucket_counts"]
    if row["count"] is None or counts is None or len(counts) != len(bounds) + 1:
        return None
    return _Explicit(
        count=row["count"],
        sum=row["sum"],
        minimum=row["min"],
        maximum=row["max"],
        counts=dict(zip([*bounds, math.inf], counts, strict=True)),
    )


@dataclass(slots=True, kw_only=True)
class _Stats:
    """What every histogram sum has: count, sum, and the bounds of the observations."""

    count: float = 0.0
    sum: float | None = 0.0
    minimum: float | None = math.inf
    maximum: float | None = -math.inf

    def add_stats(self, count: float, total: float | None, low: float | None, high: float | None) -> None:
        self.count += count
        self.sum = None if self.sum is None or total is None else self.sum + total
        self.minimum = None if self.minimum is None or low is None else min(self.minimum, low)
        self.maximum = None if self.maximum is None or high is None else max(self.maximum, high)


@dataclass(slots=True, kw_only=True)
class _ExplicitSum(_Stats):
    counts: dict[float, float] = field(default_factory=lambda: defaultdict(float))

    @classmethod
    def of(cls, points: Iterable[_Explicit]) -> _ExplicitSum:
        total = cls()
        for point in points:
            total.add_stats(point.count, point.sum, point.minimum, point.maximum)
            for bound, count in point.counts.items():
                total.counts[bound] += count
        return total

    def quantile(self, q: float) -> float | None:
        bounds = sorted(bound for bound in self.counts if bound != math.inf)
        counts = [self.counts[bound] for bound in bounds] + [self.counts.get(math.inf, 0.0)]
        return histogram_quantile(q, bounds, counts, minimum=self.minimum, maximum=self.maximum)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Exponential:
    count: float
    sum: float | None
    minimum: float | None
    maximum: float | None
    scale: int
    zero_count: float
    zero_threshold: float
    positive: dict[int, float]
    negative: dict[int, float]

    def at_scale(self, scale: int) -> _Exponential:
        if scale >= self.scale:
            return self
        return replace(
            self,
            scale=scale,
            positive=_downscale(self.positive, self.scale - scale),
            negative=_downscale(self.negative, self.scale - scale),
        )

    def dropped_from(self, previous: _Exponential) -> bool:
        scale = min(self.scale, previous.scale)
        current, previous = self.at_scale(scale), previous.at_scale(scale)
        return (
            current.count < previous.count
            or current.zero_count < previous.zero_count
            or any(c < previous.positive.get(k, 0) for k, c in current.positive.items())
            or any(c < previous.negative.get(k, 0) for k, c in current.negative.items())
        )

    def __sub__(self, previous: _Exponential) -> _Exponential:
        scale = min(self.scale, previous.scale)
        current, previous = self.at_scale(scale), previous.at_scale(scale)
        return replace(
            current,
            count=current.count - previous.count,
            sum=None if current.sum is None or previous.sum is None else current.sum - previous.sum,
            zero_count=current.zero_count - previous.zero_count,
            positive={k: c - previous.positive.get(k, 0) for k, c in current.positive.items()},
            negative={k: c - previous.negative.get(k, 0) for k, c in current.negative.items()},
        )


def _downscale(buckets: Mapping[int, float], by: int) -> dict[int, float]:
    merged: dict[int, float] = defaultdict(float)
    for index, count in buckets.items():
        merged[index >> by] += count
    return dict(merged)


def _exponential_point(row: dict[str, Any]) -> _Exponential | None:
    if row["count"] is None or row["scale"] is None:
        return None

    def buckets(offset: int | None, counts: list[int] | None) -> dict[int, float]:
        return {(offset or 0) + i: float(count) for i, count in enumerate(counts or []) if count}

    return _Exponential(
        count=row["count"],
        sum=row["sum"],
        minimum=row["min"],
        maximum=row["max"],
        scale=row["scale"],
        zero_count=row["zero_count"] or 0,
        zero_threshold=row["zero_threshold"] or 0.0,
        positive=buckets(row["positive_offset"], row["positive_bucket_counts"]),
        negative=buckets(row["negative_offset"], row["negative_bucket_counts"]),
    )


@dataclass(slots=True, kw_only=True)
class _ExponentialSum(_Stats):
    scale: int = 20
    zero_count: float = 0.0
    zero_threshold: float = 0.0
    positive: dict[int, float] = field(default_factory=dict)
    negative: dict[int, float] = field(default_factory=dict)

    @classmethod
    def of(cls, points: Sequence[_Exponential]) -> _ExponentialSum:
        total = cls(scale=min(point.scale for point in points))
        for point in points:
            total.add(point)
        return total

    def add(self, point: _Exponential) -> None:
        self.add_stats(point.count, point.sum, point.minimum, point.maximum)
        if point.scale < self.scale:
            self.positive = _downscale(self.positive, self.scale - point.scale)
            self.negative = _downscale(self.negative, self.scale - point.scale)
            self.scale = point.scale
        point = point.at_scale(self.scale)
        self.zero_count += point.zero_count
        self.zero_threshold = max(self.zero_threshold, point.zero_threshold)
        for mine, theirs in ((self.positive, point.positive), (self.negative, point.negative)):
            for index, count in theirs.items():
                mine[index] = mine.get(index, 0.0) + count

    def quantile(self, q: float) -> float | None:
        return exponential_histogram_quantile(
            q, scale=self.scale, zero_count=self.zero_count, positive=self.positive,
            negative=self.negative, zero_threshold=self.zero_threshold,
            minimum=self.minimum, maximum=self.maximum,
        )  # fmt: skip


def _histogram_value(agg: str, total: _ExplicitSum | _ExponentialSum, step_ns: int) -> float | None:
    if agg in QUANTILES:
        return total.quantile(QUANTILES[agg])
    if agg in ("count", "increase"):
        return total.count
    if agg == "rate":
        return total.count / (step_ns / _NS)
    if agg == "sum":
        return total.sum
    return total.sum / total.count if total.sum is not None and total.count > 0 else None
