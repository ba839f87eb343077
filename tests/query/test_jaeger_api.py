"""The Jaeger query API (`/api/services`, `/api/traces`, ...) as Grafana's Jaeger data source reads it.

A real `mallard ui` over a store filled through the real collector (T0 = 2024-05-31 16:00 UTC):

    trace A, T0:    frontend SERVER "GET /checkout" 100 ms UNSET, attributes of every type, one event
                      frontend CLIENT "call cart" 50 ms -> cart SERVER "GetCart" 40 ms OK
    trace B, T0+1s: frontend SERVER "GET /home" 20 ms ERROR "boom"
"""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from harness import ApiClient, post_otlp, start_server, start_ui, wait_for_rows
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from otlp_values import kv

from mallard.query.timerange import to_unix_nano

T0_US = to_unix_nano(datetime(2024, 5, 31, 16, 0, tzinfo=UTC)) // 1000
MS = 1000  # in microseconds
TRACE_A, TRACE_B = "a1" * 16, "b2" * 16
RANGE = f"start={T0_US}&end={T0_US + 3_600_000_000}"


def span(trace: str, number: int, parent: int | None, name: str, kind: int, start_ms: int,
         duration_ms: int, status: int = Status.STATUS_CODE_UNSET, message: str = "",
         **attributes: object) -> Span:  # fmt: skip
    start = (T0_US + start_ms * MS) * 1000
    return Span(
        trace_id=bytes.fromhex(trace),
        span_id=number.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration_ms * MS * 1000,
        status=Status(code=status, message=message),
        attributes=[kv(key, value) for key, value in attributes.items()],
    )


