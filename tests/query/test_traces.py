"""Typed trace queries over a store filled through the real collector with hand-built OTLP spans.

The data (times from T0 = 2024-05-31 16:00 UTC, durations in ms):

    trace A, T0:        frontend SERVER "GET /checkout" 100 UNSET (http.route=/checkout)
                          frontend CLIENT "call cart" 50 -> cart SERVER "GetCart" 40 OK (cart.size=3)
                          frontend CLIENT "call payment" 30 ERROR -> payment SERVER "Charge" 25 ERROR
    trace B, T0+1s:     frontend SERVER "GET /home" 20 OK
                          frontend CLIENT "call cart" 10 -> cart SERVER "GetCart" 8 UNSET
    trace C, T0+2s:     (root not received) cart SERVER "GetCart" 5 -> cart INTERNAL "db" 2 (db.system)
    trace D, T0+1h5m:   frontend SERVER "GET /checkout" 200 ERROR (http.route=/checkout)
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from harness import post_otlp, start_server, wait_for_rows
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus
from otlp_values import kv

from mallard.query import Store
from mallard.query.timerange import InvalidArgument, to_unix_nano
from mallard.query.traces import (
    Edge,
    get_trace,
    search_traces,
    service_map,
    services,
)

T0 = datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
MS = 1_000_000
TRACE_A, TRACE_B, TRACE_C, TRACE_D = "a1" * 16, "b2" * 16, "c3" * 16, "d4" * 16
ALL = {"start": T0, "end": T0 + timedelta(hours=2)}
FIRST_HOUR = {"start": T0, "end": T0 + timedelta(hours=1)}
KINDS = {"SERVER": PbSpan.SPAN_KIND_SERVER, "CLIENT": PbSpan.SPAN_KIND_CLIENT}
STATUS = {
    "UNSET": PbStatus.STATUS_CODE_UNSET,
    "OK": PbStatus.STATUS_CODE_OK,
    "ERROR": PbStatus.STATUS_CODE_ERROR,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class S:
    """One span to send: times are offsets from T0 in ms."""

    trace: str
    span: int
    parent: int | None
    service: str
    name: str
    kind: str
    start_ms: float
    duration_ms: float
    status: str = "UNSET"
    attributes: dict[str, object] = field(default_factory=dict)


SPANS = [
    S(trace=TRACE_A, span=1, parent=None, service="frontend", name="GET /checkout", kind="SERVER",
      start_ms=0, duration_ms=100, attributes={"http.route": "/checkout"}),
    S(trace=TRACE_A, span=2, parent=1, service="frontend", name="call cart", kind="CLIENT",
      start_ms=10, duration_ms=50),
    S(trace=TRACE_A, span=3, parent=2, service="cart", name="GetCart", kind="SERVER",
      start_ms=12, duration_ms=40, status="OK", attributes={"cart.size": 3}),
    S(trace=TRACE_A, span=4, parent=1, service="frontend", name="call payment", kind="CLIENT",
      start_ms=60, duration_ms=30, status="ERROR"),
    S(trace=TRACE_A, span=5, parent=4, service="payment", name="Charge", kind="SERVER",
      start_ms=62, duration_ms=25, status="ERROR"),
    S(trace=TRACE_B, span=6, parent=None, service="frontend", name="GET /home", kind="SERVER",
      start_ms=1000, duration_ms=20, status="OK"),
    S(trace=TRACE_B, span=7, parent=6, service="frontend", name="call cart", kind="CLIENT",
      start_ms=1002, duration_ms=10),
    S(trace=TRACE_B, span=8, parent=7, service="cart", name="GetCart", kind="SERVER",
      start_ms=1003, duration_ms=8),
    S(trace=TRACE_C, span=9, parent=99, service="cart", name="GetCart", kind="SERVER",
      start_ms=2000, duration_ms=5),
    S(trace=TRACE_C, span=10, parent=9, service="cart", name="db", kind="INTERNAL",
      start_ms=2001, duration_ms=2, attributes={"db.system": "postgres"}),
    S(trace=TRACE_D, span=11, parent=None, service="frontend", name="GET /checkout", kind="SERVER",
      start_ms=65 * 60_000, duration_ms=200, status="ERROR", attributes={"http.route": "/checkout"}),
]  # fmt: skip


def span_id(number: int) -> str:
    return f"{number:016x}"


def to_protobuf(span: S) -> PbSpan:
    start = to_unix_nano(T0) + int(span.start_ms * MS)
    message = PbSpan(
        trace_id=bytes.fromhex(span.trace),
        span_id=bytes.fromhex(span_id(span.span)),
        parent_span_id=bytes.fromhex(span_id(span.parent)) if span.parent else b"",
        name=span.name,
        kind=KINDS.get(span.kind, PbSpan.SPAN_KIND_INTERNAL),
        start_time_unix_nano=start,
        end_time_unix_nano=start + int(span.duration_ms * MS),
        status=PbStatus(code=STATUS[span.status], message="declined" if span.span == 5 else ""),
        attributes=[kv(key, value) for key, value in span.attributes.items()],
    )
    if span.span == 5:
        message.events.add(
            time_unix_nano=start + MS, name="exception", attributes=[kv("exception.type", "CardDeclined")]
        )
        message.links.add(
            trace_id=bytes.fromhex(TRACE_B),
            span_id=bytes.fromhex(span_id(6)),
            attributes=[kv("why", "retry")],
        )
    return message


def request() -> bytes:
    message = ExportTraceServiceRequest()
    for service in sorted({span.service for span in SPANS}):
        resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])
        scope = ScopeSpans(spans=[to_protobuf(span) for span in SPANS if span.service == service])
        message.resource_spans.append(ResourceSpans(resource=resource, scope_spans=[scope]))
    return message.SerializeToString()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One collector (as the `server` fixture starts it) fed once; the tests only read."""
    data = tmp_path_factory.mktemp("traces") / "data"
    server = start_server(data, "--flush-interval", "0.2")
    try:
        post_otlp(server, "traces", request())
        rows = wait_for_rows(data, "select span_id from spans", len(SPANS))
        assert rows.num_rows == len(SPANS)
    finally:
        server.stop()
    with Store(data) as opened:
        yield opened


