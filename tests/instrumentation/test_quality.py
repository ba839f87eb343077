"""`log_prediction` / `log_label` end to end: one process logs predictions inside a request span, a
second one logs labels later (some missing, one corrected), both through `configure()` to a real
`mallard serve`; the store's rows, `model_quality` and `feature_drift` are checked against the data.

OpenTelemetry's providers are process-global, so each process is a fresh interpreter (`_child`).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import MallardServer, run_python, wait_for_rows

from mallard.instrumentation.quality import MAX_FEATURES, log_label, log_prediction
from mallard.query import Store
from mallard.query.models import feature_drift, model_quality

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
HALF = 60  # predictions per window; the second window's income drifts
COUNTRIES = ("fr", "de", "us")

PREDICT = r"""
import json, sys
from datetime import datetime
from opentelemetry import trace
from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.quality import log_prediction

job = json.loads(sys.argv[1])
configure(service_name="scorer", endpoint=job["endpoint"])
with trace.get_tracer("quality-test").start_as_current_span("score-batch") as span:
    for row in job["rows"]:
        log_prediction("churn", "v3", row["id"], features=row["features"], prediction=row["prediction"],
                       score=row["score"], segment=row["segment"],
                       timestamp=datetime.fromisoformat(row["time"]))
    print(format(span.get_span_context().trace_id, "032x"))
shutdown()
"""

LABEL = r"""
import json, sys
from datetime import datetime
from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.quality import log_label

job = json.loads(sys.argv[1])
configure(service_name="labeller", endpoint=job["endpoint"])
for row in job["labels"]:
    log_label(row["id"], row["label"], model=row["model"], timestamp=datetime.fromisoformat(row["time"]))
shutdown()
"""


def _child(script: str, job: dict[str, Any]) -> str:
    return run_python(script, json.dumps(job)).strip()


def _predictions() -> list[dict[str, Any]]:
    rows = []
    for window in (0, 1):
        for j in range(HALF):
            i = window * HALF + j
            score = ((j * 37) % HALF + 0.5) / HALF
            rows.append(
                {
                    "id": f"p{i}",
                    "time": (T0 + timedelta(hours=window, seconds=j)).isoformat(),
                    "features": {
                        "age": 20 + (j * 7) % 50,  # the same values in both windows
                        "income": (30_000.0 + (j * 13) % HALF * 500) * (1.8 if window else 1.0),
                        "country": COUNTRIES[j % 3],
                        "member": j % 4 == 0,
                        "missing": None,
                    },
                    "prediction": int(score >= 0.5),
                    "score": score,
                    "segment": COUNTRIES[j % 3],
                }
            )
    return rows


def _labels(predictions: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Labels for most predictions (every fifth has none); every third is wrong; p1's first label is
    corrected by a later one. Returns the labels to log and the final label of each id."""
    final: dict[str, int] = {}
    for i, row in enumerate(predictions):
        if i % 5 != 0:
            final[row["id"]] = 1 - row["prediction"] if i % 3 == 0 else row["prediction"]
    later = T0 + timedelta(hours=5)
    labels = [
        {
            "id": "p1",
            "label": 1 - final["p1"],
            "model": None,
            "time": (later - timedelta(hours=1)).isoformat(),
        },
        *(
            {"id": id, "label": value, "model": "churn", "time": later.isoformat()}
            for id, value in final.items()
        ),
        {"id": "p1", "label": final["p1"], "model": None, "time": (later + timedelta(hours=1)).isoformat()},
    ]
    return labels, final


def _reference(pairs: list[tuple[int, int]]) -> dict[str, float | None]:
    tp = sum(p == 1 and y == 1 for p, y in pairs)
    fp = sum(p == 1 and y == 0 for p, y in pairs)
    fn = sum(p == 0 and y == 1 for p, y in pairs)
    return {
        "accuracy": sum(p == y for p, y in pairs) / len(pairs),
        "precision": tp / (tp + fp),
        "recall": tp / (tp + fn),
        "f1": 2 * tp / (2 * tp + fp + fn),
    }


