"""Typed model-quality queries over a `Store`: `model_quality`, `feature_drift`, `prediction_distribution`.

They read the `ml.prediction` and `ml.label` events that `mallard.instrumentation.quality` writes to
`logs` (see that module for the attributes). Everything is aggregated in DuckDB; no raw rows come back.

- A prediction is identified by (`ml.model.name`, `ml.prediction.id`); logged twice, the later one
  counts. A label joins the predictions with its `ml.prediction.id` (and its `ml.model.name`, when it
  has one); logged twice, the later one (by event time, then observed time) wins.
- Classes are compared as stored text (`docs/storage.md`): `1`, `true` and `"1"` as `1`, `true` and
  `1`, so log a prediction and its label with the same type.
- Time ranges are half-open, `[start, end)`, on the prediction's event time; either end may be open
  (None). Labels are read from `start` on, with no upper bound (they come later).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from mallard.query.engine import Store
from mallard.query.timerange import InvalidArgument, partition_predicate, time_range, to_unix_nano

PREDICTION_EVENT: Final = "ml.prediction"
LABEL_EVENT: Final = "ml.label"
FEATURE_PREFIX: Final = "ml.feature."
DEFAULT_POSITIVE: Final = ("1", "true")  # the stored text of 1 and True
PSI_EPSILON: Final = 1e-4  # the share a bin empty on one side counts with, so that PSI stays finite
MAX_BINS: Final = 100
_US = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelQuality:
    """Quality of one model version in one time bucket, for one segment or (segment None) all."""

    model: str
    version: str
    segment: str | None  # None: every prediction of the bucket, with or without a segment
    bucket_start: datetime | None  # None when no step was asked for (one bucket)
    predictions: int
    labelled: int  # predictions with a label
    evaluated: int  # of those, with a prediction value: the denominator of accuracy
    correct: int
    accuracy: float | None  # None when nothing was evaluated
    true_positives: int  # of the positive class (`positive_label`), one-vs-rest
    false_positives: int
    false_negatives: int
    true_negatives: int
    precision: float | None  # None when nothing was predicted positive
    recall: float | None  # None when no label is positive
    f1: float | None  # 2·tp / (2·tp + fp + fn); None when that has no denominator
    macro_f1: float | None  # mean of the per-class F1 over the classes predicted or labelled
    classes: int  # classes predicted or labelled among the evaluated predictions
    label_delay_p50_s: float | None  # median seconds from prediction to its (winning) label


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureDrift:
    """How the distribution of one feature moved from the baseline window to the current one."""

    feature: str  # the name after `ml.feature.`
    kind: str  # 'numeric' (every value int or double) or 'categorical' (as text)
    baseline_count: int  # values in the baseline window
    current_count: int
    psi: float | None  # population stability index; None when a window has no value
    ks: float | None  # two-sample Kolmogorov-Smirnov statistic; numeric features only


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictionDistribution:
    """What one model version predicted in a range."""

    version: str
    predictions: int
    classes: dict[str, int]  # prediction value (as text) → count; without the score-only ones
    scored: int  # predictions with a score
    mean_score: float | None
    score_edges: tuple[float, ...]  # bins + 1 edges, shared by every version of the answer
    score_counts: tuple[int, ...]  # per bin; the last bin includes its upper edge


def model_quality(
    store: Store,
    *,
    model: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    step_s: float | None = None,
    positive_label: str | int | bool | None = None,
) -> list[ModelQuality]:
    """Accuracy, precision, recall, F1 and macro-F1 per model, version and time bucket (of `step_s`
    seconds from `start`, or from the epoch without one; one bucket when None), for each segment and
    for all (`segment` None). `positive_label` is the positive class of precision/recall/F1; by
    default `1` or `True`. Sorted by model, version, bucket, then segment (all first)."""
    positives = list(DEFAULT_POSITIVE) if positive_label is None else [_class_text(positive_label)]
    step_us = _step_us(step_s)
    params: list[object] = []
    where = _time_terms(start, end, params)
    if model is not None:
        where.append("attributes['ml.model.name'] = ?")
        params.append(model)
    origin_us = 0 if start is None else to_unix_nano(start) // 1_000
    bucket = (
        "0" if step_us is None else f"({origin_us} + (epoch_us(time) - {origin_us}) // {step_us} * {step_us})"
    )
    label_where = _time_terms(start, None, params)
    params.extend((positives, positives))
    query = f"""
        WITH predictions AS (
            SELECT attributes['ml.model.name'] AS model, attributes['ml.model.version'] AS version,
                attributes['ml.prediction.id'] AS id, attributes['ml.prediction.value'] AS predicted,
                attributes['ml.segment'] AS segment, epoch_us(time) AS t, {bucket} AS bucket
            FROM logs WHERE event_name = '{PREDICTION_EVENT}' AND {" AND ".join([*where, "true"])}
            QUALIFY row_number() OVER (
                PARTITION BY model, id ORDER BY time DESC, observed_time DESC, version DESC) = 1
        ), labels AS (
            SELECT attributes['ml.prediction.id'] AS id, attributes['ml.model.name'] AS model,
                attributes['ml.label.value'] AS label, epoch_us(time) AS t, observed_time
            FROM logs WHERE event_name = '{LABEL_EVENT}' AND {" AND ".join([*label_where, "true"])}
        ), joined AS (
            SELECT p.model, p.version, p.segment, p.bucket, p.predicted, l.label, l.t - p.t AS delay_us,
                l.label IS NOT NULL AND p.predicted IS NOT NULL AS evaluated,
                list_contains(?, p.predicted) AS predicted_positive,
                list_contains(?, l.label) AS labelled_positive
            FROM predictions p LEFT JOIN labels l ON l.id = p.id AND (l.model IS NULL OR l.model = p.model)
            QUALIFY row_number() OVER (
                PARTITION BY p.model, p.id ORDER BY l.t DESC NULLS LAST, l.observed_time DESC, l.label) = 1
        ), totals AS (
            SELECT model, version, segment, bucket, grouping(segment) AS everything,
                count(*) AS predictions, count(label) AS labelled,
                count(*) FILTER (evaluated) AS evaluated,
                count(*) FILTER (evaluated AND predicted = label) AS correct,
                count(*) FILTER (evaluated AND predicted_positive AND labelled_positive) AS tp,
                count(*) FILTER (evaluated AND predicted_positive AND NOT labelled_positive) AS fp,
                count(*) FILTER (evaluated AND NOT predicted_positive AND labelled_positive) AS fn,
                count(*) FILTER (evaluated AND NOT predicted_positive AND NOT labelled_positive) AS tn,
                median(delay_us) / {_US} AS delay_s
            FROM joined
            GROUP BY GROUPING SETS ((model, version, bucket, segment), (model, version, bucket))
            HAVING grouping(segment) = 1 OR segment IS NOT NULL
        ), per_class AS (
            SELECT model, version, segment, bucket, grouping(segment) AS everything,
                count(*) FILTER (predicted = class AND label = class) AS tp,
                count(*) FILTER (predicted <> label) AS errors
            FROM (SELECT *, unnest(list_distinct([predicted, label])) AS class FROM joined WHERE evaluated)
            GROUP BY GROUPING SETS ((model, version, bucket, segment, class), (model, version, bucket, class))
            HAVING grouping(segment) = 1 OR segment IS NOT NULL
        ), macro AS (
            SELECT model, version, segment, bucket, everything, count(*) AS classes,
                avg(2 * tp / (2 * tp + errors)) AS macro_f1
            FROM per_class GROUP BY ALL
        )
        SELECT t.*, coalesce(m.classes, 0) AS classes, m.macro_f1
        FROM totals t LEFT JOIN macro m ON m.model = t.model AND m.version IS NOT DISTINCT FROM t.version
            AND m.bucket = t.bucket AND m.everything = t.everything
            AND m.segment IS NOT DISTINCT FROM t.segment
        ORDER BY t.model, t.version, t.bucket, t.everything DESC, t.segment
    """
    rows = store.sql(query, params).to_pylist()
    return [_quality(row, bucketed=step_us is not None) for row in rows]


def feature_drift(
    store: Store,
    *,
    model: str,
    baseline: tuple[datetime, datetime],
    current: tuple[datetime, datetime],
    feature: str | None = None,
    version: str | None = None,
    bins: int = 10,
) -> list[FeatureDrift]:
    """PSI (and, for numeric features, the KS statistic) of every `ml.feature.*` of `model`'s
    predictions (of `version`, when given), `current` window against `baseline` window, by feature.

    Numeric features are cut into at most `bins` bins at the baseline's quantiles (`quantile_cont` at
    1/bins, 2/bins, …; equal cut points merge; a value equal to a cut point goes below it). A
    categorical feature has one bin per value. PSI = Σ (c - b)·ln(c / b) over the bins, with b and c
    the bin's share of the baseline and current values, each at least `PSI_EPSILON`. Every record
    counts, even a prediction id logged twice."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= MAX_BINS:
        raise InvalidArgument(f"bins is a whole number from 2 to {MAX_BINS}, got {bins!r}")
    params: list[object] = []
    sides = []
    for side, (window_start, window_end) in enumerate((baseline, current)):
        terms = _time_terms(window_start, window_end, params, required=True)
        terms.append("attributes['ml.model.name'] = ?")
        params.append(model)
        if version is not None:
            terms.append("attributes['ml.model.version'] = ?")
            params.append(version)
        sides.append(
            f"SELECT {side} AS side, attributes, attribute_types FROM logs"
            f" WHERE event_name = '{PREDICTION_EVENT}' AND {' AND '.join(terms)}"
        )
    key_filter = "starts_with(key, ?)"
    params.append(FEATURE_PREFIX)
    if feature is not None:
        key_filter = "key = ?"
        params[-1] = FEATURE_PREFIX + feature
    cuts = ", ".join(f"{i}.0 / {bins}" for i in range(1, bins))
    query = f"""
        WITH entries AS (
            SELECT side, key, value, coalesce(attribute_types[key], 'string') AS type
            FROM (SELECT side, unnest(map_keys(attributes)) AS key, unnest(map_values(attributes)) AS value,
                    attribute_types FROM ({" UNION ALL ".join(sides)}))
            WHERE {key_filter} AND value IS NOT NULL
        ), kinds AS (
            SELECT key, bool_and(type IN ('int', 'double')) AS numeric,
                count(*) FILTER (side = 0) AS n_b, count(*) FILTER (side = 1) AS n_c
            FROM entries GROUP BY key
        ), observations AS (
            SELECT e.side, e.key, e.value, k.numeric, k.n_b, k.n_c,
                CASE WHEN k.numeric THEN try_cast(e.value AS DOUBLE) END AS x
            FROM entries e JOIN kinds k USING (key)
        ), edges AS (
            SELECT key, list_sort(list_distinct(quantile_cont(x, [{cuts}]))) AS cuts
            FROM observations WHERE numeric AND side = 0 GROUP BY key
        ), binned AS (
            SELECT o.key, o.n_b, o.n_c,
                CASE WHEN o.numeric THEN len(list_filter(d.cuts, lambda c: c < o.x))::VARCHAR
                    ELSE o.value END AS bin,
                count(*) FILTER (o.side = 0) AS b, count(*) FILTER (o.side = 1) AS c
            FROM observations o LEFT JOIN edges d USING (key) GROUP BY ALL
        ), psi AS (
            SELECT key, sum((greatest(c / n_c, {PSI_EPSILON}) - greatest(b / n_b, {PSI_EPSILON}))
                * ln(greatest(c / n_c, {PSI_EPSILON}) / greatest(b / n_b, {PSI_EPSILON}))) AS psi
            FROM binned WHERE n_b > 0 AND n_c > 0 GROUP BY key
        ), ks AS (
            SELECT key, max(abs(cb / n_b - cc / n_c)) AS ks
            FROM (SELECT key, n_b, n_c, sum(b) OVER w AS cb, sum(c) OVER w AS cc
                  FROM (SELECT key, x, n_b, n_c, count(*) FILTER (side = 0) AS b,
                            count(*) FILTER (side = 1) AS c
                        FROM observations WHERE numeric GROUP BY ALL)
                  WINDOW w AS (PARTITION BY key ORDER BY x ROWS UNBOUNDED PRECEDING))
            WHERE n_b > 0 AND n_c > 0 GROUP BY key
        )
        SELECT substr(k.key, {len(FEATURE_PREFIX) + 1}) AS feature, k.numeric, k.n_b, k.n_c, p.psi, s.ks
        FROM kinds k LEFT JOIN psi p USING (key) LEFT JOIN ks s USING (key) ORDER BY feature
    """
    return [
        FeatureDrift(
            feature=row["feature"],
            kind="numeric" if row["numeric"] else "categorical",
            baseline_count=row["n_b"],
            current_count=row["n_c"],
            psi=row["psi"],
            ks=row["ks"],
        )
        for row in store.sql(query, params).to_pylist()
    ]


