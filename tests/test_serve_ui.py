"""`mallard serve` also serves the HTTP API (`mallard ui`) on --ui-port, from a child process."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import ApiClient, MallardServer, start_server
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor


def _get(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    return ApiClient(port, token).call(path)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _refused(port: int) -> bool:
    try:
        _get(port, "/healthz")
    except urllib.error.URLError:
        return True
    return False


def _wait_for_trace(port: int, trace_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = _get(port, f"/api/v1/traces/{trace_id}")
        if status == 200 or time.monotonic() > deadline:
            assert status == 200, body
            return dict(body)
        time.sleep(0.1)


@pytest.fixture
def mallard(tmp_path: Path) -> MallardServer:
    return start_server(tmp_path / "data", "--flush-interval", "0.2")


def test_serve_prints_the_api_port_and_answers_on_it(mallard: MallardServer) -> None:
    try:
        assert mallard.ui_port is not None and mallard.ui_port not in (0, 8686)
        assert mallard.output[-1].rstrip().endswith(f" ui=127.0.0.1:{mallard.ui_port}")
        assert _get(mallard.ui_port, "/healthz") == (200, {"status": "ok"})
        status, _ = _get(mallard.ui_port, "/api/v1/services")
        assert status == 200
    finally:
        assert mallard.stop() == 0


def test_spans_sent_over_otlp_show_up_in_the_api(mallard: MallardServer) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=mallard.grpc_endpoint, insecure=True))
    )
    with provider.get_tracer("test").start_as_current_span("GET /cart") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
    provider.shutdown()
    assert mallard.ui_port is not None
    try:
        trace = _wait_for_trace(mallard.ui_port, trace_id)
        assert trace["root_service"] == "checkout"
        assert [s["name"] for s in trace["spans"]] == ["GET /cart"]
        status, body = _get(mallard.ui_port, "/api/v1/services")
        assert status == 200 and "checkout" in json.dumps(body)
    finally:
        assert mallard.stop() == 0


def test_sigterm_stops_the_collector_and_the_api(mallard: MallardServer) -> None:
    assert mallard.ui_port is not None
    children = _children(mallard.process.pid)
    assert children, "the API runs in a child process"
    assert mallard.stop(signal.SIGTERM) == 0
    assert all(_gone(pid) for pid in children)
    assert _refused(mallard.ui_port)
    assert "error" not in "".join(mallard.output).lower()


def test_the_api_stops_when_serve_is_killed(mallard: MallardServer) -> None:
    children = _children(mallard.process.pid)
    assert children
    mallard.kill()
    assert all(_gone(pid) for pid in children)


def test_the_api_can_be_turned_off(tmp_path: Path) -> None:
    running = start_server(tmp_path / "data", "--ui", "false")
    try:
        assert running.ui_port is None
        assert " ui=" not in running.output[-1]
        assert _children(running.process.pid) == []
    finally:
        assert running.stop() == 0


def test_the_api_takes_the_collectors_auth_token(tmp_path: Path) -> None:
    running = start_server(tmp_path / "data", "--auth-token", "s3cret")
    assert running.ui_port is not None
    try:
        assert _get(running.ui_port, "/api/v1/services")[0] == 401
        assert _get(running.ui_port, "/api/v1/services", token="s3cret")[0] == 200
    finally:
        assert running.stop() == 0


def test_a_taken_ui_port_fails_the_start(tmp_path: Path, mallard: MallardServer) -> None:
    from harness import run_cli

    assert mallard.ui_port is not None
    try:
        result = run_cli(
            [
                "serve",
                "--data",
                str(tmp_path / "other"),
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--ui-port",
                str(mallard.ui_port),
            ]
        )
        assert result.returncode == 1
        assert "mallard serve: error: cannot start the HTTP API" in result.stderr
    finally:
        assert mallard.stop() == 0
