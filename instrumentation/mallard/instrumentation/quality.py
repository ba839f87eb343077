"""Model-quality logging: `log_prediction()` and `log_label()` as OpenTelemetry events.

A prediction is an OTel log record with event name `ml.prediction`; its label, logged later (hours
later, from another process), is a record with event name `ml.label`. Both carry
`ml.prediction.id`, on which the store joins them (`mallard.query.models`). Records go through the
global LoggerProvider that `mallard.instrumentation.configure()` sets, in the current context, so a
prediction made inside a request carries that request's trace and span ids. Before `configure()`
(or any other global LoggerProvider) they go nowhere, as every OpenTelemetry signal does.

Attributes (types as sent; the store keeps them in `attribute_types`):

- `ml.model.name`, `ml.model.version` (str): on predictions; `ml.model.name` on labels when given;
- `ml.prediction.id` (str): on both;
- `ml.prediction.value` (str, int or bool), `ml.prediction.score` (double), `ml.segment` (str);
- `ml.feature.<name>` (int, double, bool or str): one per feature, `None` values left out;
- `ml.label.value` (str, int or bool): on labels.

Each prediction also adds 1 to the counter `ml.predictions` and each label to `ml.labels`, by
`ml.model.name` (and `ml.model.version` for predictions).

Arguments are checked before anything is emitted: a bad one raises `ValueError` and emits nothing.
Export is the SDK's batch processor's: it never blocks the caller on the network and drops records
when its queue is full or the collector stays unreachable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from opentelemetry import _logs, context, metrics
from opentelemetry._logs import SeverityNumber

PREDICTION_EVENT: Final = "ml.prediction"
LABEL_EVENT: Final = "ml.label"
MODEL_NAME: Final = "ml.model.name"
MODEL_VERSION: Final = "ml.model.version"
PREDICTION_ID: Final = "ml.prediction.id"
PREDICTION_VALUE: Final = "ml.prediction.value"
PREDICTION_SCORE: Final = "ml.prediction.score"
SEGMENT: Final = "ml.segment"
LABEL_VALUE: Final = "ml.label.value"
FEATURE_PREFIX: Final = "ml.feature."
PREDICTIONS_COUNTER: Final = "ml.predictions"
LABELS_COUNTER: Final = "ml.labels"
# The SDK keeps at most 128 attributes per log record (OTEL_ATTRIBUTE_COUNT_LIMIT) and drops the rest
# silently; six are ours, so refuse more features than fit rather than lose some.
MAX_FEATURES: Final = 120

FeatureValue = int | float | bool | str
Label = int | bool | str

_SCOPE: Final = "mallard.instrumentation.quality"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def log_prediction(
    model: str,
    version: str,
    prediction_id: str,
    *,
    features: Mapping[str, FeatureValue | None] | None = None,
    prediction: Label | None = None,
    score: float | None = None,
    segment: str | None = None,
    timestamp: datetime | None = None,
) -> None:
    """Emits one `ml.prediction` event. `prediction` is the predicted class (str, int or bool: use the
    same type for its label, the store compares them as text), `score` the model's score or
    probability, `segment` a slice to report on (country, tenant, …). At least one of `prediction`
    and `score` is given. `timestamp` (timezone-aware) is the time of the prediction, now when None.
    Raises `ValueError` for an empty name or id, a feature name that is not a non-empty string, or a
    value of an unsupported type (feature values: int, float, bool or str; None: missing)."""
    attributes: dict[str, FeatureValue] = {
        MODEL_NAME: _text("model", model),
        MODEL_VERSION: _text("version", version),
        PREDICTION_ID: _text("prediction_id", prediction_id),
    }
    if prediction is None and score is None:
        raise ValueError("a prediction has a prediction value, a score, or both; got neither")
    if prediction is not None:
        attributes[PREDICTION_VALUE] = _label("prediction", prediction)
    if score is not None:
        attributes[PREDICTION_SCORE] = _number("score", score)
    if segment is not None:
        attributes[SEGMENT] = _text("segment", segment)
    attributes.update(_features(features or {}))
    _emit(PREDICTION_EVENT, attributes, _timestamp(timestamp))
    _count(PREDICTIONS_COUNTER, "{prediction}", {MODEL_NAME: model, MODEL_VERSION: version})


def log_label(
    prediction_id: str, label: Label, *, model: str | None = None, timestamp: datetime | None = None
) -> None:
    """Emits one `ml.label` event: the true class of prediction `prediction_id` (str, int or bool, of
    the prediction's type). `model` is needed only where two models share prediction ids. Logging a
    label twice corrects it: the store keeps the latest. `timestamp` (timezone-aware) is when the
    label became known, now when None. Raises `ValueError` for an empty id or a bad label."""
    attributes: dict[str, FeatureValue] = {
        PREDICTION_ID: _text("prediction_id", prediction_id),
        LABEL_VALUE: _label("label", label),
    }
    if model is not None:
        attributes[MODEL_NAME] = _text("model", model)
    _emit(LABEL_EVENT, attributes, _timestamp(timestamp))
    _count(LABELS_COUNTER, "{label}", {MODEL_NAME: model} if model is not None else {})


_DESCRIPTIONS: Final = {
    PREDICTIONS_COUNTER: "Predictions logged by log_prediction()",
    LABELS_COUNTER: "Labels logged by log_label()",
}


def _emit(event: str, attributes: dict[str, FeatureValue], timestamp: int) -> None:
    """One INFO event record in the current context (so it carries the current trace and span)."""
    _logs.get_logger(_SCOPE).emit(
        timestamp=timestamp,
        observed_timestamp=time.time_ns(),
        context=context.get_current(),
        severity_number=SeverityNumber.INFO,
        event_name=event,
        attributes=attributes,
    )


def _count(name: str, unit: str, attributes: dict[str, str]) -> None:
    metrics.get_meter(_SCOPE).create_counter(name, unit=unit, description=_DESCRIPTIONS[name]).add(
        1, attributes
    )


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} is a non-empty string, got {value!r}")
    return value


def _label(name: str, value: object) -> Label:
    if not isinstance(value, str | int | bool):
        raise ValueError(
            f"{name} is a class: str, int or bool (log a regression output as score), got {value!r}"
        )
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} is a finite number, got {value!r}")
    return float(value)


def _features(features: Mapping[str, FeatureValue | None]) -> dict[str, FeatureValue]:
    if not isinstance(features, Mapping):
        raise ValueError(f"features is a mapping of names to values, got {type(features).__name__}")
    if len(features) > MAX_FEATURES:
        raise ValueError(f"at most {MAX_FEATURES} features fit in one record, got {len(features)}")
    result: dict[str, FeatureValue] = {}
    for name, value in features.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"feature names are non-empty strings, got {name!r}")
        if value is None:
            continue  # a missing value: no attribute
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"feature {name!r} is not finite ({value!r}); use None for a missing value")
        if not isinstance(value, int | float | bool | str):
            raise ValueError(
                f"feature {name!r} has a value of type {type(value).__name__};"
                " feature values are int, float, bool or str"
            )
        result[FEATURE_PREFIX + name] = value
    return result


def _timestamp(moment: datetime | None) -> int:
    if moment is None:
        return time.time_ns()
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"timestamp is a timezone-aware datetime, got {moment!r}")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
