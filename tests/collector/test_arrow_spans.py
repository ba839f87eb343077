"""Span conversion rules that both converters (native and Python oracle) must follow."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from otlp_values import kv

from mallard.collector.arrow.spans import spans_to_arrow, spans_to_arrow_python

CONVERTERS = [pytest.param(spans_to_arrow, id="dispatch"), pytest.param(spans_to_arrow_python, id="python")]


def one_span(resource: list[KeyValue], attributes: list[KeyValue]) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(resource)
    span = resource_spans.scope_spans.add().spans.add(
        trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="s"
    )
    span.attributes.extend(attributes)
    return request.SerializeToString()


def row(convert: Any, payload: bytes) -> dict[str, Any]:
    rows: list[dict[str, Any]] = convert(payload).batch.to_pylist()
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize("convert", CONVERTERS)
@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "true"), (7, "7"), (1.5, "1.5"), (b"\xde\xad", "3q0="), (None, "")],
)
def test_service_name_reads_as_the_attribute_map_shows_it(convert: Any, value: object, text: str) -> None:
    name = KeyValue(key="service.name", value=AnyValue()) if value is None else kv("service.name", value)
    got = row(convert, one_span([name], []))
    assert got["service_name"] == text
    assert dict(got["resource_attributes"])["service.name"] == (text if value is not None else None)


@pytest.mark.parametrize("convert", CONVERTERS)
def test_promoted_text_columns_take_the_map_text(convert: Any) -> None:
    got = row(convert, one_span([], [kv("http.route", 42), kv("gen_ai.system", True)]))
    assert (got["http_route"], got["gen_ai_system"]) == ("42", "true")
    assert dict(got["attributes"]) == {"http.route": "42", "gen_ai.system": "true"}
