"""`mallard.instrumentation.configure()` against a real `mallard serve`: arguments, the standard `OTEL_*`
environment variables, idempotency, and Python logging with trace context.

OpenTelemetry's providers are process-global, so each case runs in a fresh interpreter (`_child`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import MallardServer, run_python, start_server, wait_for_rows

CHILD = r"""
import json, logging, sys, warnings
from opentelemetry import metrics, trace
from mallard.instrumentation import OtelLogHandler, configure, shutdown

kwargs = json.loads(sys.argv[1])
telemetry = configure(**kwargs)
if kwargs.get("service_name") == "twice":
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = configure(service_name="other")
        same = configure(**kwargs)
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, OtelLogHandler)]
    print(json.dumps({"same": again is telemetry and same is telemetry, "handlers": len(handlers),
                      "warnings": [str(w.message) for w in caught]}))
tracer = trace.get_tracer("configure-test")
counter = metrics.get_meter("configure-test").create_counter("configure.test.count")
with tracer.start_as_current_span("work") as span:
    counter.add(3, {"kind": "a"})
    logging.getLogger("configure.test").warning("disk %s full", "sda", extra={"disk.device": "sda"})
    print(json.dumps({"trace_id": format(span.get_span_context().trace_id, "032x"),
                      "service": telemetry.service_name, "protocol": telemetry.protocol}))
shutdown()
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MallardServer]:
    """A collector that requires the bearer token `s3cret` (overrides the shared `server` fixture)."""
    running = start_server(tmp_path / "data", "--flush-interval", "0.2", "--auth-token", "s3cret")
    yield running
    running.stop()


def _child(kwargs: dict[str, object], env: dict[str, str] | None = None) -> list[dict[str, object]]:
    return [json.loads(line) for line in run_python(CHILD, json.dumps(kwargs), env=env).splitlines()]


def _check_store(server: MallardServer, trace_id: str, service: str) -> None:
    spans = wait_for_rows(server.data, f"SELECT service_name FROM spans WHERE trace_id = '{trace_id}'", 1)
    assert spans.column(0).to_pylist() == [service]
    points = wait_for_rows(
        server.data,
        "SELECT service_name, value, value_int, attributes['kind'] AS kind FROM metrics"
        " WHERE metric_name = 'configure.test.count'",
        1,
    ).to_pylist()
    assert points[0]["service_name"] == service and points[0]["kind"] == "a"
    assert 3 in (points[0]["value_int"], points[0]["value"])
    logs = wait_for_rows(
        server.data,
        "SELECT body, severity_text, severity_number, service_name, attributes['disk.device'] AS device,"
        f" attributes['code.function.name'] AS function FROM logs WHERE trace_id = '{trace_id}'",
        1,
    ).to_pylist()
    assert logs == [
        {
            "body": "disk sda full",
            "severity_text": "WARNING",
            "severity_number": 13,
            "service_name": service,
            "device": "sda",
            "function": "<module>",
        }
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_arguments_send_traces_metrics_and_logs_with_trace_context(
    server: MallardServer, protocol: str
) -> None:
    endpoint = server.grpc_endpoint if protocol == "grpc" else server.http_endpoint
    (out,) = _child(
        {"service_name": "from-argument", "endpoint": endpoint, "protocol": protocol, "token": "s3cret"},
        env={"OTEL_SERVICE_NAME": "from-env"},  # the argument wins
    )
    assert out["service"] == "from-argument" and out["protocol"] == protocol
    _check_store(server, str(out["trace_id"]), "from-argument")


def test_standard_environment_variables_are_honoured(server: MallardServer) -> None:
    (out,) = _child(
        {},
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": server.http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cret",
            "OTEL_SERVICE_NAME": "from-env",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,team=ml",
        },
    )
    assert out == {"trace_id": out["trace_id"], "service": "from-env", "protocol": "http/protobuf"}
    _check_store(server, str(out["trace_id"]), "from-env")
    resource = wait_for_rows(
        server.data,
        "SELECT resource_attributes['deployment.environment'] AS env, resource_attributes['team'] AS team"
        f" FROM spans WHERE trace_id = '{out['trace_id']}'",
        1,
    ).to_pylist()
    assert resource == [{"env": "test", "team": "ml"}]


def test_a_wrong_token_is_refused_and_nothing_is_stored(server: MallardServer) -> None:
    (out,) = _child({"service_name": "intruder", "endpoint": server.grpc_endpoint, "token": "wrong"})
    (ok,) = _child({"service_name": "after", "endpoint": server.grpc_endpoint, "token": "s3cret"})
    _check_store(server, str(ok["trace_id"]), "after")  # by now the refused export is long over
    assert wait_for_rows(server.data, "SELECT count(*) FROM spans WHERE service_name = 'intruder'", 1).column(
        0
    ).to_pylist() == [0]
    assert out["service"] == "intruder"


def test_configure_is_idempotent(server: MallardServer) -> None:
    first, out = _child({"service_name": "twice", "endpoint": server.grpc_endpoint, "token": "s3cret"})
    assert first["same"] is True and first["handlers"] == 1
    assert len(first["warnings"]) == 1 and "already configured" in first["warnings"][0]
    _check_store(server, str(out["trace_id"]), "twice")