def prediction_distribution(
    store: Store,
    *,
    model: str,
    start: datetime | None = None,
    end: datetime | None = None,
    bins: int = 10,
) -> list[PredictionDistribution]:
    """Per version of `model` in `[start, end)`: the count of each predicted class and a histogram of
    the scores in `bins` equal-width bins from the lowest score of the answer to the highest, by
    version. Every record counts, even a prediction id logged twice."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise InvalidArgument(f"bins is a whole number from 1 to {MAX_BINS}, got {bins!r}")
    params: list[object] = []
    where = _time_terms(start, end, params)
    params.append(model)
    query = f"""
        WITH predictions AS (
            SELECT attributes['ml.model.version'] AS version, attributes['ml.prediction.value'] AS predicted,
                try_cast(attributes['ml.prediction.score'] AS DOUBLE) AS score
            FROM logs WHERE event_name = '{PREDICTION_EVENT}' AND {" AND ".join([*where, "true"])}
                AND attributes['ml.model.name'] = ?
        ), span AS (SELECT min(score) AS low, max(score) AS high FROM predictions)
        SELECT version, count(*) AS predictions, count(score) AS scored, avg(score) AS mean_score,
            any_value(low) AS low, any_value(high) AS high,
            histogram(predicted) FILTER (predicted IS NOT NULL) AS classes,
            histogram(CASE WHEN high = low THEN 0
                ELSE least(floor((score - low) / (high - low) * {bins}), {bins - 1})::BIGINT END)
                FILTER (score IS NOT NULL) AS score_bins
        FROM predictions, span GROUP BY version ORDER BY version
    """
    answer = []
    for row in store.sql(query, params, order_joins=False).to_pylist():
        low, high = row["low"], row["high"]
        edges = () if low is None else tuple(low + (high - low) * i / bins for i in range(bins + 1))
        counts = dict(row["score_bins"] or {})
        answer.append(
            PredictionDistribution(
                version=row["version"],
                predictions=row["predictions"],
                classes=dict(row["classes"] or {}),
                scored=row["scored"],
                mean_score=row["mean_score"],
                score_edges=edges,
                score_counts=tuple(counts.get(i, 0) for i in range(bins)) if edges else (),
            )
        )
    return answer


def _quality(row: dict[str, Any], *, bucketed: bool) -> ModelQuality:
    tp, fp, fn = row["tp"], row["fp"], row["fn"]
    evaluated = row["evaluated"]
    return ModelQuality(
        model=row["model"],
        version=row["version"],
        segment=None if row["everything"] else row["segment"],
        bucket_start=datetime.fromtimestamp(row["bucket"] / _US, UTC) if bucketed else None,
        predictions=row["predictions"],
        labelled=row["labelled"],
        evaluated=evaluated,
        correct=row["correct"],
        accuracy=row["correct"] / evaluated if evaluated else None,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        true_negatives=row["tn"],
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / (tp + fn) if tp + fn else None,
        f1=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        macro_f1=row["macro_f1"],
        classes=row["classes"],
        label_delay_p50_s=row["delay_s"],
    )


def _class_text(value: str | int | bool) -> str:
    """A class as the store keeps it (`docs/storage.md`): bools as `true`/`false`, ints in decimal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise InvalidArgument(f"positive_label is a str, int or bool, got {value!r}")


