"""`mallard demo`: on its own server, every workload lands in the store with the shapes the dashboards
read; against a running server (`--endpoint`), the chosen workloads only; bad options fail with a
one-line reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import MallardServer, query, run_cli, wait_for_rows

from mallard.query import Store
from mallard.query.models import model_quality


def test_demo_on_its_own_server_fills_every_signal(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "mallard.app.cli", "demo", "--duration", "12", "--ui-port", "0",
         "--exit-after", "--data", str(data)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"data={data.resolve()}" in result.stdout
    services = {
        row["service_name"]: row
        for row in query(
            data,
            "SELECT service_name, count(*) AS spans, sum((status_code = 'ERROR')::int) AS errors,"
            " sum(gen_ai_input_tokens) AS input_tokens, count(DISTINCT trace_id) AS traces"
            " FROM spans GROUP BY 1",
        ).to_pylist()
    }
    assert {"demo-frontend", "demo-inventory", "demo-assistant", "demo-trainer"} <= set(services)
    assert services["demo-frontend"]["errors"] > 0  # 404s downstream become 502s
    assert services["demo-assistant"]["input_tokens"] > 0
    # the frontend's client spans are the parents of the inventory's server spans: a service-map edge
    edges = query(
        data,
        "SELECT count(*) AS n FROM spans c JOIN spans s ON s.parent_span_id = c.span_id"
        " AND s.trace_id = c.trace_id WHERE c.service_name = 'demo-frontend'"
        " AND s.service_name = 'demo-inventory'",
    ).to_pylist()
    assert edges[0]["n"] > 0
    metrics = {
        (row["service_name"], row["metric_name"])
        for row in query(data, "SELECT DISTINCT service_name, metric_name FROM metrics").to_pylist()
    }
    assert {
        ("demo-frontend", "http.server.request.duration"),
        ("demo-assistant", "gen_ai.client.token.usage"),
        ("demo-trainer", "ml.training.loss"),
        ("demo-trainer", "ml.training.throughput"),
        ("demo-scorer", "ml.predictions"),
    } <= metrics
    runs = query(data, "SELECT count(*) AS n FROM spans WHERE name = 'ml.training.run'").to_pylist()
    assert runs[0]["n"] == 1
    with Store(data) as store:
        quality = [q for q in model_quality(store, model="churn") if q.segment is None]
    assert {q.version for q in quality} == {"v1", "v2"}
    assert all(q.labelled > 0 and q.accuracy is not None for q in quality)


def test_demo_against_a_running_server_sends_only_the_chosen_workloads(server: MallardServer) -> None:
    result = run_cli(["demo", "--endpoint", server.grpc_endpoint, "--duration", "3", "--only", "llm"])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = wait_for_rows(
        server.data, "SELECT DISTINCT service_name FROM spans WHERE service_name LIKE 'demo-%'", 1
    )
    assert rows.column(0).to_pylist() == ["demo-assistant"]


def test_demo_refuses_unknown_workloads_and_durations() -> None:
    for args, message in (
        (["--only", "shop,chess"], "--only takes shop, llm, training, model"),
        (["--duration", "0"], "--duration must be positive"),
    ):
        result = run_cli(["demo", "--endpoint", "127.0.0.1:9", *args])
        assert result.returncode == 2
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