def test_predictions_and_late_labels_from_two_processes(server: MallardServer) -> None:
    predictions = _predictions()
    labels, final = _labels(predictions)
    trace_id = _child(PREDICT, {"endpoint": server.grpc_endpoint, "rows": predictions})
    _child(LABEL, {"endpoint": server.grpc_endpoint, "labels": labels})

    rows = wait_for_rows(
        server.data,
        "SELECT event_name, service_name, trace_id, span_id, attributes, attribute_types FROM logs"
        " WHERE event_name IN ('ml.prediction', 'ml.label')",
        len(predictions) + len(labels),
    ).to_pylist()
    assert len(rows) == len(predictions) + len(labels)
    scored = [row for row in rows if row["event_name"] == "ml.prediction"]
    assert {(row["service_name"], row["trace_id"]) for row in scored} == {("scorer", trace_id)}
    assert all(len(row["span_id"]) == 16 for row in scored)
    (p7,) = [row for row in scored if dict(row["attributes"])["ml.prediction.id"] == "p7"]
    attributes, types = dict(p7["attributes"]), dict(p7["attribute_types"])
    source = predictions[7]
    assert attributes == {
        "ml.model.name": "churn",
        "ml.model.version": "v3",
        "ml.prediction.id": "p7",
        "ml.prediction.value": str(source["prediction"]),
        "ml.prediction.score": repr(source["score"]),
        "ml.segment": source["segment"],
        "ml.feature.age": str(source["features"]["age"]),
        "ml.feature.income": repr(source["features"]["income"]),
        "ml.feature.country": source["features"]["country"],
        "ml.feature.member": "false",
    }
    assert types == {
        "ml.prediction.value": "int",
        "ml.prediction.score": "double",
        "ml.feature.age": "int",
        "ml.feature.income": "double",
        "ml.feature.member": "bool",
    }
    marked = [row for row in rows if row["event_name"] == "ml.label"]
    assert {row["service_name"] for row in marked} == {"labeller"}
    assert all(dict(row["attribute_types"]) == {"ml.label.value": "int"} for row in marked)

    with Store(server.data) as store:
        quality = model_quality(store, model="churn", start=T0, end=T0 + timedelta(hours=2), positive_label=1)
        drift = {
            row.feature: row
            for row in feature_drift(
                store,
                model="churn",
                baseline=(T0, T0 + timedelta(hours=1)),
                current=(T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
            )
        }
    by_segment = {row.segment: row for row in quality}
    assert set(by_segment) == {None, *COUNTRIES}
    for segment, row in by_segment.items():
        chosen = [p for p in predictions if segment in (None, p["segment"])]
        pairs = [(p["prediction"], final[p["id"]]) for p in chosen if p["id"] in final]
        assert (row.model, row.version, row.predictions, row.labelled) == (
            "churn",
            "v3",
            len(chosen),
            len(pairs),
        )
        got = {"accuracy": row.accuracy, "precision": row.precision, "recall": row.recall, "f1": row.f1}
        assert got == _reference(pairs), segment
    assert by_segment[None].label_delay_p50_s is not None and by_segment[None].label_delay_p50_s > 3 * 3600

    assert set(drift) == {"age", "income", "country", "member"}
    assert drift["income"].psi is not None and drift["income"].psi > 1
    assert drift["income"].ks is not None and drift["income"].ks > 0.5
    for steady in ("age", "country", "member"):
        assert drift[steady].psi is not None and drift[steady].psi < 0.01, steady
        assert (drift[steady].baseline_count, drift[steady].current_count) == (HALF, HALF)
    assert drift["age"].ks == 0.0 and drift["country"].ks is None

    counted = wait_for_rows(
        server.data,
        "SELECT coalesce(value_int, value) AS n FROM metrics WHERE metric_name = 'ml.predictions'"
        f" AND attributes['ml.model.name'] = 'churn' AND coalesce(value_int, value) = {len(predictions)}",
        1,
    )
    assert counted.num_rows >= 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: log_prediction("m", "v1", "", prediction=1), "prediction_id"),
        (lambda: log_prediction("", "v1", "p", prediction=1), "model"),
        (lambda: log_prediction("m", "v1", "p"), "neither"),
        (lambda: log_prediction("m", "v1", "p", prediction=1.5), "class"),  # type: ignore[arg-type]
        (lambda: log_prediction("m", "v1", "p", score=math.nan), "score"),
        (lambda: log_prediction("m", "v1", "p", score=1, features={3: 1.0}), "feature names"),  # type: ignore[dict-item]
        (lambda: log_prediction("m", "v1", "p", score=1, features={"x": [1, 2]}), "int, float, bool or str"),  # type: ignore[dict-item]
        (lambda: log_prediction("m", "v1", "p", score=1, features={"x": math.inf}), "missing value"),
        (
            lambda: log_prediction(
                "m", "v1", "p", score=1, features={f"f{i}": i for i in range(MAX_FEATURES + 1)}
            ),
            "at most",
        ),
        (lambda: log_prediction("m", "v1", "p", score=1, timestamp=datetime(2024, 1, 1)), "timezone-aware"),
        (lambda: log_label("", 1), "prediction_id"),
        (lambda: log_label("p", None), "class"),  # type: ignore[arg-type]
        (lambda: log_label("p", 1, model=""), "model"),
    ],
)
def test_bad_arguments_raise_value_error(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_without_configure_logging_is_a_no_op() -> None:
    log_prediction("m", "v1", "p", features={"x": 1, "y": "a"}, prediction="yes", score=0.9, segment="s")
    log_label("p", "yes", model="m")