def _step_us(step_s: float | None) -> int | None:
    if step_s is None:
        return None
    if isinstance(step_s, bool) or not isinstance(step_s, int | float) or not step_s >= 0.001:
        raise InvalidArgument(f"step_s is a number of seconds, at least 0.001, got {step_s!r}")
    return round(step_s * _US)


def _time_terms(
    start: datetime | None, end: datetime | None, params: list[object], *, required: bool = False
) -> list[str]:
    """SQL terms keeping the rows with `start <= time < end` (an end that is None is open), and the
    hive partitions that can hold them."""
    if start is not None and end is not None:
        window = time_range(start, end)
        params.extend((window.start, window.end))
        return [partition_predicate(window), "time >= ?", "time < ?"]
    if required:
        raise InvalidArgument("a window is a (start, end) pair of timezone-aware datetimes")
    terms: list[str] = []
    for name, moment, operator in (("start", start, ">="), ("end", end, "<")):
        if moment is None:
            continue
        if moment.utcoffset() is None:
            raise InvalidArgument(f"{name} must be timezone-aware, got {moment.isoformat()}")
        utc = moment.astimezone(UTC)
        terms.append(f"date {'>=' if operator == '>=' else '<='} {_date_literal(utc.date())}")
        terms.append(f"time {operator} ?")
        params.append(utc)
    return terms


def _date_literal(day: date) -> str:
    return f"DATE '{day.isoformat()}'"
