"""Every script in `examples/` runs as its docstring says, against a real `mallard serve`, and what it
sends arrives (`examples/flask_app.py` is run by `tests/instrumentation/test_flask.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import MallardServer, wait_for_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

CASES = {
    "train_torch.py": (["--epochs", "1"], "SELECT count(*) FROM spans WHERE name = 'ml.training.run'"),
    "inference_torch.py": (
        ["--calls", "30"],
        "SELECT count(*) FROM metrics WHERE metric_name = 'ml.inference.duration'",
    ),
    "llm_app.py": (
        ["--questions", "5"],
        "SELECT count(*) FROM spans WHERE gen_ai_model IS NOT NULL AND gen_ai_cost_usd > 0",
    ),
    "model_quality.py": ([], "SELECT count(*) FROM logs WHERE event_name = 'ml.label'"),
}


def test_every_example_is_run_by_a_test() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == {*CASES, "flask_app.py"}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs_and_its_telemetry_arrives(script: str, server: MallardServer) -> None:
    args, sql = CASES[script]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--endpoint", server.grpc_endpoint, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = wait_for_rows(server.data, sql.replace("count(*)", "1 AS one"), 1)
    assert rows.num_rows >= 1
