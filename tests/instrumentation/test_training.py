"""`mallard.instrumentation.training` end to end: a real PyTorch loop on the CPU, in a fresh interpreter
(OpenTelemetry's providers are process-global), exporting to a real `mallard serve`; the assertions read
the store. The child prints what the loop itself computed (losses, learning rates, gradient norms,
batch sizes) as JSON, so the stored values are compared with the loop's own numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from harness import MallardServer, query, run_python, wait_for_rows

pytest.importorskip("torch")

CHILD = r"""
import json, os, sys
import torch
from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.training import autolog, training_run

args = json.loads(sys.argv[1])
configure(service_name="trainer", endpoint=args["endpoint"], metric_interval_s=60)
torch.manual_seed(7)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
data = torch.utils.data.TensorDataset(torch.randn(44, 8), torch.randint(0, 3, (44,)))
loader = torch.utils.data.DataLoader(data, batch_size=8)  # 6 batches: 5 of 8, 1 of 4
settings = {key: args[key] for key in ("sample_every", "distributions_every", "overhead_budget")}
params = {"lr": 0.1, "batch_size": 8, "optimizer": "SGD"}
auto = args["mode"] == "auto"
if auto:  # an unmodified loop, plus log_loss() and checkpoint()
    run = autolog(model, optimizer, name=args["name"], params=params, dataloader=loader, **settings)
else:
    run = training_run(model, optimizer, name=args["name"], params=params, **settings).__enter__()
seen = {"run_id": run.run_id, "loss": [], "lr": [], "grad_norm": [], "batch": []}
step = 0
for epoch in range(3):
    if not auto:
        epoch_block = run.epoch()
        epoch_block.__enter__()
    for x, y in loader:
        step += 1
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        seen["grad_norm"].append(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item())
        seen["lr"].append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reported = loss * float("nan") if step == args["nan_step"] else loss
        seen["loss"].append(reported.item())
        seen["batch"].append(len(x))
        if auto:
            run.log_loss(reported)  # after optimizer.step(): still this step's loss
        else:
            run.step(loss=reported, batch_size=len(x))
    scheduler.step()
    path = os.path.join(args["dir"], f"epoch{epoch}.pt")
    torch.save(model.state_dict(), path)
    run.checkpoint(path, epoch=epoch)
    if not auto:
        epoch_block.__exit__(None, None, None)
print(json.dumps(seen))
if not auto:
    run.__exit__(None, None, None)
    shutdown()
