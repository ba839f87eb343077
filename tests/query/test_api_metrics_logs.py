"""The metric and log routes of the HTTP API (`mallard ui`) over a store filled through the collector.

The data (T0 = 2024-05-31 16:00 UTC, seconds after T0):

    requests (cumulative monotonic sum, service shop, counters started at T0):
        route=/a:  +10 s 5, +30 s 8, +70 s 20, +130 s 26   -> increase per minute 8, 12, 6
        route=/b:  +10 s 1, +70 s 4                         -> increase per minute 1, 3
    temperature (gauge, Cel): +0 s 20, +20 s 22, +70 s 30 -> avg per minute 21, 30
    logs: shop +5 s INFO "checkout started" and +15 s ERROR "payment FAILED" (trace TRACE),
          cart +25 s WARN "cart is slow" (no trace context)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import UiServer, post_otlp, start_server, start_ui, wait_for_rows
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from otlp_values import kv

from mallard.query.timerange import to_unix_nano

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
RANGE = "start=2024-05-31T16:00:00Z&end=2024-05-31T16:03:00Z"
TRACE = "ab" * 16
SPAN = "01" * 8


def ns(seconds: float) -> int:
    return to_unix_nano(T0 + timedelta(seconds=seconds))


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def metrics_request() -> bytes:
    def point(seconds: int, value: float, route: str | None = None) -> pb.NumberDataPoint:
        return pb.NumberDataPoint(
            time_unix_nano=ns(seconds),
            start_time_unix_nano=ns(0) if route else 0,
            as_double=value,
            attributes=[kv("route", route)] if route else [],
        )

    counter = pb.Metric(
        name="requests",
        unit="1",
        sum=pb.Sum(
            aggregation_temporality=pb.AGGREGATION_TEMPORALITY_CUMULATIVE,
            is_monotonic=True,
            data_points=[
                *(point(s, v, "/a") for s, v in ((10, 5), (30, 8), (70, 20), (130, 26))),
                *(point(s, v, "/b") for s, v in ((10, 1), (70, 4))),
            ],
        ),
    )
    gauge = pb.Metric(
        name="temperature",
        unit="Cel",
        description="room temperature",
        gauge=pb.Gauge(data_points=[point(0, 20), point(20, 22), point(70, 30)]),
    )
    message = ExportMetricsServiceRequest()
    resource = message.resource_metrics.add()
    resource.resource.attributes.append(kv("service.name", "shop"))
    resource.scope_metrics.add().metrics.extend([counter, gauge])
    return message.SerializeToString()


# (service, seconds after T0, severity, body, with trace context)
RECORDS = [
    ("shop", 5, 9, "checkout started", True),
    ("shop", 15, 17, "payment FAILED", True),
    ("cart", 25, 13, "cart is slow", False),
]


def logs_request() -> bytes:
    message = ExportLogsServiceRequest()
    for service in ("shop", "cart"):
        resource = message.resource_logs.add()
        resource.resource.attributes.append(kv("service.name", service))
        scope = resource.scope_logs.add()
        for name, seconds, severity, body, traced in RECORDS:
            if name == service:
                scope.log_records.append(
                    LogRecord(
                        time_unix_nano=ns(seconds),
                        severity_number=severity,  # type: ignore[arg-type]
                        body=AnyValue(string_value=body),
                        trace_id=bytes.fromhex(TRACE) if traced else b"",
                        span_id=bytes.fromhex(SPAN) if traced else b"",
                        attributes=[kv("n", seconds)],
                    )
                )
    return message.SerializeToString()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store filled once through a real collector (as the `server` fixture starts it)."""
    root = tmp_path_factory.mktemp("api-metrics-logs") / "data"
    collector = start_server(root, "--flush-interval", "0.2")
    try:
        post_otlp(collector, "metrics", metrics_request())
        post_otlp(collector, "logs", logs_request())
        assert wait_for_rows(root, "select metric_name from metrics", 9).num_rows == 9
        assert wait_for_rows(root, "select body from logs", 3).num_rows == 3
    finally:
        assert collector.stop() == 0
    return root


# --- `mallard ui` as a child process (as in test_api.py) --------------------------------------


@pytest.fixture(scope="module")
def ui(data: Path) -> Iterator[UiServer]:
    running = start_ui(data)
    yield running
    assert running.stop() == 0, "".join(running.output)


