"""model_quality, feature_drift and prediction_distribution over stores written by the storage writer
from OTLP logs requests, against references computed here in Python from the same records."""

from __future__ import annotations

import bisect
import math
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from otlp_values import kv

from mallard.collector.arrow import logs_to_arrow
from mallard.query import Store
from mallard.query.models import (
    PSI_EPSILON,
    FeatureDrift,
    ModelQuality,
    feature_drift,
    model_quality,
    prediction_distribution,
)
from mallard.query.timerange import InvalidArgument, to_unix_nano
from mallard.storage.writer import ParquetSink

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
Value = str | int | bool | float


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    name: str  # ml.prediction or ml.label
    seconds: float  # after T0
    attributes: dict[str, Value] = field(default_factory=dict)


def prediction(
    id: str,
    predicted: Value | None,
    *,
    seconds: float = 0,
    model: str = "m",
    version: str = "v1",
    segment: str | None = None,
    **more: Value,
) -> Event:
    """A prediction event; `more` are further attributes, `__` in their names standing for `.`."""
    attributes: dict[str, Value] = {
        "ml.model.name": model,
        "ml.model.version": version,
        "ml.prediction.id": id,
    }
    if predicted is not None:
        attributes["ml.prediction.value"] = predicted
    if segment is not None:
        attributes["ml.segment"] = segment
    for key, value in more.items():
        attributes[key.replace("__", ".")] = value
    return Event(name="ml.prediction", seconds=seconds, attributes=attributes)


def label(id: str, value: Value, *, seconds: float = 3600, model: str | None = None) -> Event:
    attributes: dict[str, Value] = {"ml.prediction.id": id, "ml.label.value": value}
    if model is not None:
        attributes["ml.model.name"] = model
    return Event(name="ml.label", seconds=seconds, attributes=attributes)


def write(root: Path, events: Sequence[Event], lsn: int = 1) -> None:
    message = ExportLogsServiceRequest()
    scope = message.resource_logs.add().scope_logs.add()
    for event in events:
        scope.log_records.append(
            LogRecord(
                time_unix_nano=to_unix_nano(T0 + timedelta(seconds=event.seconds)),
                event_name=event.name,
                attributes=[kv(key, value) for key, value in event.attributes.items()],
            )
        )
    converted = logs_to_arrow(message.SerializeToString())
    assert converted.rejected == 0
    ParquetSink(root).write("logs", [converted.batch], writer="test", first_lsn=lsn, last_lsn=lsn)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path) as opened:
        yield opened


def overall(rows: list[ModelQuality]) -> ModelQuality:
    (row,) = [row for row in rows if row.segment is None]
    return row


# Quality


def test_empty_store_has_no_rows(store: Store) -> None:
    assert model_quality(store) == []
    assert (
        feature_drift(
            store, model="m", baseline=(T0, T0 + timedelta(hours=1)), current=(T0, T0 + timedelta(hours=2))
        )
        == []
    )
    assert prediction_distribution(store, model="m") == []


def test_binary_metrics_latest_label_and_missing_labels(tmp_path: Path, store: Store) -> None:
    write(
        tmp_path,
        [
            prediction("a", 1, segment="fr"),  # tp
            prediction("b", 1, segment="fr"),  # fp (label corrected from 1 to 0 below)
            prediction("c", 0, segment="de"),  # fn
            prediction("d", 0, segment="de"),  # tn
            prediction("e", 1),  # no label, no segment
            prediction("f", None, segment="de", ml__prediction__score=0.3),  # labelled, not evaluated
            label("a", 1, seconds=60),
            label("b", 1, seconds=100),
            label("c", 1, seconds=180),
            label("d", 0, seconds=240),
            label("f", 1, seconds=300),
            label("zz", 1),  # a label of no prediction
        ],
    )
    write(tmp_path, [label("b", 0, seconds=200)], lsn=2)  # the later label wins
    rows = model_quality(store)
    everything = overall(rows)
    assert (everything.model, everything.version, everything.bucket_start) == ("m", "v1", None)
    assert (everything.predictions, everything.labelled, everything.evaluated, everything.correct) == (
        6,
        5,
        4,
        2,
    )
    assert (
        everything.true_positives,
        everything.false_positives,
        everything.false_negatives,
        everything.true_negatives,
    ) == (1, 1, 1, 1)
    assert everything.accuracy == 0.5 and everything.precision == 0.5 and everything.recall == 0.5
    assert everything.f1 == 0.5 and everything.macro_f1 == 0.5 and everything.classes == 2
    assert everything.label_delay_p50_s == 200  # median of 60, 200, 180, 240, 300
    by_segment = {row.segment: row for row in rows if row.segment is not None}
    assert set(by_segment) == {"fr", "de"}
    assert (by_segment["fr"].precision, by_segment["fr"].recall, by_segment["fr"].f1) == (0.5, 1.0, 2 / 3)
    assert (by_segment["de"].precision, by_segment["de"].recall, by_segment["de"].accuracy) == (
        None,
        0.0,
        0.5,
    )
    assert by_segment["de"].predictions == 3 and by_segment["de"].labelled == 3
    assert [row.segment for row in rows] == [None, "de", "fr"]