def ids(summaries: list[object]) -> list[str]:
    return [summary.trace_id for summary in summaries]  # type: ignore[attr-defined]


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, as DuckDB's `quantile_cont` (type 7)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def test_quantile_reference_agrees_with_statistics() -> None:
    values = [5.0, 8.0, 40.0, 13.0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    assert quantile(values, 0.5) == pytest.approx(cuts[49])
    assert quantile(values, 0.95) == pytest.approx(cuts[94])


# get_trace


def test_get_trace_returns_every_span_in_start_order_with_links(store: Store) -> None:
    trace = get_trace(store, TRACE_A.upper())
    assert trace is not None
    assert trace.trace_id == TRACE_A
    assert [span.span_id for span in trace.spans] == [span_id(n) for n in (1, 2, 3, 4, 5)]
    assert [span.parent_span_id for span in trace.spans] == ["", *(span_id(n) for n in (1, 2, 1, 4))]
    assert trace.root.name == "GET /checkout"
    assert trace.start_time == T0
    assert trace.duration_ns == 100 * MS
    assert trace.error_count == 2
    assert trace.services == ("cart", "frontend", "payment")

    cart = trace.spans[2]
    assert (cart.service_name, cart.kind, cart.status_code) == ("cart", "SERVER", "OK")
    assert cart.attributes == {"cart.size": "3"}
    assert cart.resource_attributes == {"service.name": "cart"}
    assert cart.duration_ns == 40 * MS
    assert cart.start_time == T0 + timedelta(milliseconds=12)
    assert cart.end_time == T0 + timedelta(milliseconds=52)

    charge = trace.spans[4]
    assert (charge.status_code, charge.status_message) == ("ERROR", "declined")
    assert len(charge.events) == 1
    assert charge.events[0].name == "exception"
    assert charge.events[0].time == T0 + timedelta(milliseconds=63)
    assert charge.events[0].attributes == {"exception.type": "CardDeclined"}
    assert len(charge.links) == 1
    link = charge.links[0]
    assert (link.trace_id, link.span_id, link.attributes) == (TRACE_B, span_id(6), {"why": "retry"})


def test_get_trace_without_its_root_uses_the_earliest_span(store: Store) -> None:
    trace = get_trace(store, TRACE_C)
    assert trace is not None
    assert trace.root.span_id == span_id(9)
    assert trace.root.parent_span_id == span_id(99)


def test_get_trace_within_a_range(store: Store) -> None:
    assert get_trace(store, TRACE_D, **FIRST_HOUR) is None
    trace = get_trace(store, TRACE_D, **ALL)
    assert trace is not None
    assert len(trace.spans) == 1


def test_get_trace_of_an_unknown_id_is_none(store: Store) -> None:
    assert get_trace(store, "0123456789abcdef0123456789abcdef") is None


@pytest.mark.parametrize("bad", ["", "xyz", "a1" * 15, "a1" * 17, "g" * 32, "' or 1=1 --" + "0" * 21])
def test_get_trace_refuses_a_malformed_id(store: Store, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="32 hexadecimal"):
        get_trace(store, bad)


# search_traces


def test_search_summaries(store: Store) -> None:
    found = search_traces(store, **ALL)
    assert ids(found) == [TRACE_D, TRACE_C, TRACE_B, TRACE_A]
    a = found[3]
    assert (a.root_service, a.root_operation) == ("frontend", "GET /checkout")
    assert (a.start_time, a.start_time_unix_nano) == (T0, to_unix_nano(T0))
    assert (a.duration_ns, a.span_count, a.error_count) == (100 * MS, 5, 2)
    assert a.services == ("cart", "frontend", "payment")
    c = found[1]  # its root was not received: the earliest span stands in
    assert (c.root_service, c.root_operation, c.span_count, c.duration_ns) == ("cart", "GetCart", 2, 5 * MS)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"service": "payment"}, [TRACE_A]),
        ({"service": "cart"}, [TRACE_C, TRACE_B, TRACE_A]),
        ({"service": "nobody"}, []),
        ({"operation": "GET /checkout"}, [TRACE_D, TRACE_A]),
        ({"service": "cart", "operation": "db"}, [TRACE_C]),
        ({"service": "payment", "operation": "db"}, []),  # both on one span
        ({"min_duration_ns": 90 * MS}, [TRACE_D, TRACE_A]),
        ({"min_duration_ns": 100 * MS}, [TRACE_D, TRACE_A]),  # inclusive
        ({"max_duration_ns": 5 * MS}, [TRACE_C]),
        ({"min_duration_ns": 9 * MS, "max_duration_ns": 10 * MS}, [TRACE_B]),
        ({"status": "error"}, [TRACE_D, TRACE_A]),
        ({"status": "OK"}, [TRACE_B, TRACE_A]),
        ({"status": "unset"}, [TRACE_C, TRACE_B, TRACE_A]),
        ({"attributes": {"db.system": "postgres"}}, [TRACE_C]),
        ({"attributes": {"cart.size": "3"}}, [TRACE_A]),
        ({"attributes": {"http.route": "/checkout"}}, [TRACE_D, TRACE_A]),
        ({"attributes": {"http.route": "/checkout"}, "status": "error"}, [TRACE_D]),
        ({"attributes": {"http.route": "/checkout", "db.system": "postgres"}}, []),
        ({"attributes": {"http.route": "' or 1=1 --"}}, []),
    ],
)
def test_search_filters(store: Store, filters: dict[str, object], expected: list[str]) -> None:
    assert ids(search_traces(store, **ALL, **filters)) == expected  # type: ignore[arg-type]