# auto: autolog's run ends at exit, before OpenTelemetry's own exit flush
"""

STEPS, EPOCHS, SAMPLES = 18, 3, 132
_OF_RUN = "attributes['ml.run.id'] = '{}'"
PARAMETER_TENSORS = 4  # two Linear layers: weight and bias each
BUCKETS = 32


def _train(server: MallardServer, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    args = {
        "endpoint": server.grpc_endpoint,
        "name": "tiny-mlp",
        "mode": "manual",
        "sample_every": 1,
        "distributions_every": 6,
        "overhead_budget": None,  # the exact spacing asked for, whatever it costs
        "nan_step": 8,
        "dir": str(tmp_path),
        **overrides,
    }
    seen: dict[str, Any] = json.loads(run_python(CHILD, json.dumps(args)).splitlines()[-1])
    return seen


def _spans(server: MallardServer, name: str, run_id: str, expected: int) -> list[dict[str, Any]]:
    return wait_for_rows(
        server.data,
        "SELECT span_id, parent_span_id, status_code, attributes, events FROM spans"
        f" WHERE name = '{name}' AND attributes['ml.run.id'] = '{run_id}'"
        " ORDER BY TRY_CAST(attributes['ml.step'] AS INT), TRY_CAST(attributes['ml.epoch'] AS INT)",
        expected,
    ).to_pylist()


def _points(server: MallardServer, metric: str, run_id: str, column: str) -> list[Any]:
    """The values of `column` in the metric's points of the run. The export at exit holds them all
    (the interval is 60 s), so once the steps counter has its final total the others are there too."""
    wait_for_rows(
        server.data,
        "SELECT 1 FROM metrics WHERE metric_name = 'ml.training.steps'"
        f" AND attributes['ml.run.id'] = '{run_id}' AND value_int = {STEPS}",
        1,
    )
    sql = f"SELECT {column} FROM metrics WHERE metric_name = '{metric}' AND {_OF_RUN.format(run_id)}"
    return query(server.data, sql).column(0).to_pylist()


def _check_common(server: MallardServer, seen: dict[str, Any], sampled: list[int]) -> dict[str, Any]:
    """What both modes record; returns the run span."""
    run_id = seen["run_id"]
    (run,) = _spans(server, "ml.training.run", run_id, 1)
    attributes = dict(run["attributes"])
    assert attributes["ml.run.name"] == "tiny-mlp"
    assert attributes["ml.param.lr"] == "0.1" and attributes["ml.param.batch_size"] == "8"
    assert attributes["ml.param.optimizer"] == "SGD" and attributes["ml.optimizer.name"] == "SGD"
    assert attributes["ml.model.name"] == "Sequential"
    assert attributes["ml.model.parameters"] == str(8 * 16 + 16 + 16 * 3 + 3)
    assert attributes["ml.training.steps"] == str(STEPS) and attributes["ml.training.epochs"] == str(EPOCHS)
    assert attributes["ml.training.samples"] == str(SAMPLES)
    assert attributes["ml.training.nonfinite_losses"] == "1"
    assert attributes["ml.telemetry.failures"] == "0"
    # no GPU here: said on the run span, and no GPU series at all
    assert attributes["ml.device.type"] == "cpu" and attributes["ml.gpu.count"] == "0"
    gpu = query(
        server.data,
        "SELECT count(*) FROM metrics WHERE metric_name LIKE 'ml.gpu.%' OR metric_name LIKE 'hw.%'",
    )
    assert gpu.column(0).to_pylist() == [0]
    # checkpoints: run span events and log records, one per epoch
    checkpoints = [e for e in run["events"] if e["name"] == "ml.training.checkpoint"]
    assert [dict(e["attributes"])["ml.checkpoint.epoch"] for e in checkpoints] == ["0", "1", "2"]
    assert all(int(dict(e["attributes"])["ml.checkpoint.size"]) > 0 for e in checkpoints)
    assert [dict(e["attributes"])["ml.step"] for e in checkpoints] == ["6", "12", "18"]
    logs = wait_for_rows(
        server.data,
        "SELECT attributes['ml.checkpoint.path'] AS path FROM logs"
        f" WHERE event_name = 'ml.training.checkpoint' AND {_OF_RUN.format(run_id)} ORDER BY path",
        3,
    )
    assert [Path(p).name for p in logs.column(0).to_pylist()] == ["epoch0.pt", "epoch1.pt", "epoch2.pt"]

    # epochs: children of the run span
    epochs = _spans(server, "ml.training.epoch", run_id, EPOCHS)
    assert [dict(e["attributes"])["ml.epoch"] for e in epochs] == ["0", "1", "2"]
    assert {e["parent_span_id"] for e in epochs} == {run["span_id"]}
    assert [dict(e["attributes"])["ml.epoch.steps"] for e in epochs] == ["6"] * 3
    assert [dict(e["attributes"])["ml.epoch.samples"] for e in epochs] == ["44"] * 3

    # steps: the sampled ones and the one with the non-finite loss, children of their epoch
    nan_step = 8
    expected_steps = sorted({*sampled, nan_step})
    steps = _spans(server, "ml.training.step", run_id, len(expected_steps))
    by_step = {int(dict(s["attributes"])["ml.step"]): s for s in steps}
    assert sorted(by_step) == expected_steps
    epoch_ids = [e["span_id"] for e in epochs]
    for number, span in by_step.items():
        attrs = dict(span["attributes"])
        index = number - 1
        assert span["parent_span_id"] == epoch_ids[index // 6]
        assert int(attrs["ml.training.batch_size"]) == seen["batch"][index]
        duration = float(attrs["ml.training.step.duration"])
        assert math.isclose(float(attrs["ml.training.throughput"]), seen["batch"][index] / duration)
        if number == nan_step:
            assert attrs["ml.training.loss"] == "nan" and span["status_code"] == "ERROR"
            (event,) = span["events"]
            assert (
                event["name"] == "ml.training.nonfinite_loss" and dict(event["attributes"])["ml.step"] == "8"
            )
            continue
        assert float(attrs["ml.training.loss"]) == seen["loss"][index]
        assert float(attrs["ml.training.learning_rate"]) == seen["lr"][index] == 0.1 * 0.5 ** (index // 6)
        assert math.isclose(float(attrs["ml.training.grad_norm"]), seen["grad_norm"][index], rel_tol=1e-5)
    warning = wait_for_rows(
        server.data,
        "SELECT severity_text, span_id, attributes['ml.step'] AS step FROM logs"
        f" WHERE event_name = 'ml.training.nonfinite_loss' AND attributes['ml.run.id'] = '{run_id}'",
        1,
    ).to_pylist()
    assert warning == [{"severity_text": "WARNING", "span_id": by_step[nan_step]["span_id"], "step": "8"}]

    # counters: the totals are the steps and samples run
    assert _points(server, "ml.training.steps", run_id, "value_int") == [STEPS]
    assert _points(server, "ml.training.samples", run_id, "value_int") == [SAMPLES]
    assert _points(server, "ml.training.learning_rate", run_id, "value") == [0.025]
    assert _points(server, "ml.training.loss", run_id, "value") == [seen["loss"][max(sampled) - 1]]
    assert _points(server, "ml.training.step.duration", run_id, "count") == [len(sampled)]
    (throughput,) = _points(server, "ml.training.throughput", run_id, "value")
    (step_time,) = _points(server, "ml.training.step.time", run_id, "value")
    assert throughput > 0 and step_time > 0

    # distributions: every 6 steps, each parameter tensor and its gradient
    rows = wait_for_rows(
        server.data,
        "SELECT attributes['ml.step'] AS step, attributes['ml.parameter.name'] AS name,"
        " attributes['ml.distribution.kind'] AS kind, attributes['ml.distribution.count'] AS count,"
        " attributes['ml.distribution.bucket_counts'] AS buckets FROM logs"
        f" WHERE event_name = 'ml.training.distribution' AND attributes['ml.run.id'] = '{run_id}'",
        3 * PARAMETER_TENSORS * 2,
    ).to_pylist()
    assert len(rows) == 3 * PARAMETER_TENSORS * 2
    assert {r["step"] for r in rows} == {"6", "12", "18"} and {r["kind"] for r in rows} == {
        "parameter",
        "gradient",
    }
    for row in rows:
        buckets = json.loads(row["buckets"])
        assert len(buckets) == BUCKETS and sum(buckets) == int(row["count"])
    assert {r["count"] for r in rows if r["name"] == "0.weight"} == {"128"}
    return attributes


def test_manual_mode_records_every_step_with_the_loops_own_values(
    server: MallardServer, tmp_path: Path
) -> None:
    seen = _train(server, tmp_path, mode="manual", sample_every=1)
    run = _check_common(server, seen, list(range(1, STEPS + 1)))
    assert run["ml.training.mode"] == "manual"
    run_id = seen["run_id"]
    steps = _spans(server, "ml.training.step", run_id, STEPS)
    # every step sampled: the step-time counter is the sum of the step spans' durations
    durations = [float(dict(s["attributes"])["ml.training.step.duration"]) for s in steps]
    (total,) = _points(server, "ml.training.step.time", run_id, "value")
    assert math.isclose(total, sum(durations), rel_tol=1e-9)
    # the throughput gauge's last point: the last step's samples over its time
    (throughput,) = _points(server, "ml.training.throughput", run_id, "value")
    assert math.isclose(throughput, seen["batch"][-1] / durations[-1], rel_tol=1e-9)
    (histogram_sum,) = _points(server, "ml.training.step.duration", run_id, "sum")
    assert math.isclose(histogram_sum, sum(durations), rel_tol=1e-9)
    # no data loader observed: no data-wait figures
    assert all("ml.training.data_wait.duration" not in dict(s["attributes"]) for s in steps)
    assert query(
        server.data, "SELECT count(*) FROM metrics WHERE metric_name LIKE 'ml.training.data_wait%'"
    ).column(0).to_pylist() == [0]


def test_automatic_mode_observes_an_unmodified_loop(server: MallardServer, tmp_path: Path) -> None:
    seen = _train(server, tmp_path, mode="auto", sample_every=3)
    run = _check_common(server, seen, list(range(3, STEPS + 1, 3)))
    assert run["ml.training.mode"] == "automatic"
    steps = _spans(server, "ml.training.step", seen["run_id"], 7)
    for span in steps:
        attrs = dict(span["attributes"])
        wait = float(attrs["ml.training.data_wait.duration"])
        compute = float(attrs["ml.training.compute.duration"])
        assert wait > 0 and compute > 0
        assert math.isclose(wait + compute, float(attrs["ml.training.step.duration"]), rel_tol=1e-9)
    (wait_total,) = _points(server, "ml.training.data_wait.time", seen["run_id"], "value")
    (step_time,) = _points(server, "ml.training.step.time", seen["run_id"], "value")
    assert 0 < wait_total < step_time


SWEEP = r"""
import json, sys
import torch
from opentelemetry import metrics
from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.training import training_run
from mallard.instrumentation.training_signals import Instruments

