"""The HTTP API (`mallard ui`) over a store filled through the real collector with hand-built spans.

The data (T0 = 2024-05-31 16:00 UTC = unix 1717171200, durations in ms):

    trace A, T0:      frontend SERVER "GET /checkout" 100 UNSET (http.route=/checkout)
                        frontend CLIENT "call cart" 50 -> cart SERVER "GetCart" 40 OK (cart.size=3)
    trace B, T0+1s:   frontend SERVER "GET /home" 20 ERROR "boom"
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from harness import ApiClient, UiServer, post_otlp, start_server, start_ui, wait_for_rows
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from otlp_values import kv

from mallard.query.timerange import to_unix_nano

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
T0_NS = to_unix_nano(T0)
MS = 1_000_000
TRACE_A, TRACE_B = "a1" * 16, "b2" * 16
SERVER = Span.SPAN_KIND_SERVER
RANGE = "start=2024-05-31T16:00:00Z&end=2024-05-31T17:00:00Z"


# --- the store --------------------------------------------------------------------------------


def span(trace: str, number: int, parent: int | None, name: str, kind: int, start_ms: int,
         duration_ms: int, status: int = Status.STATUS_CODE_UNSET, message: str = "",
         **attributes: object) -> Span:  # fmt: skip
    start = T0_NS + start_ms * MS
    return Span(
        trace_id=bytes.fromhex(trace),
        span_id=number.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        kind=kind,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration_ms * MS,
        status=Status(code=status, message=message),
        attributes=[kv(key.replace("_", "."), value) for key, value in attributes.items()],
    )


def export_request() -> bytes:
    frontend = [
        span(TRACE_A, 1, None, "GET /checkout", Span.SPAN_KIND_SERVER, 0, 100, http_route="/checkout"),
        span(TRACE_A, 2, 1, "call cart", Span.SPAN_KIND_CLIENT, 10, 50),
        span(
            TRACE_B, 4, None, "GET /home", Span.SPAN_KIND_SERVER, 1000, 20, Status.STATUS_CODE_ERROR, "boom"
        ),
    ]
    cart = [span(TRACE_A, 3, 2, "GetCart", Span.SPAN_KIND_SERVER, 12, 40, Status.STATUS_CODE_OK, cart_size=3)]
    message = ExportTraceServiceRequest()
    for service, spans in (("frontend", frontend), ("cart", cart)):
        resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
        message.resource_spans.append(ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)]))
    return message.SerializeToString()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store filled once through a real collector (as the `server` fixture starts it)."""
    root = tmp_path_factory.mktemp("api") / "data"
    collector = start_server(root, "--flush-interval", "0.2")
    try:
        post_otlp(collector, "traces", export_request())
        assert wait_for_rows(root, "select span_id from spans", 4).num_rows == 4
    finally:
        assert collector.stop() == 0
    return root


# --- `mallard ui` as a child process ----------------------------------------------------------


@pytest.fixture(scope="module")
def ui(data: Path) -> Iterator[UiServer]:
    running = start_ui(data)
    yield running
    assert running.stop() == 0, "".join(running.output)


# --- traces -----------------------------------------------------------------------------------


