"""The real OpenTelemetry Python SDK exporters (gRPC and HTTP/protobuf) into `mallard serve`, read back
with `mallard sql --format json`: what comes out is exactly what was sent, field by field."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from grpc import Compression as GrpcCompression
from harness import MallardServer, run_cli, start_server, wait_for_rows
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

ATTRIBUTES: dict[str, Any] = {
    "str": "héllo",
    "bool": True,
    "int": 2**62 + 1,
    "negative": -7,
    "double": 2.5,
    "str_list": ["a", "b"],
    "int_list": [1, 2, 3],
    "double_list": [0.5, 1.5],
    "bool_list": [True, False],
    "http.route": "/users/{id}",
    "http.response.status_code": 404,
}
EXPECTED_TEXT = {
    "str": ("héllo", None),
    "bool": ("true", "bool"),
    "int": (str(2**62 + 1), "int"),
    "negative": ("-7", "int"),
    "double": ("2.5", "double"),
    "str_list": ('["a","b"]', "array"),
    "int_list": ("[1,2,3]", "array"),
    "double_list": ("[0.5,1.5]", "array"),
    "bool_list": ("[true,false]", "array"),
    "http.route": ("/users/{id}", None),
    "http.response.status_code": ("404", "int"),
}


def sql_json(server: MallardServer, sql: str) -> list[dict[str, Any]]:
    done = run_cli(["sql", "--data", str(server.data), "--format", "json", sql])
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


@pytest.fixture(scope="module")
def mallard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MallardServer]:
    running = start_server(tmp_path_factory.mktemp("e2e") / "data", "--flush-interval", "0.2")
    yield running
    running.stop()


def _providers(server: MallardServer) -> tuple[TracerProvider, TracerProvider, InMemorySpanExporter]:
    sent = InMemorySpanExporter()
    frontend = TracerProvider(
        resource=Resource.create({"service.name": "frontend", "deployment.env": "test"})
    )
    frontend.add_span_processor(
        SimpleSpanProcessor(GrpcSpanExporter(endpoint=server.grpc_endpoint, insecure=True))
    )
    frontend.add_span_processor(SimpleSpanProcessor(sent))
    backend = TracerProvider(resource=Resource.create({"service.name": "backend"}))
    backend.add_span_processor(
        SimpleSpanProcessor(HttpSpanExporter(endpoint=f"{server.http_endpoint}/v1/traces"))
    )
    backend.add_span_processor(SimpleSpanProcessor(sent))
    return frontend, backend, sent


def _as_map(pairs: Any) -> dict[str, Any]:
    return dict(pairs) if isinstance(pairs, dict) else {k: v for k, v in pairs}


def test_traces_across_two_services_round_trip(mallard: MallardServer) -> None:
    frontend, backend, sent = _providers(mallard)
    front_tracer = frontend.get_tracer(
        "shop.frontend", "1.2.3", attributes={"shop.tier": "web", "shop.shards": 3}
    )
    back_tracer = backend.get_tracer("shop.backend")
    with front_tracer.start_as_current_span(
        "GET /checkout", kind=SpanKind.SERVER, attributes=ATTRIBUTES
    ) as root:
        root.add_event("cart.loaded", {"items": 3, "note": "ünïcode ✓"})
        with front_tracer.start_as_current_span("call backend", kind=SpanKind.CLIENT) as client:
            linked = root.get_span_context()
            with back_tracer.start_as_current_span(
                "charge card",
                kind=SpanKind.SERVER,
                links=[Link(linked, {"link.reason": "retry-of"})],
            ) as charge:
                charge.set_status(Status(StatusCode.ERROR, "card declined"))
                charge.add_event("exception", {"exception.type": "CardError"})
            client.set_attribute("peer.service", "backend")
    frontend.shutdown()
    backend.shutdown()
    spans: list[ReadableSpan] = list(sent.get_finished_spans())
    assert len(spans) == 3
    trace_id = format(spans[0].context.trace_id, "032x")
    rows = {
        row["span_id"]: row
        for row in wait_for_rows(
            mallard.data, f"select span_id from spans where trace_id = '{trace_id}'", 3
        ).to_pylist()
    }
    assert len(rows) == 3
    stored = {
        row["span_id"]: row for row in sql_json(mallard, f"select * from spans where trace_id = '{trace_id}'")
    }
    for span in spans:
        row = stored[format(span.context.span_id, "016x")]
        assert row["trace_id"] == trace_id
        assert row["name"] == span.name
        assert row["kind"] == span.kind.name
        parent = format(span.parent.span_id, "016x") if span.parent else ""
        assert row["parent_span_id"] == parent
        assert row["start_time_unix_nano"] == span.start_time
        assert row["end_time_unix_nano"] == span.end_time
        assert row["duration"] == span.end_time - span.start_time  # type: ignore[operator]
        assert row["service_name"] == span.resource.attributes["service.name"]
        assert row["scope_name"] == span.instrumentation_scope.name  # type: ignore[union-attr]
        assert (
            row["status_code"]
            == {"UNSET": "UNSET", "OK": "OK", "ERROR": "ERROR"}[span.status.status_code.name]
        )
        assert row["status_message"] == (span.status.description or "")
        assert len(row["events"]) == len(span.events)
        for stored_event, event in zip(row["events"], span.events, strict=True):
            assert stored_event["name"] == event.name
            assert stored_event["time_unix_nano"] == event.timestamp
            assert set(_as_map(stored_event["attributes"])) == set(event.attributes or {})
        assert len(row["links"]) == len(span.links)
    root_row = stored[format(spans[-1].context.span_id, "016x")] if spans[-1].parent is None else None
    root_row = next(r for r in stored.values() if r["parent_span_id"] == "")
    attrs, types = _as_map(root_row["attributes"]), _as_map(root_row["attribute_types"])
    for key, (text, type_name) in EXPECTED_TEXT.items():
        assert attrs[key] == text, key
        assert types.get(key) == type_name, key
    assert root_row["http_route"] == "/users/{id}"
    assert root_row["http_status_code"] == 404
    assert _as_map(root_row["resource_attributes"])["deployment.env"] == "test"
    assert root_row["scope_version"] == "1.2.3"
    assert _as_map(root_row["scope_attributes"]) == {"shop.tier": "web", "shop.shards": "3"}
    assert _as_map(root_row["scope_attribute_types"]) == {"shop.shards": "int"}
    assert _as_map(root_row["events"][0]["attributes"]) == {"items": "3", "note": "ünïcode ✓"}
    charge = next(r for r in stored.values() if r["name"] == "charge card")
    assert charge["service_name"] == "backend"
    assert _as_map(charge["scope_attributes"]) == {}  # its tracer has none
    assert charge["status_code"] == "ERROR" and charge["status_message"] == "card declined"
    assert charge["links"][0]["trace_id"] == trace_id
    assert charge["links"][0]["span_id"] == root_row["span_id"]
    assert _as_map(charge["links"][0]["attributes"]) == {"link.reason": "retry-of"}
    client = next(r for r in stored.values() if r["name"] == "call backend")
    assert charge["parent_span_id"] == client["span_id"]
    assert client["service_name"] == "frontend" and client["kind"] == "CLIENT"
    # every attribute is reachable from SQL by key, with its type recoverable
    by_key = sql_json(
        mallard,
        "select attributes['int'] as v, coalesce(attribute_types['int'], 'string') as t, "
        f"attributes['int']::HUGEINT as n from spans where span_id = '{root_row['span_id']}'",
    )
    assert by_key == [{"v": str(2**62 + 1), "t": "int", "n": 2**62 + 1}]


def _meter_provider(exporter: Any, temporality: AggregationTemporality) -> MeterProvider:
    preferred = {
        kind: temporality
        for kind in (
            Counter,
            UpDownCounter,
            Histogram,
            ObservableCounter,
            ObservableUpDownCounter,
            ObservableGauge,
        )
    }
    exporter._preferred_temporality = preferred  # both exporters read this dict
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": f"trainer-{temporality.name.lower()}"}),
        views=[
            View(
                instrument_name="latency.exp", aggregation=ExponentialBucketHistogramAggregation(max_size=20)
            )
        ],
    )


@pytest.mark.parametrize(
    ("transport", "temporality"),
    [("grpc", AggregationTemporality.CUMULATIVE), ("http", AggregationTemporality.DELTA)],
)
def test_metrics_every_instrument_round_trip(
    mallard: MallardServer, transport: str, temporality: AggregationTemporality
) -> None:
    exporter = (
        GrpcMetricExporter(endpoint=mallard.grpc_endpoint, insecure=True)
        if transport == "grpc"
        else HttpMetricExporter(endpoint=f"{mallard.http_endpoint}/v1/metrics")
    )
    provider = _meter_provider(exporter, temporality)
    meter = provider.get_meter("train")
    counter = meter.create_counter("samples", unit="1")
    counter.add(5, {"split": "train"})
    counter.add(7, {"split": "train"})
    updown = meter.create_up_down_counter("queue.depth")
    updown.add(10)
    updown.add(-3)
    histogram = meter.create_histogram("latency", unit="ms")
    exp_histogram = meter.create_histogram("latency.exp", unit="ms")
    for value in (1, 5, 50, 500):
        histogram.record(value, {"route": "/a"})
        exp_histogram.record(value)

    def observe(_: CallbackOptions) -> list[Observation]:
        return [Observation(42.5, {"gpu": "0"})]

    meter.create_observable_gauge("gpu.temperature", callbacks=[observe], unit="Cel")
    provider.force_flush()
    provider.shutdown()
    service = f"trainer-{temporality.name.lower()}"
    wait_for_rows(mallard.data, f"select 1 from metrics where service_name = '{service}'", 5)
    rows = {
        row["metric_name"]: row
        for row in sql_json(mallard, f"select * from metrics where service_name = '{service}'")
    }
    assert set(rows) == {"samples", "queue.depth", "latency", "latency.exp", "gpu.temperature"}
    expected_temporality = temporality.name.lower()
    samples = rows["samples"]
    assert samples["metric_type"] == "sum" and samples["is_monotonic"] is True
    assert samples["temporality"] == expected_temporality
    assert samples["value_int"] == 12 and samples["value"] == 12.0
    assert _as_map(samples["attributes"]) == {"split": "train"}
    assert samples["unit"] == "1"
    depth = rows["queue.depth"]
    assert depth["metric_type"] == "sum" and depth["is_monotonic"] is False and depth["value_int"] == 7
    latency = rows["latency"]
    assert latency["metric_type"] == "histogram" and latency["temporality"] == expected_temporality
    assert latency["count"] == 4 and latency["sum"] == 556.0
    assert latency["min"] == 1.0 and latency["max"] == 500.0
    bounds = latency["explicit_bounds"]
    assert bounds[:4] == [0.0, 5.0, 10.0, 25.0]
    counts = latency["bucket_counts"]
    assert sum(counts) == 4 and len(counts) == len(bounds) + 1
    assert counts[1] == 2  # 1 and 5 fall in (0, 5]
    exp = rows["latency.exp"]
    assert exp["metric_type"] == "exponential_histogram"
    assert exp["count"] == 4 and exp["sum"] == 556.0 and exp["min"] == 1.0 and exp["max"] == 500.0
    assert sum(exp["positive_bucket_counts"]) == 4 and exp["zero_count"] == 0
    assert isinstance(exp["scale"], int) and isinstance(exp["positive_offset"], int)
    # the scale and offset place every recorded value in the bucket that holds it
    base = 2 ** (2 ** -exp["scale"])
    for value in (1, 5, 50, 500):
        index = next(
            i
            for i, c in enumerate(exp["positive_bucket_counts"])
            if c
            and base ** (exp["positive_offset"] + i)
            < value
            <= base ** (exp["positive_offset"] + i + 1) * (1 + 1e-9)
        )
        assert index >= 0
    gauge = rows["gpu.temperature"]
    assert gauge["metric_type"] == "gauge" and gauge["value"] == 42.5 and gauge["value_int"] is None
    assert gauge["temporality"] is None and _as_map(gauge["attributes"]) == {"gpu": "0"}


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_logs_with_trace_context_round_trip(mallard: MallardServer, transport: str) -> None:
    exporter = (
        GrpcLogExporter(endpoint=mallard.grpc_endpoint, insecure=True)
        if transport == "grpc"
        else HttpLogExporter(endpoint=f"{mallard.http_endpoint}/v1/logs")
    )
    logger_provider = LoggerProvider(resource=Resource.create({"service.name": f"logger-{transport}"}))
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(logger_provider=logger_provider)
    log = logging.getLogger(f"e2e.{transport}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    tracer = TracerProvider().get_tracer("e2e")
    with tracer.start_as_current_span("work") as span:
        log.warning("disk %s is %d%% full", "sda", 91, extra={"disk.device": "sda", "disk.used": 0.91})
        context = span.get_span_context()
    log.info("no span here")
    logger_provider.shutdown()
    log.removeHandler(handler)
    service = f"logger-{transport}"
    wait_for_rows(mallard.data, f"select 1 from logs where service_name = '{service}'", 2)
    rows = sql_json(mallard, f"select * from logs where service_name = '{service}' order by time")
    assert [r["body"] for r in rows] == ["disk sda is 91% full", "no span here"]
    warning, info = rows
    assert warning["severity_text"] == "WARN" and warning["severity_number"] == 13
    assert warning["trace_id"] == format(context.trace_id, "032x")
    assert warning["span_id"] == format(context.span_id, "016x")
    assert _as_map(warning["attributes"])["disk.device"] == "sda"
    assert _as_map(warning["attribute_types"])["disk.used"] == "double"
    assert info["trace_id"] == "" and info["span_id"] == "" and info["severity_number"] == 9
    assert warning["body_type"] == "string"
    assert warning["time_unix_nano"] > 0 and warning["observed_time_unix_nano"] > 0
    trace.get_tracer_provider()  # the global provider was never touched


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_gzip_compressed_exports(mallard: MallardServer, transport: str) -> None:
    exporter = (
        GrpcSpanExporter(endpoint=mallard.grpc_endpoint, insecure=True, compression=GrpcCompression.Gzip)
        if transport == "grpc"
        else HttpSpanExporter(endpoint=f"{mallard.http_endpoint}/v1/traces", compression=HttpCompression.Gzip)
    )
    provider = TracerProvider(resource=Resource.create({"service.name": f"gzip-{transport}"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("gzip")
    with tracer.start_as_current_span("compressed", attributes={"payload": "x" * 4096}):
        pass
    provider.shutdown()
    rows = wait_for_rows(
        mallard.data, f"select attributes from spans where service_name = 'gzip-{transport}'", 1
    )
    assert _as_map(rows.to_pylist()[0]["attributes"])["payload"] == "x" * 4096