args = json.loads(sys.argv[1])
configure(service_name="sweep", endpoint=args["endpoint"], metric_interval_s=60)
torch.manual_seed(3)
runs = []
for trial in range(3):  # a small sweep: one process, one run after the other
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    # asked for the densest spacing; the default budget spaces it out on these ~0.1 ms steps
    with training_run(model, optimizer, name=f"trial-{trial}", sample_every=1, distributions_every=1) as run:
        for _ in range(args["steps"]):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            run.step(loss=loss, batch_size=16)
    runs.append({
        "run_id": run.run_id, "sampled": run.sampled_steps, "passes": run.distribution_passes,
        "telemetry_ns": run.telemetry_ns, "step_ns": run.step_ns,
    })
metrics.get_meter_provider().force_flush()  # a collection: the ended runs' last report
print(json.dumps({"runs": runs, "waiting": len(Instruments.get()._runs)}))
shutdown()
"""
SWEEP_STEPS = 3000


def test_the_overhead_budget_spaces_the_periodic_work_and_runs_share_the_instruments(
    server: MallardServer,
) -> None:
    out = json.loads(run_python(SWEEP, json.dumps({"endpoint": server.grpc_endpoint, "steps": SWEEP_STEPS})))
    assert out["waiting"] == 0  # ended runs are dropped once reported: a sweep keeps no model alive
    for run in out["runs"]:
        run_id = run["run_id"]
        # spaced out: far fewer than the every-step asked for, yet some of each
        assert 1 <= run["sampled"] < SWEEP_STEPS / 20 and 1 <= run["passes"] < SWEEP_STEPS / 20
        # within the 0.5 % budget but for the first, cold ones (~1 % here), against ~700 % unspaced
        assert run["telemetry_ns"] <= 0.05 * run["step_ns"]
        (span,) = _spans(server, "ml.training.run", run_id, 1)
        attributes = dict(span["attributes"])
        assert attributes["ml.training.overhead_budget"] == "0.005"
        assert attributes["ml.training.sampled_steps"] == str(run["sampled"])
        assert attributes["ml.training.distribution_passes"] == str(run["passes"])
        assert math.isclose(float(attributes["ml.training.telemetry.time"]), run["telemetry_ns"] / 1e9)
        # what was said is what was sent: a step span per sampled step, 4 histograms per pass
        assert len(_spans(server, "ml.training.step", run_id, run["sampled"])) == run["sampled"]
        histograms = wait_for_rows(
            server.data,
            f"SELECT 1 FROM logs WHERE event_name = 'ml.training.distribution' AND {_OF_RUN.format(run_id)}",
            4 * run["passes"],
        )
        assert histograms.num_rows == 4 * run["passes"]
    # one shared set of instruments reported every run of the sweep, each once with its exact total
    points = wait_for_rows(
        server.data,
        "SELECT attributes['ml.run.id'] AS run_id, value_int FROM metrics"
        " WHERE metric_name = 'ml.training.steps' AND service_name = 'sweep'",
        3,
    ).to_pylist()
    assert sorted(points, key=lambda p: p["run_id"]) == sorted(
        ({"run_id": run["run_id"], "value_int": SWEEP_STEPS} for run in out["runs"]),
        key=lambda p: p["run_id"],
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"overhead_budget": 0.0}, "overhead_budget"),
        ({"overhead_budget": 1.5}, "overhead_budget"),
        ({"sample_every": 0}, "sample_every"),
        ({"distributions_every": -1}, "distributions_every"),
    ],
)
def test_invalid_settings_are_refused_at_once(setting: dict[str, Any], message: str) -> None:
    import torch

    from mallard.instrumentation.training import training_run

    with pytest.raises(ValueError, match=message):
        training_run(torch.nn.Linear(2, 1), **setting)
