"""Evaluation of a PromQL tree (`mallard.query.promql`) over the `metrics` table of a store.

Metrics, names and labels are those of `mallard.query.prometheus_series`. Evaluation times are
milliseconds; a query is evaluated at each of them:

- an instant selector answers, per series, the newest point in `(t - 5m, t]` (offset applied);
- `increase(v[w])` adds up the increases of each series' points in `(t - w, t]` with
  `mallard.query.metrics`' counter semantics: a delta point adds its value, a cumulative point its
  difference from the series' previous point (which may lie up to 5 minutes before the window), a
  reset or restart counts from zero, and a counter that started in the window counts its first
  value. There is no extrapolation to the window's ends, so increases over consecutive windows add
  up to the counter's total. `rate(v[w])` divides by `w`. A series with no increase in the window
  (no point there, or only the first point of a counter that started before it) has no value at `t`;
- stored series with the same labels merge: their increases add up, an instant selector takes the
  newest point;
- `Histogram` values stay whole through `sum` when `le` is kept (`sum by (le)`, `sum without (x)`) and
  through `histogram_quantile`; anything else (an output, arithmetic, another aggregation, an `le`
  matcher) first turns them into one series per `le`, which `histogram_quantile` answers with
  Prometheus' algorithm;
- arithmetic drops `__name__`; vector-vector arithmetic matches series with identical labels.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from mallard.query.engine import Store
from mallard.query.errors import QueryError
from mallard.query.metrics import LOOKBACK_S, _series_increases
from mallard.query.prometheus_series import (
    Catalogued,
    Histogram,
    LabelKey,
    StoredSeries,
    bucket_quantile,
    catalog,
    format_value,
    label_key,
    name_matchers,
    read_series,
)
from mallard.query.promql import (
    Aggregate,
    Binary,
    Call,
    Expr,
    Matcher,
    MatrixSelector,
    NumberLiteral,
    Unary,
    VectorSelector,
    value_type,
)

LOOKBACK_MS: Final = 300_000  # an instant selector's lookback, as Prometheus' default
_NS_PER_MS: Final = 1_000_000


Value = float | Histogram


@dataclass(frozen=True, slots=True)
class Element:
    """One series of an instant vector: its labels and its value at each evaluation step index."""

    labels: dict[str, str]
    values: Mapping[int, Value] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Samples:
    """One series of a range vector (a top-level `selector[w]`): `(time ms, value)` by time."""

    labels: dict[str, str]
    samples: list[tuple[int, float]]


Result = list[float] | list[Element] | list[Samples]  # scalar per step, instant vector, range vector


class EvaluationError(QueryError):
    """A query that parses but cannot be answered (duplicate series in a match); HTTP 422."""


class QueryTimeout(QueryError):
    """The evaluation ran past its deadline; HTTP 503."""


# --- evaluation -------------------------------------------------------------------------------


def evaluate(store: Store, expr: Expr, times_ms: Sequence[int], *, deadline: float) -> Result:
    """`expr` at each of `times_ms`; `deadline` is a `time.monotonic()` value.

    A range vector (`selector[w]`) is answered at `times_ms[0]` only: the raw samples of the window.
    Raises `EvaluationError`, `QueryTimeout`, or `QueryError` when the store cannot be read.
    """
    return _Evaluator(store, times_ms, deadline).top(expr)


class _Evaluator:
    def __init__(self, store: Store, times_ms: Sequence[int], deadline: float) -> None:
        self.store = store
        self.times_ms = list(times_ms)
        self.deadline = deadline
        self.catalogs: dict[tuple[int, int], list[Catalogued]] = {}

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise QueryTimeout("query timed out in expression evaluation")

    def top(self, expr: Expr) -> Result:
        if isinstance(expr, MatrixSelector):
            return self.samples(expr)
        if value_type(expr) == "scalar":
            return self.scalar(expr)
        elements = [e for e in _materialise(self.vector(expr)) if e.values]
        keys = [label_key(e.labels) for e in elements]
        if len(set(keys)) != len(keys):
            raise EvaluationError("vector cannot contain metrics with the same labelset")
        return sorted(elements, key=lambda e: label_key(e.labels))

    # scalars

    def scalar(self, expr: Expr) -> list[float]:
        if isinstance(expr, NumberLiteral):
            return [expr.value] * len(self.times_ms)
        if isinstance(expr, Unary):
            return [-value for value in self.scalar(expr.expr)]
        assert isinstance(expr, Binary)
        return [
            _arithmetic(expr.op, a, b)
            for a, b in zip(self.scalar(expr.lhs), self.scalar(expr.rhs), strict=True)
        ]

    # instant vectors

    def vector(self, expr: Expr) -> list[Element]:
        self.check()
        if isinstance(expr, VectorSelector):
            return self.select(expr)
        if isinstance(expr, Aggregate):
            return self.aggregate(expr)
        if isinstance(expr, Unary):
            return [
                Element(_without_name(e.labels), {i: -_float(v) for i, v in e.values.items()})
                for e in _materialise(self.vector(expr.expr))
            ]
        if isinstance(expr, Binary):
            return self.binary(expr)
        assert isinstance(expr, Call)
        if expr.function == "histogram_quantile":
            return self.histogram_quantile(self.scalar(expr.args[0]), self.vector(expr.args[1]))
        matrix = expr.args[0]
        assert isinstance(matrix, MatrixSelector)
        return self.increase(matrix, per_second=expr.function == "rate")

    def stored(self, selector: VectorSelector, lo_ns: int, hi_ns: int) -> list[StoredSeries]:
        """The stored series the selector's name and label matchers (but `le`) pick, points in range."""
        if (lo_ns, hi_ns) not in self.catalogs:
            self.catalogs[lo_ns, hi_ns] = catalog(self.store, lo_ns, hi_ns)
        names = name_matchers(selector)
        others = [m for m in selector.matchers if m.name not in ("__name__", "le")]
        found: list[StoredSeries] = []
        for entry in self.catalogs[lo_ns, hi_ns]:
            if entry.selected_by(names):
                self.check()
                for series in read_series(self.store, entry, lo_ns, hi_ns):
                    if all(m.matches(series.labels.get(m.name, "")) for m in others):
                        found.append(series)
        return found

    def select(self, selector: VectorSelector) -> list[Element]:
        """Per series and step, the newest point in `(t - offset - 5m, t - offset]`."""
        offset_ns = selector.offset_ms * _NS_PER_MS
        ends = [t * _NS_PER_MS - offset_ns for t in self.times_ms]
        newest: dict[_SeriesKey, tuple[dict[str, str], dict[int, tuple[int, Value]]]] = {}
        for series in self.stored(selector, ends[0] - LOOKBACK_MS * _NS_PER_MS + 1, ends[-1]):
            times = [point.time_ns for point in series.points]
            _, values = newest.setdefault(_series_key(series), (series.labels, {}))
            for index, end in enumerate(ends):
                at = bisect_right(times, end) - 1
                if at < 0 or times[at] <= end - LOOKBACK_MS * _NS_PER_MS:
                    continue
                value = _project(series.entry.part, series.points[at].value)
                if value is not None and (index not in values or values[index][0] <= times[at]):
                    values[index] = (times[at], value)
        elements = [
            Element(labels, {i: value for i, (_, value) in values.items()})
            for labels, values in newest.values()
        ]
        return _match_le(selector, elements)

    def increase(self, matrix: MatrixSelector, *, per_second: bool) -> list[Element]:
        """`increase` (or `rate`) of each series at each step: its increases in the window, added up."""
        window_ns = matrix.range_ms * _NS_PER_MS
        offset_ns = matrix.vector.offset_ms * _NS_PER_MS
        ends = [t * _NS_PER_MS - offset_ns for t in self.times_ms]
        first_ns = ends[0] - window_ns
        per = matrix.range_ms / 1000 if per_second else 1.0
        merged: dict[_SeriesKey, tuple[dict[str, str], dict[int, list[Any]]]] = {}
        for series in self.stored(matrix.vector, first_ns - LOOKBACK_S * 1_000_000_000, ends[-1]):
            self.check()
            increases = list(_series_increases(series.points, series.is_delta, series.monotonic, first_ns))
            times = [time_ns for time_ns, _ in increases]
            _, values = merged.setdefault(_series_key(series), (series.labels, defaultdict(list)))
            for index, end in enumerate(ends):
                low, high = bisect_right(times, end - window_ns), bisect_right(times, end)
                values[index].extend((series.entry.part, increase) for _, increase in increases[low:high])
        elements = []
        for labels, values in merged.values():
            computed = {i: _window_value(parts, per) for i, parts in values.items() if parts}
            elements.append(
                Element(_without_name(labels), {i: v for i, v in computed.items() if v is not None})
            )
        return _match_le(matrix.vector, elements)

    def samples(self, matrix: MatrixSelector) -> list[Samples]:
        """The raw samples in `(t - offset - w, t - offset]` of each series, for the first time t."""
        end = (self.times_ms[0] - matrix.vector.offset_ms) * _NS_PER_MS
        start = end - matrix.range_ms * _NS_PER_MS
        merged: dict[LabelKey, tuple[dict[str, str], list[tuple[int, float]]]] = {}
        for series in self.stored(matrix.vector, start + 1, end):
            for point in series.points:
                value = _project(series.entry.part, point.value)
                for element in _materialise(
                    [Element(series.labels, {0: value})] if value is not None else []
                ):
                    if all(m.matches(element.labels.get(m.name, "")) for m in _le_matchers(matrix.vector)):
                        _, samples = merged.setdefault(label_key(element.labels), (element.labels, []))
                        samples.append((point.time_ns // _NS_PER_MS, _float(element.values[0])))
        return [Samples(labels, sorted(samples)) for _, (labels, samples) in sorted(merged.items())]

    # operators

    def aggregate(self, node: Aggregate) -> list[Element]:
        elements = self.vector(node.expr)
        keeps_le = ("le" in node.grouping) != node.without
        kinds = {v.kind if isinstance(v, Histogram) else None for e in elements for v in e.values.values()}
        if not (node.op == "sum" and keeps_le and len(kinds) <= 1):  # whole histograms of one kind
            elements = _materialise(elements)
        groups: dict[LabelKey, tuple[dict[str, str], dict[int, list[Value]]]] = {}
        for element in elements:
            if node.without:
                labels = {
                    k: v for k, v in element.labels.items() if k not in node.grouping and k != "__name__"
                }
            else:
                labels = {k: element.labels[k] for k in node.grouping if k in element.labels}
            _, values = groups.setdefault(label_key(labels), (labels, defaultdict(list)))
            for index, value in element.values.items():
                values[index].append(value)
        return [
            Element(labels, {i: _aggregate(node.op, members) for i, members in values.items()})
            for labels, values in groups.values()
        ]

    def binary(self, node: Binary) -> list[Element]:
        if value_type(node.lhs) == "scalar":
            scalars, vector = self.scalar(node.lhs), _materialise(self.vector(node.rhs))
            return [
                Element(
                    _without_name(e.labels),
                    {i: _arithmetic(node.op, scalars[i], _float(v)) for i, v in e.values.items()},
                )
                for e in vector
            ]
        left = _materialise(self.vector(node.lhs))
        if value_type(node.rhs) == "scalar":
            scalars = self.scalar(node.rhs)
            return [
                Element(
                    _without_name(e.labels),
                    {i: _arithmetic(node.op, _float(v), scalars[i]) for i, v in e.values.items()},
                )
                for e in left
            ]
        right = _unique(_materialise(self.vector(node.rhs)), "right")
        answer = []
        for key, element in _unique(left, "left").items():
            if key in right:
                other = right[key].values
                values = {
                    i: _arithmetic(node.op, _float(v), _float(other[i]))
                    for i, v in element.values.items()
                    if i in other
                }
                answer.append(Element(_without_name(element.labels), values))
        return answer

    def histogram_quantile(self, quantiles: list[float], elements: list[Element]) -> list[Element]:
        answer = []
        buckets: dict[LabelKey, tuple[dict[str, str], dict[int, list[tuple[float, float]]]]] = {}
        for element in elements:
            labels = _without_name(element.labels)
            whole = {i: v for i, v in element.values.items() if isinstance(v, Histogram)}
            if whole:
                answer.append(Element(labels, {i: v.quantile(quantiles[i]) for i, v in whole.items()}))
            if "le" not in labels:
                continue
            bound = _parse_le(labels.pop("le"))
            if bound is None:
                continue
            _, values = buckets.setdefault(label_key(labels), (labels, defaultdict(list)))
            for index, value in element.values.items():
                if not isinstance(value, Histogram):
                    values[index].append((bound, value))
        for labels, values in buckets.values():
            answer.append(Element(labels, {i: bucket_quantile(quantiles[i], b) for i, b in values.items()}))
        return answer


# --- reading ----------------------------------------------------------------------------------


def _project(part: str, point: Any) -> Value | None:
    """The value a metric part takes from a stored point (float, or a histogram point)."""
    if part == "value":
        return float(point)
    if part == "bucket":
        return Histogram((point,))
    if part == "count":
        return float(point.count)
    return None if point.sum is None else float(point.sum)


def _window_value(parts: list[tuple[str, Any]], per: float) -> Value | None:
    """The increases of one window (`(part, increase)` pairs) added up, divided by `per`."""
    part = parts[0][0]
    if part == "bucket":
        return Histogram(tuple(increase for _, increase in parts), per)
    values = [_project(part, increase) for _, increase in parts]
    if any(value is None for value in values):
        return None
    return math.fsum(_float(value) for value in values if value is not None) / per


# --- helpers ----------------------------------------------------------------------------------


_SeriesKey = tuple[LabelKey, str, str]


def _series_key(series: StoredSeries) -> _SeriesKey:
    """Stored series merge when their labels, part and type agree (a name may have two types)."""
    return label_key(series.labels), series.entry.part, series.entry.metric_type


def _float(value: Value | None) -> float:
    assert isinstance(value, float), value
    return value


def _without_name(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "__name__"}


def _le_matchers(selector: VectorSelector) -> list[Matcher]:
    return [m for m in selector.matchers if m.name == "le"]


def _match_le(selector: VectorSelector, elements: list[Element]) -> list[Element]:
    matchers = _le_matchers(selector)
    if not matchers:
        return elements
    return [e for e in _materialise(elements) if all(m.matches(e.labels.get("le", "")) for m in matchers)]


def _materialise(elements: list[Element]) -> list[Element]:
    """Histogram values as one series per `le` (cumulative counts); float series as they are."""
    answer = []
    for element in elements:
        if not any(isinstance(v, Histogram) for v in element.values.values()):
            answer.append(element)
            continue
        by_bound: dict[float, dict[int, Value]] = defaultdict(dict)
        for index, value in element.values.items():
            if isinstance(value, Histogram):
                for bound, count in value.buckets():
                    by_bound[bound][index] = count
        for bound, values in sorted(by_bound.items()):
            answer.append(Element({**element.labels, "le": format_value(bound)}, values))
    return answer


def _unique(elements: list[Element], side: str) -> dict[LabelKey, Element]:
    found: dict[LabelKey, Element] = {}
    for element in elements:
        key = label_key(_without_name(element.labels))
        if key in found and found[key].values.keys() & element.values.keys():
            raise EvaluationError(
                f"found duplicate series for the match group {dict(key)}"
                f" on the {side} hand-side of the operation"
            )
        found[key] = (
            Element(element.labels, {**found[key].values, **element.values}) if key in found else element
        )
    return found


def _arithmetic(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.copysign(math.inf, a) * math.copysign(1, b)
    return a / b


def _aggregate(op: str, members: list[Value]) -> Value:
    if isinstance(members[0], Histogram):  # sum keeping `le`, one window length
        points = tuple(p for member in members if isinstance(member, Histogram) for p in member.points)
        return Histogram(points, members[0].per)
    values = [_float(member) for member in members]
    if op == "count":
        return float(len(values))
    if op == "sum":
        return math.fsum(values)
    if op == "avg":
        return math.fsum(values) / len(values)
    numbers = [value for value in values if not math.isnan(value)] or values
    return min(numbers) if op == "min" else max(numbers)


def _parse_le(text: str) -> float | None:
    try:
        return float(text.replace("Inf", "inf"))
    except ValueError:
        return None
