"""The benchmarks still run: each one at its smallest, against the current schema and code. (Their
figures are not checked here: they are measured on a quiet machine and written to
docs/performance.md.) A benchmark that cannot start is a performance claim nobody can check again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUNS = {
    "query.py": (["--spans", "2000", "--files-per-hour", "1", "--runs", "1", "--warmups", "0"], "p95 met"),
    "ingest.py": (
        ["--seconds", "2", "--warmup", "1", "--workers", "1", "--signal", "traces", "--transport", "grpc"],
        "acked/s",
    ),
    "instrumentation.py": (
        ["--rounds", "1", "--steps", "20", "--flask-rounds", "1", "--requests", "20"],
        "the per-step bookkeeping",
    ),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_at_its_smallest(script: str, tmp_path: Path) -> None:
    if script == "instrumentation.py":
        pytest.importorskip("torch")
        pytest.importorskip("flask")
    args, expected = RUNS[script]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert expected in done.stdout