# --- metrics ----------------------------------------------------------------------------------


def test_metric_names(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/metrics?{RANGE}")
    assert status == 200
    assert body == {
        "start": "2024-05-31T16:00:00Z",
        "end": "2024-05-31T16:03:00Z",
        "metrics": [
            {
                "name": "requests",
                "type": "sum",
                "unit": "1",
                "description": "",
                "temporality": "cumulative",
                "point_count": 6,
            },
            {
                "name": "temperature",
                "type": "gauge",
                "unit": "Cel",
                "description": "room temperature",
                "temporality": None,
                "point_count": 3,
            },
        ],
    }
    # [+60 s, +120 s) holds /a +70 s, /b +70 s and the gauge's +70 s
    counts = {
        m["name"]: m["point_count"]
        for m in ui.call("/api/v1/metrics?start=1717171260&end=1717171320")[1]["metrics"]
    }
    assert counts == {"requests": 2, "temperature": 1}


def test_counter_increase_and_rate(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/metrics/requests/series?{RANGE}&step=60s&agg=increase")
    assert status == 200
    assert body == {
        "start": "2024-05-31T16:00:00Z",
        "end": "2024-05-31T16:03:00Z",
        "step_s": 60.0,
        "series": [{"labels": {}, "points": [[at(0), 9.0], [at(60), 15.0], [at(120), 6.0]]}],
    }
    status, body = ui.call(f"/api/v1/metrics/requests/series?{RANGE}&step=1m&agg=rate")
    assert status == 200 and body["step_s"] == 60.0
    assert body["series"] == [
        {"labels": {}, "points": [[at(0), pytest.approx(9 / 60)], [at(60), 0.25], [at(120), 0.1]]}
    ]


def test_counter_group_by_and_attribute_filter(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/metrics/requests/series?{RANGE}&step=60&agg=increase&group_by=route")
    assert status == 200
    assert body["series"] == [
        {"labels": {"route": "/a"}, "points": [[at(0), 8.0], [at(60), 12.0], [at(120), 6.0]]},
        {"labels": {"route": "/b"}, "points": [[at(0), 1.0], [at(60), 3.0]]},
    ]
    filters = "agg=increase&attr=route:/b&group_by=service_name&group_by=route"
    path = f"/api/v1/metrics/requests/series?{RANGE}&{filters}"
    status, body = ui.call(path)
    assert status == 200
    assert body["series"] == [
        {"labels": {"service_name": "shop", "route": "/b"}, "points": [[at(0), 1.0], [at(60), 3.0]]}
    ]


def test_gauge_series(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/metrics/temperature/series?{RANGE}&step=60s")
    assert status == 200
    assert body["step_s"] == 60.0
    assert body["series"] == [{"labels": {}, "points": [[at(0), 21.0], [at(60), 30.0]]}], "avg by default"
    status, body = ui.call(f"/api/v1/metrics/temperature/series?{RANGE}&step=3m&agg=max")
    assert (status, body["step_s"], body["series"]) == (
        200,
        180.0,
        [{"labels": {}, "points": [[at(0), 30.0]]}],
    )
    status, body = ui.call(f"/api/v1/metrics/temperature/series?{RANGE}&step=0.5m&agg=count")
    assert body["step_s"] == 30.0
    assert body["series"] == [{"labels": {}, "points": [[at(0), 2.0], [at(60), 1.0]]}]


def test_a_known_metric_without_points_in_the_range_has_no_series(ui: UiServer) -> None:
    status, body = ui.call(
        "/api/v1/metrics/requests/series?start=2024-05-31T17:00:00Z&end=2024-05-31T18:00:00Z"
    )
    assert (status, body["series"]) == (200, [])


# --- logs -------------------------------------------------------------------------------------


def test_logs_newest_first_with_every_field(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/logs?{RANGE}")
    assert status == 200
    assert body["start"] == "2024-05-31T16:00:00Z" and body["end"] == "2024-05-31T16:03:00Z"
    assert [entry["body"] for entry in body["logs"]] == ["cart is slow", "payment FAILED", "checkout started"]
    failed = body["logs"][1]
    assert isinstance(failed.pop("observed_time"), str)
    assert failed == {
        "time": at(15),
        "severity_number": 17,
        "severity_text": "",
        "body": "payment FAILED",
        "body_type": failed["body_type"],
        "event_name": "",
        "service_name": "shop",
        "trace_id": TRACE,
        "span_id": SPAN,
        "attributes": {"n": "15"},
        "resource_attributes": {"service.name": "shop"},
        "scope_name": "",
    }
    assert body["logs"][0]["trace_id"] == "" and body["logs"][0]["span_id"] == ""


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("text=failed", ["payment FAILED"]),
        ("severity_min=13", ["cart is slow", "payment FAILED"]),
        ("service=shop", ["payment FAILED", "checkout started"]),
        (f"trace_id={TRACE.upper()}", ["payment FAILED", "checkout started"]),
        (f"trace_id={TRACE}&severity_min=17&service=shop", ["payment FAILED"]),
        ("limit=1", ["cart is slow"]),
        ("text=nothing-like-this", []),
    ],
)
def test_log_filters(ui: UiServer, query: str, expected: list[str]) -> None:
    status, body = ui.call(f"/api/v1/logs?{RANGE}&{query}")
    assert status == 200, body
    assert [entry["body"] for entry in body["logs"]] == expected


def test_logs_default_to_the_last_hour(ui: UiServer) -> None:
    status, body = ui.call("/api/v1/logs")
    assert status == 200 and body["logs"] == []
    end, start = datetime.fromisoformat(body["end"]), datetime.fromisoformat(body["start"])
    assert (end - start).total_seconds() == 3600


# --- bad parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        (f"/api/v1/metrics/nope/series?{RANGE}", 404, "metric 'nope' not found"),
        (f"/api/v1/metrics/requests/series?{RANGE}&agg=median", 400, "agg is one of avg, sum"),
        (
            f"/api/v1/metrics/temperature/series?{RANGE}&agg=rate",
            400,
            "does not apply to metric 'temperature'",
        ),
        (f"/api/v1/metrics/requests/series?{RANGE}&step=fast", 400, "step: 'fast' is not a step"),
        (f"/api/v1/metrics/requests/series?{RANGE}&step=0", 400, "step: '0' is not a positive step"),
        (f"/api/v1/metrics/requests/series?{RANGE}&step={'9' * 400}", 400, "below 10^12 s"),
        (f"/api/v1/metrics/requests/series?{RANGE}&step=1e9999", 400, "is not a step"),
        (f"/api/v1/metrics/requests/series?{RANGE}&step=10us", 400, "step_s is at least 0.001"),
        (f"/api/v1/metrics/requests/series?{RANGE}&step=1ms", 400, "steps of 0.001 s; at most 11000"),
        (f"/api/v1/metrics/requests/series?{RANGE}&attr=route", 400, "attr: 'route' is not key:value"),
        (f"/api/v1/metrics/requests/series?{RANGE}&group_by=", 400, "group_by is a list of distinct"),
        ("/api/v1/metrics?start=yesterday", 400, "start: 'yesterday' is neither RFC 3339"),
        ("/api/v1/metrics?start=1717171200&end=1717171200", 400, "the time range is empty"),
        (f"/api/v1/logs?{RANGE}&trace_id=xyz", 400, "a trace id is 32 hexadecimal digits, got 'xyz'"),
        (
            f"/api/v1/logs?{RANGE}&severity_min=25",
            400,
            "severity_min: Input should be less than or equal to 24",
        ),
        (f"/api/v1/logs?{RANGE}&limit=0", 400, "limit: Input should be greater than or equal to 1"),
        (f"/api/v1/logs?{RANGE}&text=", 400, "text is a non-empty string"),
        ("/api/v1/logs?end=2024-05-31T16:00:00", 400, "end: '2024-05-31T16:00:00' has no time zone"),
    ],
)
def test_bad_parameters_answer_a_detail(ui: UiServer, path: str, status: int, message: str) -> None:
    got, body = ui.call(path)
    assert got == status, body
    assert list(body) == ["detail"] and message in body["detail"], body


def test_openapi_lists_the_routes(ui: UiServer) -> None:
    schema = ui.call("/openapi.json")[1]
    assert {"/api/v1/metrics", "/api/v1/metrics/{name}/series", "/api/v1/logs"} <= set(schema["paths"])
