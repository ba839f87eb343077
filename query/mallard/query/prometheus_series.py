"""mallard's metrics as Prometheus series: names, labels, the metrics of a range, their stored points.

**Names.** Every metric with a point in the range a selector reads is a Prometheus metric named after
it, each character outside `[a-zA-Z0-9_:]` replaced by `_` (`http.server.duration` →
`http_server_duration`); a histogram (explicit or exponential) is three: `<name>_bucket` (cumulative
counts, one series per `le` bound), `<name>_count` and `<name>_sum`. A `__name__` matcher also
matches the exact OTel name (`{__name__="http.server.duration_count"}`). No unit or `_total` suffix
is added. Summaries are not exposed.

**Labels.** The point attributes, names normalised alike (`[^a-zA-Z0-9_]` → `_`, a leading digit gets
a `_`; keys that normalise to one name join their values with `;`), then `job` = the service name and
`instance` = the resource's `service.instance.id` (both override attributes of those names), and
`__name__`. An empty value is an absent label. Other resource attributes and the scope are not
labels, so stored series that differ only there are one Prometheus series.

**Histograms.** A `<name>_bucket` value is a `Histogram`: the sum of whole histogram points (or of
their increases), which becomes one number per `le` only when something needs that (`buckets()`),
so that `histogram_quantile` over it is `mallard.query.metrics`' histogram quantile (bucket merging,
`min`/`max` narrowing, log-linear within exponential buckets). An exponential histogram's `le` bounds
are its buckets' upper bounds (`base^(k+1)`), so they vary with its scale and offsets.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from mallard.query.engine import Store
from mallard.query.histograms import _bound, histogram_quantile
from mallard.query.metrics import (
    _EXPLICIT_COLUMNS,
    _EXPONENTIAL_COLUMNS,
    _counter_point,
    _Explicit,
    _explicit_point,
    _ExplicitSum,
    _exponential_point,
    _ExponentialSum,
    _Point,
    metric_names,
)
from mallard.query.promql import Matcher, VectorSelector
from mallard.query.timerange import TimeRange, from_unix_nano, partition_predicate

_PARTS: Final = {
    "gauge": (("", "value"),),
    "sum": (("", "value"),),
    "histogram": (("_bucket", "bucket"), ("_count", "count"), ("_sum", "sum")),
    "exponential_histogram": (("_bucket", "bucket"), ("_count", "count"), ("_sum", "sum")),
}
_COLUMNS: Final = {
    "gauge": "value",
    "sum": "value",
    "histogram": _EXPLICIT_COLUMNS,
    "exponential_histogram": _EXPONENTIAL_COLUMNS,
}
_POINT: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "gauge": _counter_point,
    "sum": _counter_point,
    "histogram": _explicit_point,
    "exponential_histogram": _exponential_point,
}

LabelKey = tuple[tuple[str, str], ...]
STORED_TIMES: Final = (0, 9_200_000_000_000_000_000)  # ns: what BIGINT `time_unix_nano` can hold


# --- names and labels -------------------------------------------------------------------------


def prometheus_metric_name(name: str) -> str:
    """An OTel metric name as a PromQL identifier: every character outside `[a-zA-Z0-9_:]` → `_`."""
    normalised = "".join(c if c.isascii() and (c.isalnum() or c in "_:") else "_" for c in name)
    return f"_{normalised}" if normalised[:1].isdigit() else normalised


def prometheus_label_name(key: str) -> str:
    """An attribute key as a label name: every character outside `[a-zA-Z0-9_]` → `_`."""
    normalised = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in key)
    return f"_{normalised}" if normalised[:1].isdigit() or not normalised else normalised


def series_labels(
    prom_name: str,
    service_name: str | None,
    attributes: Iterable[tuple[str, str | None]],
    instance: str | None,
) -> dict[str, str]:
    """The Prometheus labels of one stored series (see the module docstring)."""
    labels: dict[str, str] = {}
    for key, value in sorted(attributes):
        if value:
            name = prometheus_label_name(key)
            labels[name] = f"{labels[name]};{value}" if name in labels else value
    if service_name:
        labels["job"] = service_name
    if instance:
        labels["instance"] = instance
    labels["__name__"] = prom_name
    return labels


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: shortest digits, no exponent, `NaN`, `+Inf`, `-Inf`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return format(Decimal(repr(value)).normalize(), "f")


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalogued:
    """One Prometheus metric: an OTel metric, or one part (`_bucket`, `_count`, `_sum`) of a histogram."""

    prom_name: str
    exact_name: str  # the OTel name plus the part's suffix
    otel_name: str
    metric_type: str
    part: str  # value, bucket, count or sum

    def selected_by(self, name_matchers: Sequence[Matcher]) -> bool:
        return all(m.matches(self.prom_name) for m in name_matchers) or all(
            m.matches(self.exact_name) for m in name_matchers
        )


def catalog(store: Store, lo_ns: int, hi_ns: int) -> list[Catalogued]:
    """The Prometheus metrics with a point in `[lo_ns, hi_ns]`, by name."""
    lo_ns, hi_ns = max(lo_ns, STORED_TIMES[0]), min(hi_ns, STORED_TIMES[1])
    if hi_ns < lo_ns:
        return []
    found = []
    for info in metric_names(store, start=from_unix_nano(lo_ns), end=_after(hi_ns)):
        for suffix, part in _PARTS.get(info.type, ()):
            found.append(
                Catalogued(
                    prom_name=prometheus_metric_name(info.name) + suffix,
                    exact_name=info.name + suffix,
                    otel_name=info.name,
                    metric_type=info.type,
                    part=part,
                )
            )
    return sorted(found, key=lambda entry: (entry.prom_name, entry.otel_name))


def _after(nanoseconds: int) -> datetime:
    return from_unix_nano(nanoseconds + 1_000)  # the exclusive end just after a microsecond-truncated time


def _range_sql(lo_ns: int, hi_ns: int, params: list[object]) -> str:
    lo_ns, hi_ns = max(lo_ns, STORED_TIMES[0]), min(hi_ns, STORED_TIMES[1])
    time = TimeRange(start=from_unix_nano(lo_ns), end=_after(hi_ns))
    params.extend((lo_ns, hi_ns))
    return f"{partition_predicate(time)} AND time_unix_nano >= ? AND time_unix_nano <= ?"


def label_sets(
    store: Store, selectors: Sequence[VectorSelector], lo_ns: int, hi_ns: int
) -> list[dict[str, str]]:
    """The label sets (with `__name__`) of the series that match any of `selectors` in `[lo_ns, hi_ns]`.

    An exponential histogram's `_bucket` series are listed without `le` (their bounds vary by point).
    """
    entries = catalog(store, lo_ns, hi_ns)
    wanted = [
        (selector, [e for e in entries if e.selected_by(name_matchers(selector))]) for selector in selectors
    ]
    names = sorted({e.otel_name for _, chosen in wanted for e in chosen})
    if not names:
        return []
    params: list[object] = [names]
    sql = f"""
        SELECT DISTINCT metric_name, metric_type, service_name, attributes,
            resource_attributes['service.instance.id'] AS instance, explicit_bounds
        FROM metrics WHERE list_contains(?, metric_name) AND {_range_sql(lo_ns, hi_ns, params)}
    """
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in store.sql(sql, params, order_joins=False).to_pylist():
        rows[row["metric_name"], row["metric_type"]].append(row)
    found: dict[LabelKey, dict[str, str]] = {}
    for selector, chosen in wanted:
        others = [m for m in selector.matchers if m.name != "__name__"]
        for entry in chosen:
            for row in rows[entry.otel_name, entry.metric_type]:
                labels = series_labels(
                    entry.prom_name, row["service_name"], row["attributes"], row["instance"]
                )
                variants = [labels]
                if entry.part == "bucket" and entry.metric_type == "histogram":
                    bounds = [*(row["explicit_bounds"] or ()), math.inf]
                    variants = [{**labels, "le": format_value(bound)} for bound in bounds]
                for variant in variants:
                    if all(m.matches(variant.get(m.name, "")) for m in others):
                        found[label_key(variant)] = variant
    return [found[key] for key in sorted(found)]


def name_matchers(selector: VectorSelector) -> list[Matcher]:
    return [m for m in selector.matchers if m.name == "__name__"]


def label_key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


# --- stored series ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSeries:
    """One stored series of a catalogued metric: its labels and its points in the read range, oldest
    first (float values, or `_Explicit`/`_Exponential` histogram points)."""

    entry: Catalogued
    labels: dict[str, str]
    is_delta: bool
    monotonic: bool
    points: list[_Point]


def read_series(store: Store, entry: Catalogued, lo_ns: int, hi_ns: int) -> list[StoredSeries]:
    """The stored series of `entry` with their points in `[lo_ns, hi_ns]`, oldest first."""
    params: list[object] = [entry.otel_name, entry.metric_type]
    sql = f"""
        SELECT hash(service_name, scope_name, scope_version, resource_attributes, attributes,
                temporality, explicit_bounds) AS series,
            service_name, attributes, resource_attributes['service.instance.id'] AS instance,
            coalesce(temporality = 'delta', false) AS is_delta, coalesce(is_monotonic, true) AS monotonic,
            start_time_unix_nano AS start_ns, time_unix_nano AS time_ns, {_COLUMNS[entry.metric_type]}
        FROM metrics
        WHERE metric_name = ? AND metric_type = ? AND {_range_sql(lo_ns, hi_ns, params)} AND (flags & 1) = 0
        ORDER BY time_unix_nano
    """
    point_of = _POINT[entry.metric_type]
    found: dict[int, StoredSeries] = {}
    for row in store.sql(sql, params, order_joins=False).to_pylist():
        series = found.get(row["series"])
        if series is None:
            labels = series_labels(entry.prom_name, row["service_name"], row["attributes"], row["instance"])
            series = StoredSeries(
                entry=entry, labels=labels, is_delta=row["is_delta"], monotonic=row["monotonic"], points=[]
            )
            found[row["series"]] = series
        value = point_of(row)
        if value is not None:
            series.points.append(_Point(start_ns=row["start_ns"], time_ns=row["time_ns"], value=value))
    return list(found.values())


# --- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Histogram:
    """The sum of histogram points (or of their increases), divided by `per` (a rate's window in s)."""

    points: tuple[Any, ...]  # `_Explicit` or `_Exponential` points of one kind
    per: float = 1.0

    @property
    def kind(self) -> tuple[type, float]:
        """What two histograms must share to be added: the kind of their points and `per`."""
        return type(self.points[0]), self.per

    def total(self) -> _ExplicitSum | _ExponentialSum:
        if isinstance(self.points[0], _Explicit):
            return _ExplicitSum.of(self.points)
        return _ExponentialSum.of(self.points)

    def quantile(self, q: float) -> float:
        if math.isnan(q) or q < 0 or q > 1:
            return math.nan if math.isnan(q) else math.copysign(math.inf, q)
        answer = self.total().quantile(q)
        return math.nan if answer is None else answer

    def buckets(self) -> list[tuple[float, float]]:
        """`(le, cumulative count)` per bucket upper bound, ascending, ending with `+Inf`."""
        total = self.total()
        if isinstance(total, _ExplicitSum):
            counts = sorted(total.counts.items())
        else:
            counts = [(-_bound(k, total.scale), c) for k, c in sorted(total.negative.items(), reverse=True)]
            if total.zero_count:
                counts.append((total.zero_threshold, total.zero_count))
            counts.extend((_bound(k + 1, total.scale), c) for k, c in sorted(total.positive.items()))
            counts.append((math.inf, 0.0))
        cumulative, running = [], 0.0
        for bound, count in counts:
            running += count
            cumulative.append((bound, running / self.per))
        return cumulative


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' `histogram_quantile` over the cumulative `(le, count)` buckets of one series:
    NaN without a `+Inf` bucket or observations, counts forced not to decrease, linear within a bucket."""
    if math.isnan(q) or q < 0 or q > 1:
        return math.nan if math.isnan(q) else math.copysign(math.inf, q)
    merged: dict[float, float] = defaultdict(float)
    for bound, count in buckets:
        merged[bound] += count
    bounds = sorted(merged)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return math.nan
    counts, previous = [], 0.0
    for bound in bounds:
        cumulative = max(merged[bound], previous)
        counts.append(cumulative - previous)
        previous = cumulative
    answer = histogram_quantile(q, bounds[:-1], counts)
    return math.nan if answer is None else answer