def test_search_limit_keeps_the_newest(store: Store) -> None:
    assert ids(search_traces(store, **ALL, limit=2)) == [TRACE_D, TRACE_C]
    assert ids(search_traces(store, **ALL, limit=1, service="cart")) == [TRACE_C]


def test_search_time_range(store: Store) -> None:
    assert ids(search_traces(store, **FIRST_HOUR)) == [TRACE_C, TRACE_B, TRACE_A]
    later = {"start": T0 + timedelta(hours=1), "end": T0 + timedelta(hours=2)}
    assert ids(search_traces(store, **later)) == [TRACE_D]
    # the end is exclusive, the start inclusive
    assert ids(search_traces(store, start=T0 + timedelta(seconds=1), end=T0 + timedelta(seconds=2))) == [
        TRACE_B
    ]
    nothing = {"start": T0 + timedelta(hours=3), "end": T0 + timedelta(hours=4)}
    assert search_traces(store, **nothing) == []
    assert search_traces(store, start=T0 - timedelta(days=1), end=T0) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"start": T0, "end": T0}, "empty"),
        ({"start": T0 + timedelta(hours=1), "end": T0}, "empty"),
        ({"start": T0.replace(tzinfo=None), "end": T0 + timedelta(hours=1)}, "timezone"),
        ({**ALL, "status": "failed"}, "status"),
        ({**ALL, "limit": 0}, "limit"),
        ({**ALL, "limit": 10_001}, "limit"),
        ({**ALL, "min_duration_ns": -1}, "duration"),
        ({**ALL, "min_duration_ns": 10, "max_duration_ns": 5}, "above"),
    ],
)
def test_search_refuses_bad_arguments(store: Store, arguments: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        search_traces(store, **arguments)  # type: ignore[arg-type]


# services


def test_services_red(store: Store) -> None:
    stats = {stat.service_name: stat for stat in services(store, **ALL)}
    assert list(stats) == ["cart", "frontend", "payment"]
    seconds = 2 * 3600

    frontend = stats["frontend"]  # entry spans: the three roots, 100, 20 and 200 ms, one error
    assert (frontend.request_count, frontend.error_count) == (3, 1)
    assert frontend.request_rate == 3 / seconds
    assert frontend.error_rate == 1 / 3
    assert frontend.p50_ns == pytest.approx(100 * MS)
    assert frontend.p95_ns == pytest.approx(190 * MS)  # 100 + 0.9 * (200 - 100)
    assert frontend.p99_ns == pytest.approx(198 * MS)

    cart = stats["cart"]  # entry spans: three GetCart SERVER spans, 40, 8 and 5 ms; db is INTERNAL
    durations = [40.0 * MS, 8.0 * MS, 5.0 * MS]
    assert (cart.request_count, cart.error_count, cart.error_rate) == (3, 0, 0.0)
    assert cart.request_rate == 3 / seconds
    assert cart.p50_ns == pytest.approx(8 * MS)
    assert cart.p95_ns == pytest.approx(quantile(durations, 0.95))
    assert cart.p95_ns == pytest.approx(36.8 * MS)
    assert cart.p99_ns == pytest.approx(quantile(durations, 0.99))

    payment = stats["payment"]
    assert (payment.request_count, payment.error_count, payment.error_rate) == (1, 1, 1.0)
    assert payment.p50_ns == payment.p95_ns == payment.p99_ns == pytest.approx(25 * MS)


def test_services_over_a_shorter_range(store: Store) -> None:
    stats = {stat.service_name: stat for stat in services(store, **FIRST_HOUR)}
    frontend = stats["frontend"]
    assert (frontend.request_count, frontend.error_count, frontend.error_rate) == (2, 0, 0.0)
    assert frontend.request_rate == 2 / 3600
    assert frontend.p50_ns == pytest.approx(60 * MS)
    only_clients = {"start": T0 + timedelta(milliseconds=10), "end": T0 + timedelta(milliseconds=11)}
    [client_only] = services(store, **only_clients)  # a service with spans but no entry span
    assert (client_only.service_name, client_only.request_count, client_only.request_rate) == (
        "frontend",
        0,
        0,
    )
    assert (client_only.error_rate, client_only.p50_ns, client_only.p99_ns) == (0.0, None, None)


def test_services_of_an_empty_range(store: Store) -> None:
    assert services(store, start=T0 + timedelta(hours=3), end=T0 + timedelta(hours=4)) == []
    with pytest.raises(InvalidArgument):
        services(store, start=T0, end=T0)


# service_map


def test_service_map_edges(store: Store) -> None:
    assert service_map(store, **ALL) == [
        Edge(
            caller="frontend",
            callee="cart",
            call_count=2,
            error_count=0,
            p50_ns=pytest.approx(24 * MS),  # type: ignore[arg-type]
            p95_ns=pytest.approx(quantile([40.0 * MS, 8.0 * MS], 0.95)),  # type: ignore[arg-type]
        ),
        Edge(
            caller="frontend",
            callee="payment",
            call_count=1,
            error_count=1,
            p50_ns=pytest.approx(25 * MS),  # type: ignore[arg-type]
            p95_ns=pytest.approx(25 * MS),  # type: ignore[arg-type]
        ),
    ]


def test_service_map_of_a_range(store: Store) -> None:
    only_b = {"start": T0 + timedelta(seconds=1), "end": T0 + timedelta(seconds=2)}
    [edge] = service_map(store, **only_b)
    assert (edge.caller, edge.callee, edge.call_count, edge.error_count) == ("frontend", "cart", 1, 0)
    assert edge.p50_ns == edge.p95_ns == 8 * MS
    assert service_map(store, start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=2)) == []
    with pytest.raises(InvalidArgument):
        service_map(store, start=T0 + timedelta(hours=1), end=T0)


def test_an_empty_store_answers_empty(tmp_path: Path) -> None:
    with Store(tmp_path / "nothing") as empty:
        assert get_trace(empty, TRACE_A) is None
        assert search_traces(empty, **ALL) == []
        assert services(empty, **ALL) == []
        assert service_map(empty, **ALL) == []
