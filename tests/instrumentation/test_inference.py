"""`mallard.instrumentation.inference.instrument_model` end to end: a real PyTorch model in a fresh
interpreter (OpenTelemetry's providers are process-global) exporting to a real `mallard serve`."""

from __future__ import annotations

import json

import pytest
from harness import MallardServer, query, run_python, wait_for_rows

pytest.importorskip("torch")

CHILD = r"""
import json, sys
import torch
from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.inference import instrument_model

configure(service_name="server", endpoint=sys.argv[1], metric_interval_s=60)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
handle = instrument_model(model, name="scorer", sample_every=2)
try:
    instrument_model(model)
    twice = "accepted"
except ValueError:
    twice = "refused"
with torch.no_grad():
    outputs = [model(torch.randn(size, 4)).shape[0] for size in (1, 2, 3, 4, 5)]
    try:
        model(torch.randn(3, 5))  # wrong width: the forward raises
        raised = False
    except RuntimeError:
        raised = True
    handle.remove()
    model(torch.randn(7, 4))  # not recorded any more
print(json.dumps({"outputs": outputs, "raised": raised, "twice": twice, "calls": handle.calls}))
shutdown()
"""


def test_latency_batch_size_and_errors_are_recorded(server: MallardServer) -> None:
    out = json.loads(run_python(CHILD, server.grpc_endpoint).splitlines()[-1])
    assert out == {"outputs": [1, 2, 3, 4, 5], "raised": True, "twice": "refused", "calls": 6}

    # spans: every second call, and the failing one
    spans = wait_for_rows(
        server.data,
        "SELECT status_code, attributes, events FROM spans WHERE name = 'ml.inference'"
        " ORDER BY start_time_unix_nano",
        3,
    ).to_pylist()
    assert len(spans) == 3
    sampled = [dict(s["attributes"]) for s in spans[:2]]
    assert [a["ml.inference.batch_size"] for a in sampled] == ["2", "4"]
    assert {a["ml.model.name"] for a in sampled} == {"scorer"}
    assert {a["ml.device.type"] for a in sampled} == {"cpu"} and {a["ml.gpu.count"] for a in sampled} == {"0"}
    assert {a["ml.model.training"] for a in sampled} == {"false"}
    assert all(s["status_code"] != "ERROR" for s in spans[:2])
    failed = spans[2]
    assert failed["status_code"] == "ERROR"
    assert dict(failed["attributes"])["error.type"] == "RuntimeError"
    assert dict(failed["attributes"])["ml.inference.batch_size"] == "3"
    assert [e["name"] for e in failed["events"]] == ["exception"]

    # histograms: every call counted, the failing one under its error.type
    durations = wait_for_rows(
        server.data,
        "SELECT attributes['error.type'] AS error, count, sum, unit FROM metrics"
        " WHERE metric_name = 'ml.inference.duration' AND attributes['ml.model.name'] = 'scorer'"
        " ORDER BY error NULLS FIRST",
        2,
    ).to_pylist()
    assert [(d["error"], d["count"], d["unit"]) for d in durations] == [
        (None, 5, "s"),
        ("RuntimeError", 1, "s"),
    ]
    assert all(d["sum"] > 0 for d in durations)
    batches = query(
        server.data,
        "SELECT count, sum, min, max FROM metrics WHERE metric_name = 'ml.inference.batch_size'",
    ).to_pylist()
    assert batches == [{"count": 6, "sum": 18.0, "min": 1.0, "max": 5.0}]
