"""Model quality with mallard: predictions now, labels later, and a feature that drifts.

    mallard serve --data ./data &
    python examples/model_quality.py --endpoint localhost:4317 --data ./data

A churn model scores 400 customers over the last two hours (the second hour's incomes are 60 %
higher: injected drift), then the true outcomes arrive for most of them (as they would from another
job, hours later). With `--data`, the script waits for the rows and prints `model_quality` and
`feature_drift` from the store.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta

from opentelemetry import trace

from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.quality import log_label, log_prediction

MODEL = "churn"


def main() -> None:
    parser = argparse.ArgumentParser(description="Model quality with mallard")
    parser.add_argument("--endpoint", default="localhost:4317", help="the collector's OTLP gRPC address")
    parser.add_argument("--data", help="the collector's data directory: print the quality from the store")
    args = parser.parse_args()

    configure(service_name="churn-scorer", endpoint=args.endpoint)
    rng = random.Random(7)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=2)
    outcomes = {}
    tracer = trace.get_tracer("example")
    for i in range(400):
        when = start + timedelta(seconds=18 * i)
        drifted = when >= start + timedelta(hours=1)
        income = rng.gauss(40_000, 8_000) * (1.6 if drifted else 1.0)
        tenure = rng.randint(1, 60)
        risk = 1 / (1 + pow(2.718, (tenure - 20) / 8))
        with tracer.start_as_current_span("score"):  # the prediction links to this request's trace
            log_prediction(
                MODEL,
                "v2",
                f"customer-{i}",
                features={"income": income, "tenure_months": tenure, "plan": rng.choice(["basic", "pro"])},
                prediction=int(risk >= 0.5),
                score=risk,
                segment=rng.choice(["eu", "us"]),
                timestamp=when,
            )
        if rng.random() < 0.8:  # the rest never get a label
            outcomes[f"customer-{i}"] = int(rng.random() < risk)
    for prediction_id, churned in outcomes.items():  # normally another process, hours later
        log_label(prediction_id, churned, model=MODEL)
    shutdown()
    print(f"logged 400 predictions and {len(outcomes)} labels")
    if args.data:
        report(args.data, start, now, expected=400 + len(outcomes))


def report(data: str, start: datetime, end: datetime, *, expected: int) -> None:
    from mallard.query import Store
    from mallard.query.models import feature_drift, model_quality

    with Store(data) as store:
        deadline = time.monotonic() + 30
        count = "SELECT count(*) AS n FROM logs WHERE event_name IN ('ml.prediction', 'ml.label')"
        while store.sql(count).column("n")[0].as_py() < expected and time.monotonic() < deadline:
            time.sleep(0.5)  # the collector commits every few seconds
        for row in model_quality(store, model=MODEL, start=start, end=end + timedelta(seconds=1)):
            print(
                f"{row.version} {row.segment or 'all':>3}: {row.predictions} predictions,"
                f" {row.labelled} labelled, accuracy {_show(row.accuracy)}, F1 {_show(row.f1)}"
            )
        middle = start + timedelta(hours=1)
        for drift in feature_drift(store, model=MODEL, baseline=(start, middle), current=(middle, end)):
            print(f"{drift.feature}: PSI {_show(drift.psi)}, KS {_show(drift.ks)}")


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