def test_buckets_models_versions_and_positive_label(tmp_path: Path, store: Store) -> None:
    write(
        tmp_path,
        [
            prediction("1", "spam", seconds=10, model="filter", version="v1"),
            prediction("2", "ham", seconds=20, model="filter", version="v1"),
            prediction("3", "spam", seconds=4000, model="filter", version="v2"),
            prediction("1", True, seconds=30, model="other"),  # same id, another model
            label("1", "spam", model="filter"),
            label("1", False, model="other"),
            label("2", "spam", model="filter"),
            label("3", "spam", model="filter"),
        ],
    )
    rows = model_quality(store, start=T0, end=T0 + timedelta(hours=2), step_s=3600, positive_label="spam")
    assert [(row.model, row.version, row.bucket_start, row.segment) for row in rows] == [
        ("filter", "v1", T0, None),
        ("filter", "v2", T0 + timedelta(hours=1), None),
        ("other", "v1", T0, None),
    ]
    v1, v2, other = rows
    assert (v1.true_positives, v1.false_negatives, v1.precision, v1.recall) == (1, 1, 1.0, 0.5)
    assert v2.accuracy == 1.0 and v2.f1 == 1.0
    assert other.correct == 0 and other.true_positives == other.false_positives == 0
    only = model_quality(store, model="other", positive_label=True)
    assert overall(only).false_positives == 1 and overall(only).precision == 0.0
    later = model_quality(store, start=T0 + timedelta(hours=1), model="filter")
    assert [(row.version, row.predictions) for row in later] == [("v2", 1)]


def test_multiclass_accuracy_and_macro_f1(tmp_path: Path, store: Store) -> None:
    pairs = [
        ("cat", "cat"),
        ("cat", "dog"),
        ("dog", "dog"),
        ("bird", "cat"),
        ("bird", "bird"),
        ("dog", "dog"),
    ]
    write(tmp_path, [prediction(str(i), p) for i, (p, _) in enumerate(pairs)])
    write(tmp_path, [label(str(i), y) for i, (_, y) in enumerate(pairs)], lsn=2)
    row = overall(model_quality(store))
    assert row.accuracy == 4 / 6 and row.classes == 3
    assert row.macro_f1 == pytest.approx(reference_macro_f1(pairs))
    assert row.true_positives == 0 and row.precision is None  # no class is 1 or true


