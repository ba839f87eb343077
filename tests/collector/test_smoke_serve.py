"""`mallard serve` starts on port 0, takes a request on each transport and drains on SIGTERM."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from harness import MallardServer, query, run_cli, start_server, wait_for_rows


def test_serve_takes_http_protobuf_and_drains(server: MallardServer) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes(range(1, 17)), bytes(range(1, 9)), "smoke"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_500_000_000
    answer = urllib.request.urlopen(
        urllib.request.Request(
            f"{server.http_endpoint}/v1/traces",
            data=request.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
    )
    assert answer.status == 200
    rows = wait_for_rows(server.data, "select name, duration from spans", 1)
    assert rows.to_pylist() == [{"name": "smoke", "duration": 500_000_000}]
    assert server.stop() == 0


def test_self_metrics_land_in_the_store(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    running = start_server(tmp_path / "data", "--flush-interval", "0.2", "--self-metrics-interval", "0.3")
    try:
        request = ExportLogsServiceRequest()
        records = request.resource_logs.add().scope_logs.add().log_records
        for i in range(3):
            records.add(time_unix_nano=1_700_000_000_000_000_000 + i).body.string_value = f"line {i}"
        urllib.request.urlopen(
            urllib.request.Request(
                f"{running.http_endpoint}/v1/logs",
                data=request.SerializeToString(),
                headers={"Content-Type": "application/x-protobuf"},
            )
        )
        sql = (
            "select value from metrics where service_name = 'mallard' and "
            "metric_name = 'mallard_accepted_items_total' and attributes['signal'] = 'logs' and value >= 3"
        )
        rows = wait_for_rows(running.data, sql, 1)
        assert rows.num_rows >= 1
        gauges = query(
            running.data,
            "select distinct metric_name from metrics where metric_type = 'gauge' "
            "and service_name = 'mallard'",
        )
        assert {"mallard_queue_bytes", "mallard_wal_bytes"} <= set(gauges.column(0).to_pylist())
    finally:
        running.stop()


def test_a_second_server_on_the_same_store_is_refused(server: MallardServer) -> None:
    done = run_cli(
        [
            "serve",
            "--data",
            str(server.data),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--wal-lock-timeout",
            "0.5",
        ]
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("mallard serve: error: ")
    assert "in use by another mallard process" in done.stderr
    assert "Traceback" not in done.stderr
    assert server.process.poll() is None  # the first one serves on


@pytest.mark.parametrize("taken", ["--grpc-port", "--http-port"])
def test_a_taken_port_is_a_one_line_error(tmp_path: Path, taken: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        flags = {"--grpc-port": "0", "--http-port": "0", taken: port}
        done = run_cli(["serve", "--data", str(tmp_path / "data"), *(x for kv in flags.items() for x in kv)])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("mallard serve: error: cannot listen on 127.0.0.1")
    assert "Traceback" not in done.stderr