def test_get_trace_answers_every_span(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/traces/{TRACE_A.upper()}")
    assert status == 200
    spans = body.pop("spans")
    assert body == {
        "trace_id": TRACE_A,
        "root_span_id": "0000000000000001",
        "root_service": "frontend",
        "root_operation": "GET /checkout",
        "start_time": "2024-05-31T16:00:00Z",
        "duration_ns": 100 * MS,
        "span_count": 3,
        "error_count": 0,
        "services": ["cart", "frontend"],
    }
    assert [s["span_id"] for s in spans] == ["0000000000000001", "0000000000000002", "0000000000000003"]
    assert spans[2] == {
        "trace_id": TRACE_A,
        "span_id": "0000000000000003",
        "parent_span_id": "0000000000000002",
        "name": "GetCart",
        "kind": "SERVER",
        "service_name": "cart",
        "start_time": "2024-05-31T16:00:00.012000Z",
        "end_time": "2024-05-31T16:00:00.052000Z",
        "start_time_unix_nano": T0_NS + 12 * MS,
        "end_time_unix_nano": T0_NS + 52 * MS,
        "duration_ns": 40 * MS,
        "status_code": "OK",
        "status_message": "",
        "attributes": {"cart.size": "3"},
        "resource_attributes": {"service.name": "cart"},
        "scope_name": "",
        "events": [],
        "links": [],
    }
    assert spans[0]["parent_span_id"] == "" and spans[0]["attributes"] == {"http.route": "/checkout"}


def test_get_trace_within_a_range(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/traces/{TRACE_B}?start=1717171200&end=1717171201.5")
    assert status == 200
    assert [(s["name"], s["status_code"], s["status_message"]) for s in body["spans"]] == [
        ("GET /home", "ERROR", "boom")
    ]
    assert ui.call(f"/api/v1/traces/{TRACE_B}?start=1717171200&end=1717171201")[0] == 404


SUMMARY_A = {
    "trace_id": TRACE_A,
    "root_service": "frontend",
    "root_operation": "GET /checkout",
    "start_time": "2024-05-31T16:00:00Z",
    "start_time_unix_nano": T0_NS,
    "duration_ns": 100 * MS,
    "span_count": 3,
    "error_count": 0,
    "services": ["cart", "frontend"],
}
SUMMARY_B = {
    "trace_id": TRACE_B,
    "root_service": "frontend",
    "root_operation": "GET /home",
    "start_time": "2024-05-31T16:00:01Z",
    "start_time_unix_nano": T0_NS + 1000 * MS,
    "duration_ns": 20 * MS,
    "span_count": 1,
    "error_count": 1,
    "services": ["frontend"],
}


def test_search_answers_summaries_newest_first(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/traces?{RANGE}")
    assert status == 200
    assert body == {
        "start": "2024-05-31T16:00:00Z",
        "end": "2024-05-31T17:00:00Z",
        "traces": [SUMMARY_B, SUMMARY_A],
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("service=cart", [TRACE_A]),
        ("operation=GET%20/home", [TRACE_B]),
        ("min_duration=30ms", [TRACE_A]),
        ("min_duration=0.045s", [TRACE_A]),
        ("min_duration=101ms", []),
        ("max_duration=20000000", [TRACE_B]),
        ("min_duration=40ms&max_duration=40ms", [TRACE_A]),
        ("status=error", [TRACE_B]),
        ("status=OK", [TRACE_A]),
        ("attr=cart.size:3", [TRACE_A]),
        ("attr=http.route:/checkout&attr=cart.size:3", []),  # one span must match every filter
        ("attr=http.route:/checkout&service=frontend", [TRACE_A]),
        ("limit=1", [TRACE_B]),
    ],
)
def test_search_filters(ui: UiServer, query: str, expected: list[str]) -> None:
    status, body = ui.call(f"/api/v1/traces?{RANGE}&{query}")
    assert status == 200, body
    assert [summary["trace_id"] for summary in body["traces"]] == expected


def test_search_defaults_to_the_last_hour(ui: UiServer) -> None:
    before = datetime.now(UTC)
    status, body = ui.call("/api/v1/traces")
    assert status == 200 and body["traces"] == []
    end = datetime.fromisoformat(body["end"])
    assert before <= end <= datetime.now(UTC)
    assert (end - datetime.fromisoformat(body["start"])).total_seconds() == 3600


# --- services and the service map -------------------------------------------------------------


def test_services_answer_red_figures(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/services?{RANGE}")
    assert status == 200
    assert body["start"] == "2024-05-31T16:00:00Z" and body["end"] == "2024-05-31T17:00:00Z"
    cart, frontend = body["services"]
    assert cart == {
        "service_name": "cart",
        "request_count": 1,
        "request_rate": pytest.approx(1 / 3600),
        "error_count": 0,
        "error_rate": 0.0,
        "p50_ns": 40 * MS,
        "p95_ns": 40 * MS,
        "p99_ns": 40 * MS,
    }
    # entry spans of frontend: GET /checkout (100 ms) and GET /home (20 ms, ERROR); not the CLIENT span
    assert frontend == {
        "service_name": "frontend",
        "request_count": 2,
        "request_rate": pytest.approx(2 / 3600),
        "error_count": 1,
        "error_rate": 0.5,
        "p50_ns": pytest.approx(60 * MS),
        "p95_ns": pytest.approx(96 * MS),
        "p99_ns": pytest.approx(99.2 * MS),
    }


def test_service_map_answers_edges(ui: UiServer) -> None:
    status, body = ui.call(f"/api/v1/service-map?{RANGE}")
    assert status == 200
    assert body == {
        "start": "2024-05-31T16:00:00Z",
        "end": "2024-05-31T17:00:00Z",
        "edges": [
            {
                "caller": "frontend",
                "callee": "cart",
                "call_count": 1,
                "error_count": 0,
                "p50_ns": 40 * MS,
                "p95_ns": 40 * MS,
            }
        ],
    }
    assert (
        ui.call("/api/v1/service-map?start=2024-05-31T17:00:00%2B01:00&end=1717171200.001")[1]["edges"] == []
    ), "16:00:00 to 16:00:00.001 holds no child span"


# --- bad parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/v1/traces/xyz", 400, "a trace id is 32 hexadecimal digits, got 'xyz'"),
        (f"/api/v1/traces/{'e5' * 16}", 404, f"trace {'e5' * 16} not found"),
        (f"/api/v1/traces/{TRACE_A}?start=1717171200", 400, "give both start and end, or neither"),
        (
            "/api/v1/traces?start=2024-05-31T17:00:00Z&end=2024-05-31T16:00:00Z",
            400,
            "the time range is empty",
        ),
        ("/api/v1/services?start=1717171200&end=1717171200", 400, "the time range is empty"),
        ("/api/v1/traces?start=yesterday", 400, "start: 'yesterday' is neither RFC 3339"),
        ("/api/v1/service-map?end=2024-05-31T16:00:00", 400, "end: '2024-05-31T16:00:00' has no time zone"),
        (f"/api/v1/traces?{RANGE}&min_duration=fast", 400, "min_duration: 'fast' is not a duration"),
        (f"/api/v1/traces?{RANGE}&max_duration=1.5", 400, "max_duration: '1.5' is not a whole number"),
        (f"/api/v1/traces?{RANGE}&min_duration=2s&max_duration=1s", 400, "is above max_duration_ns"),
        (f"/api/v1/traces?{RANGE}&status=broken", 400, "status is one of ok, error, unset"),
        (f"/api/v1/traces?{RANGE}&attr=cart.size", 400, "attr: 'cart.size' is not key:value"),
        (f"/api/v1/traces?{RANGE}&limit=0", 400, "limit: Input should be greater than or equal to 1"),
        (f"/api/v1/traces?{RANGE}&limit=many", 400, "limit: Input should be a valid integer"),
    ],
)
def test_bad_parameters_answer_a_detail(ui: UiServer, path: str, status: int, message: str) -> None:
    got, body = ui.call(path)
    assert got == status
    assert list(body) == ["detail"] and message in body["detail"], body


# --- SQL --------------------------------------------------------------------------------------


def test_sql_answers_columns_and_rows(ui: UiServer) -> None:
    query = "select span_id, name, duration // 1000000 as ms from spans order by span_id"
    status, body = ui.call("/api/v1/sql", body={"sql": query})
    assert status == 200
    assert body == {
        "columns": ["span_id", "name", "ms"],
        "rows": [
            ["0000000000000001", "GET /checkout", 100],
            ["0000000000000002", "call cart", 50],
            ["0000000000000003", "GetCart", 40],
            ["0000000000000004", "GET /home", 20],
        ],
        "truncated": False,
    }
    status, body = ui.call("/api/v1/sql", body={"sql": query, "limit": 2})
    assert (status, len(body["rows"]), body["truncated"]) == (200, 2, True)


@pytest.mark.parametrize(
    ("sql", "status", "message"),
    [
        ("COPY (select 1) TO '/tmp/mallard-api-test.csv'", 403, "only SELECT"),
        ("select * from read_csv('/etc/passwd')", 403, "cannot reach outside the store"),
        ("select 1; select 2", 403, "exactly one statement"),
        ("ATTACH ':memory:' AS other", 403, "only SELECT"),
        ("SET enable_external_access = true", 403, "only SELECT"),
        ("selec 1", 400, "syntax error"),
        ("select nope from spans", 400, "nope"),
    ],
)
def test_sql_refusals_and_errors_keep_the_server_serving(
    ui: UiServer, sql: str, status: int, message: str
) -> None:
    got, body = ui.call("/api/v1/sql", body={"sql": sql})
    assert got == status
    assert message in body["detail"], body
    assert ui.call("/api/v1/sql", body={"sql": "select count(*) as n from spans"})[1]["rows"] == [[4]]
    assert not Path("/tmp/mallard-api-test.csv").exists()


def test_sql_body_must_be_an_object_with_sql(ui: UiServer) -> None:
    status, body = ui.call("/api/v1/sql", body={"query": "select 1"})
    assert status == 400 and body["detail"].startswith("sql: Field required")
    assert ui.call("/api/v1/sql", body={"sql": "select 1", "limit": -1})[0] == 400


# --- docs, health, auth, shutdown -------------------------------------------------------------


def test_docs_and_openapi(ui: UiServer) -> None:
    status, page = ui.call("/docs")
    assert status == 200 and "swagger-ui" in page
    status, schema = ui.call("/openapi.json")
    assert status == 200
    assert {
        "/api/v1/traces/{trace_id}",
        "/api/v1/traces",
        "/api/v1/services",
        "/api/v1/service-map",
        "/api/v1/sql",
        "/healthz",
    } <= set(schema["paths"])
    assert ui.call("/healthz") == (200, {"status": "ok"})


def test_bearer_token_guards_every_api_route(data: Path) -> None:
    guarded = start_ui(data, "--auth-token", "s3cret", token="s3cret")
    try:
        for path in ("/api/v1/services", f"/api/v1/traces/{TRACE_A}", "/api/v1/nowhere"):
            status, body = guarded.call(path, auth=False)
            assert (status, body) == (401, {"detail": "missing or wrong bearer token"})
            assert guarded.call(path, token="wrong")[0] == 401
        assert guarded.call(f"/api/v1/traces/{TRACE_A}")[0] == 200
        assert guarded.call(f"/api/v1/services?{RANGE}")[1]["services"][0]["service_name"] == "cart"
        assert guarded.call("/api/v1/sql", body={"sql": "select 1 as one"})[1]["rows"] == [[1]]
        assert guarded.call("/healthz", auth=False) == (200, {"status": "ok"})
        assert guarded.call("/docs", auth=False)[0] == 200
        assert "HTTPBearer" in guarded.call("/openapi.json", auth=False)[1]["components"]["securitySchemes"]
    finally:
        assert guarded.stop() == 0


def test_ui_on_a_missing_store_serves_empty_answers(tmp_path: Path) -> None:
    empty = start_ui(tmp_path / "nothing-here")
    try:
        assert empty.call(f"/api/v1/services?{RANGE}")[1]["services"] == []
        assert empty.call(f"/api/v1/traces/{TRACE_A}")[0] == 404
        assert empty.call("/api/v1/sql", body={"sql": "select count(*) from spans"})[1]["rows"] == [[0]]
    finally:
        assert empty.stop() == 0


def test_sql_over_its_time_limit_answers_400(data: Path) -> None:
    """`create_api` in this process (the CLI has no limit flags), served by uvicorn on a free port."""
    import socket

    import uvicorn

    from mallard.query.api import create_api
    from mallard.query.sandbox import SqlLimits

    app = create_api(data, sql_limits=SqlLimits(timeout_s=0.2))
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        local = ApiClient(sock.getsockname()[1])
        slow = "select sum(a.range * b.range) from range(1000000) a, range(1000000) b"
        status, body = local.call("/api/v1/sql", body={"sql": slow})
        assert status == 400 and "time limit of 0.2 s" in body["detail"], body
        assert local.call("/api/v1/sql", body={"sql": "select 2 as two"})[1]["rows"] == [[2]]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