def export_request() -> bytes:
    typed: dict[str, object] = {"http.route": "/checkout", "http.status_code": 200}
    typed.update(retry=True, ratio=0.5, blob=b"\x01\x02")
    checkout = span(TRACE_A, 1, None, "GET /checkout", Span.SPAN_KIND_SERVER, 0, 100, **typed)
    checkout.events.append(
        Span.Event(time_unix_nano=(T0_US + 5 * MS) * 1000, name="cache miss", attributes=[kv("attempt", 2)])
    )
    frontend = [
        checkout,
        span(TRACE_A, 2, 1, "call cart", Span.SPAN_KIND_CLIENT, 10, 50),
        span(
            TRACE_B, 4, None, "GET /home", Span.SPAN_KIND_SERVER, 1000, 20, Status.STATUS_CODE_ERROR, "boom"
        ),
    ]
    cart = [span(TRACE_A, 3, 2, "GetCart", Span.SPAN_KIND_SERVER, 12, 40, Status.STATUS_CODE_OK)]
    message = ExportTraceServiceRequest()
    for service, spans in (("frontend", frontend), ("cart", cart)):
        resource = Resource(
            attributes=[
                KeyValue(key="service.name", value=AnyValue(string_value=service)),
                kv("host.cpus", 4),
            ]
        )
        message.resource_spans.append(ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)]))
    return message.SerializeToString()


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`mallard ui` on a free port over a store filled once through a real collector."""
    root = tmp_path_factory.mktemp("jaeger") / "data"
    collector = start_server(root, "--flush-interval", "0.2")
    try:
        post_otlp(collector, "traces", export_request())
        assert wait_for_rows(root, "select span_id from spans", 4).num_rows == 4
    finally:
        assert collector.stop() == 0
    ui = start_ui(root)
    yield ui.port
    assert ui.stop() == 0, "".join(ui.output)


def get(port: int, path: str) -> tuple[int, Any]:
    return ApiClient(port).call(path)


# --- the shapes Grafana parses (public/app/plugins/datasource/jaeger/types.ts) ----------------


def check_envelope(body: Any) -> list[Any]:
    assert set(body) == {"data", "total", "limit", "offset", "errors"}
    assert body["errors"] is None and body["total"] == len(body["data"])
    assert isinstance(body["data"], list)
    return body["data"]


def check_tag(tag: Any) -> None:
    assert set(tag) == {"key", "type", "value"} and isinstance(tag["key"], str)
    expected = {"string": str, "bool": bool, "int64": int, "float64": float, "binary": str}[tag["type"]]
    assert type(tag["value"]) is expected, tag


def check_trace(trace: Any) -> None:
    assert set(trace) == {"traceID", "spans", "processes", "warnings"}
    assert re.fullmatch("[0-9a-f]{32}", trace["traceID"]) and trace["warnings"] is None
    for process in trace["processes"].values():
        assert set(process) == {"serviceName", "tags"} and isinstance(process["serviceName"], str)
        for tag in process["tags"]:
            check_tag(tag)
    for s in trace["spans"]:
        assert set(s) == {"traceID", "spanID", "operationName", "references", "startTime", "duration",
                          "tags", "logs", "processID", "warnings", "flags"}  # fmt: skip
        assert s["traceID"] == trace["traceID"] and re.fullmatch("[0-9a-f]{16}", s["spanID"])
        assert isinstance(s["operationName"], str) and s["processID"] in trace["processes"]
        assert all(type(s[key]) is int for key in ("startTime", "duration", "flags"))
        for ref in s["references"]:
            assert set(ref) == {"refType", "traceID", "spanID"}
            assert ref["refType"] in ("CHILD_OF", "FOLLOWS_FROM")
        for tag in s["tags"]:
            check_tag(tag)
        for log in s["logs"]:
            assert set(log) == {"timestamp", "fields"} and type(log["timestamp"]) is int
            for field in log["fields"]:
                check_tag(field)


# --- services and operations ------------------------------------------------------------------


def test_services(port: int) -> None:
    status, body = get(port, "/api/services")
    assert status == 200 and check_envelope(body) == ["cart", "frontend"]


def test_operations(port: int) -> None:
    status, body = get(port, "/api/services/frontend/operations")
    assert status == 200 and check_envelope(body) == ["GET /checkout", "GET /home", "call cart"]
    assert check_envelope(get(port, "/api/services/nobody/operations")[1]) == []
    status, body = get(port, "/api/operations?service=frontend")
    assert status == 200 and check_envelope(body) == [
        {"name": "GET /checkout", "spanKind": "server"},
        {"name": "GET /home", "spanKind": "server"},
        {"name": "call cart", "spanKind": "client"},
    ]
    narrowed = check_envelope(get(port, "/api/operations?service=frontend&spanKind=client")[1])
    assert narrowed == [{"name": "call cart", "spanKind": "client"}]


# --- one trace --------------------------------------------------------------------------------


def test_trace_by_id(port: int) -> None:
    status, body = get(port, f"/api/traces/{TRACE_A.upper()}")
    assert status == 200
    (trace,) = check_envelope(body)
    check_trace(trace)
    assert trace["processes"] == {
        "p1": {"serviceName": "frontend", "tags": [{"key": "host.cpus", "type": "int64", "value": 4}]},
        "p2": {"serviceName": "cart", "tags": [{"key": "host.cpus", "type": "int64", "value": 4}]},
    }
    checkout, call, get_cart = trace["spans"]
    assert checkout == {
        "traceID": TRACE_A,
        "spanID": "0000000000000001",
        "operationName": "GET /checkout",
        "references": [],
        "startTime": T0_US,
        "duration": 100 * MS,
        "tags": [
            {"key": "http.route", "type": "string", "value": "/checkout"},
            {"key": "http.status_code", "type": "int64", "value": 200},
            {"key": "retry", "type": "bool", "value": True},
            {"key": "ratio", "type": "float64", "value": 0.5},
            {"key": "blob", "type": "binary", "value": "AQI="},
            {"key": "span.kind", "type": "string", "value": "server"},
        ],
        "logs": [
            {
                "timestamp": T0_US + 5 * MS,
                "fields": [
                    {"key": "event", "type": "string", "value": "cache miss"},
                    {"key": "attempt", "type": "int64", "value": 2},
                ],
            }
        ],
        "processID": "p1",
        "warnings": None,
        "flags": 0,
    }
    assert (call["references"], call["tags"], call["processID"]) == (
        [{"refType": "CHILD_OF", "traceID": TRACE_A, "spanID": "0000000000000001"}],
        [{"key": "span.kind", "type": "string", "value": "client"}],
        "p1",
    )
    assert (get_cart["startTime"], get_cart["duration"], get_cart["processID"]) == (
        T0_US + 12 * MS,
        40 * MS,
        "p2",
    )
    assert get_cart["tags"] == [
        {"key": "span.kind", "type": "string", "value": "server"},
        {"key": "otel.status_code", "type": "string", "value": "OK"},
    ]


def test_error_status_becomes_error_tags(port: int) -> None:
    (trace,) = check_envelope(get(port, f"/api/traces/{TRACE_B}")[1])
    assert trace["spans"][0]["tags"] == [
        {"key": "span.kind", "type": "string", "value": "server"},
        {"key": "otel.status_code", "type": "string", "value": "ERROR"},
        {"key": "error", "type": "bool", "value": True},
        {"key": "otel.status_description", "type": "string", "value": "boom"},
    ]


@pytest.mark.parametrize(
    ("trace_id", "status", "message"),
    [("e5" * 16, 404, "trace not found"), ("xyz", 400, "a trace id is 1 to 32 hexadecimal digits")],
)
def test_trace_errors(port: int, trace_id: str, status: int, message: str) -> None:
    got, body = get(port, f"/api/traces/{trace_id}")
    assert got == status and body["data"] is None
    assert len(body["errors"]) == 1 and body["errors"][0]["code"] == status
    assert message in body["errors"][0]["msg"]


# --- search -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [TRACE_B, TRACE_A]),
        ("service=cart", [TRACE_A]),
        ("service=frontend&operation=GET%20/home", [TRACE_B]),
        ("minDuration=30ms", [TRACE_A]),
        ("minDuration=0.045s&maxDuration=1m", [TRACE_A]),
        ("maxDuration=20ms", [TRACE_B]),
        ("tags=" + urllib.parse.quote('{"error":"true"}'), [TRACE_B]),
        ("tags=" + urllib.parse.quote('{"http.status_code":200}'), [TRACE_A]),
        ("tags=" + urllib.parse.quote('{"http.route":"/checkout","retry":true}'), [TRACE_A]),
        ("tag=http.route:/nowhere", []),
        ("limit=1", [TRACE_B]),
    ],
)
def test_search(port: int, query: str, expected: list[str]) -> None:
    status, body = get(port, f"/api/traces?{RANGE}&{query}")
    assert status == 200, body
    traces = check_envelope(body)
    for trace in traces:
        check_trace(trace)
    assert [trace["traceID"] for trace in traces] == expected
    if expected == [TRACE_A]:
        assert len(traces[0]["spans"]) == 3, "a found trace carries all its spans"


def test_search_with_lookback_ends_now(port: int) -> None:
    assert check_envelope(get(port, "/api/traces?service=frontend&lookback=1h")[1]) == []
    end = T0_US + 2_000_000
    found = check_envelope(get(port, f"/api/traces?end={end}&lookback=3s")[1])
    assert [trace["traceID"] for trace in found] == [TRACE_B, TRACE_A]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("minDuration=fast", "minDuration: 'fast' is not a duration"),
        ("tags=nope", "tags: 'nope' is not a JSON object"),
        ("tag=nocolon", "tag: 'nocolon' is not key:value"),
        ("limit=-1", "limit: -1 is negative"),
        (f"start={T0_US}&end={T0_US}", "the time range is empty"),
    ],
)
def test_search_errors(port: int, query: str, message: str) -> None:
    sep = "&" if "start=" in query else f"&{RANGE}&"
    status, body = get(port, f"/api/traces?service=frontend{sep}{query}")
    assert status == 400 and body["data"] is None
    assert body["errors"][0]["code"] == 400 and message in body["errors"][0]["msg"], body