def test_bad_arguments(store: Store) -> None:
    with pytest.raises(InvalidArgument, match="step_s"):
        model_quality(store, step_s=0)
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        model_quality(store, start=datetime(2024, 1, 1))
    with pytest.raises(InvalidArgument, match="bins"):
        feature_drift(
            store, model="m", baseline=(T0, T0 + timedelta(1)), current=(T0, T0 + timedelta(1)), bins=1
        )
    with pytest.raises(InvalidArgument, match="empty"):
        feature_drift(store, model="m", baseline=(T0, T0), current=(T0, T0 + timedelta(1)))


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 1]),
            st.one_of(st.none(), st.sampled_from([0, 1])),
            st.sampled_from(["a", "b"]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_binary_metrics_match_a_reference(rows: list[tuple[int, int | None, str]]) -> None:
    events = [prediction(str(i), p, segment=s) for i, (p, _, s) in enumerate(rows)]
    events += [label(str(i), y) for i, (_, y, _) in enumerate(rows) if y is not None]
    with tempfile.TemporaryDirectory() as directory, Store(directory) as store:
        write(Path(directory), events)
        answer = {row.segment: row for row in model_quality(store)}
    for segment in (None, "a", "b"):
        chosen = [(p, y) for p, y, s in rows if segment in (None, s) and y is not None]
        if segment not in answer:
            assert not any(s == segment for _, _, s in rows)
            continue
        got = answer[segment]
        tp = sum(p == 1 and y == 1 for p, y in chosen)
        fp = sum(p == 1 and y == 0 for p, y in chosen)
        fn = sum(p == 0 and y == 1 for p, y in chosen)
        assert (got.labelled, got.true_positives, got.false_positives, got.false_negatives) == (
            len(chosen),
            tp,
            fp,
            fn,
        )
        assert got.accuracy == (sum(p == y for p, y in chosen) / len(chosen) if chosen else None)
        assert got.precision == (tp / (tp + fp) if tp + fp else None)
        assert got.recall == (tp / (tp + fn) if tp + fn else None)
        assert got.f1 == (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None)
        expected_macro = reference_macro_f1([(str(p), str(y)) for p, y in chosen]) if chosen else None
        assert got.macro_f1 == pytest.approx(expected_macro)


def reference_macro_f1(pairs: Sequence[tuple[str, str]]) -> float:
    classes = {c for pair in pairs for c in pair}
    scores = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in pairs)
        fp = sum(p == c and y != c for p, y in pairs)
        fn = sum(p != c and y == c for p, y in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


# Drift

BASELINE = (T0, T0 + timedelta(hours=1))
CURRENT = (T0 + timedelta(hours=1), T0 + timedelta(hours=2))


def reference_quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def reference_psi(baseline: Sequence[Value], current: Sequence[Value], bins: int, numeric: bool) -> float:
    def bin_of(value: Value, cuts: list[float]) -> Value:
        return bisect.bisect_left(cuts, float(value)) if numeric else str(value)

    cuts = []
    if numeric:
        cuts = sorted({reference_quantile([float(v) for v in baseline], i / bins) for i in range(1, bins)})
    b = Counter(bin_of(v, cuts) for v in baseline)
    c = Counter(bin_of(v, cuts) for v in current)
    total = 0.0
    for key in set(b) | set(c):
        share_b = max(b[key] / len(baseline), PSI_EPSILON)
        share_c = max(c[key] / len(current), PSI_EPSILON)
        total += (share_c - share_b) * math.log(share_c / share_b)
    return total


def reference_ks(baseline: Sequence[float], current: Sequence[float]) -> float:
    b, c = sorted(baseline), sorted(current)
    return max(abs(bisect.bisect_right(b, x) / len(b) - bisect.bisect_right(c, x) / len(c)) for x in {*b, *c})


def drift_events(baseline: Sequence[dict[str, Value]], current: Sequence[dict[str, Value]]) -> list[Event]:
    events = []
    for side, rows in ((0, baseline), (1, current)):
        for i, features in enumerate(rows):
            event = prediction(f"{side}-{i}", 1, seconds=side * 3600 + i)
            event.attributes.update({f"ml.feature.{name}": value for name, value in features.items()})
            events.append(event)
    return events


def by_feature(rows: list[FeatureDrift]) -> dict[str, FeatureDrift]:
    return {row.feature: row for row in rows}


def test_numeric_and_categorical_drift(tmp_path: Path, store: Store) -> None:
    baseline: list[dict[str, Value]] = [
        {"age": 20 + i % 40, "income": 1000.0 + i, "country": ["fr", "de"][i % 2]} for i in range(200)
    ]
    current: list[dict[str, Value]] = [
        {"age": 20 + i % 40, "income": 1600.0 + i, "country": ["fr", "de", "de", "us"][i % 4]}
        for i in range(160)
    ]
    write(tmp_path, drift_events(baseline, current))
    write(tmp_path, [prediction("x", 1, seconds=10, model="other", ml__feature__age=99)], lsn=2)
    rows = by_feature(feature_drift(store, model="m", baseline=BASELINE, current=CURRENT))
    assert list(rows) == ["age", "country", "income"]
    for name, numeric in (("age", True), ("income", True), ("country", False)):
        b = [row[name] for row in baseline]
        c = [row[name] for row in current]
        got = rows[name]
        assert (got.kind, got.baseline_count, got.current_count) == (
            "numeric" if numeric else "categorical",
            200,
            160,
        )
        assert got.psi == pytest.approx(reference_psi(b, c, 10, numeric), rel=1e-9)
        if numeric:
            assert got.ks == pytest.approx(reference_ks([float(v) for v in b], [float(v) for v in c]))
        else:
            assert got.ks is None
    assert (
        rows["age"].psi is not None
        and rows["age"].psi < 0.01
        and rows["age"].ks == pytest.approx(0.0, abs=0.05)
    )
    assert (
        rows["income"].psi is not None and rows["income"].psi > 1 and rows["income"].ks == pytest.approx(1.0)
    )
    assert rows["country"].psi is not None and rows["country"].psi > 0.2
    only = feature_drift(store, model="m", baseline=BASELINE, current=CURRENT, feature="income", bins=4)
    assert [row.feature for row in only] == ["income"]
    assert only[0].psi == pytest.approx(
        reference_psi([r["income"] for r in baseline], [r["income"] for r in current], 4, True)
    )


def test_a_window_without_values_has_no_psi(tmp_path: Path, store: Store) -> None:
    write(tmp_path, drift_events([{"x": 1.5, "flag": True}], []))
    (flag, x) = feature_drift(store, model="m", baseline=BASELINE, current=CURRENT)
    assert (flag.kind, flag.baseline_count, flag.current_count, flag.psi) == ("categorical", 1, 0, None)
    assert (x.kind, x.psi, x.ks) == ("numeric", None, None)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=60),
    st.lists(st.integers(-5, 8), min_size=1, max_size=60),
    st.integers(2, 12),
)
def test_drift_matches_a_reference(baseline: list[int], current: list[int], bins: int) -> None:
    events = drift_events(
        [{"n": v, "c": f"k{v % 3}"} for v in baseline], [{"n": v, "c": f"k{v % 3}"} for v in current]
    )
    with tempfile.TemporaryDirectory() as directory, Store(directory) as store:
        write(Path(directory), events)
        rows = by_feature(feature_drift(store, model="m", baseline=BASELINE, current=CURRENT, bins=bins))
    assert rows["n"].psi == pytest.approx(reference_psi(baseline, current, bins, True), rel=1e-9, abs=1e-12)
    assert rows["n"].ks == pytest.approx(
        reference_ks([float(v) for v in baseline], [float(v) for v in current])
    )
    categories = ([f"k{v % 3}" for v in baseline], [f"k{v % 3}" for v in current])
    assert rows["c"].psi == pytest.approx(reference_psi(*categories, bins, False), rel=1e-9, abs=1e-12)


# Distribution


def test_prediction_distribution(tmp_path: Path, store: Store) -> None:
    write(
        tmp_path,
        [
            prediction("1", "a", ml__prediction__score=0.0),
            prediction("2", "a", ml__prediction__score=0.5),
            prediction("3", "b", ml__prediction__score=1.0),
            prediction("4", "b", version="v2", ml__prediction__score=0.9),
            prediction("5", None, version="v2", ml__prediction__score=0.2),
            prediction("6", "c", version="v2"),
        ],
    )
    v1, v2 = prediction_distribution(store, model="m", bins=4)
    assert (v1.version, v1.predictions, v1.classes, v1.scored) == ("v1", 3, {"a": 2, "b": 1}, 3)
    assert v1.mean_score == 0.5
    assert v1.score_edges == (0.0, 0.25, 0.5, 0.75, 1.0) == v2.score_edges
    assert v1.score_counts == (1, 0, 1, 1)
    assert (v2.predictions, v2.classes, v2.scored, v2.score_counts) == (3, {"b": 1, "c": 1}, 2, (1, 0, 0, 1))
