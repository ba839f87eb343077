"""`llm_usage` over a store of LLM spans in both naming schemes, converted and priced as the collector
does (`mallard.collector.arrow.convert`) and committed by `ParquetSink`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from mallard.collector.arrow import Limits, convert
from mallard.collector.pricing import load_prices
from mallard.query import Store
from mallard.query.llm import llm_usage
from mallard.query.timerange import InvalidArgument, to_unix_nano
from mallard.storage.writer import ParquetSettings, ParquetSink

START = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)

# (minutes after START, duration ms, error, attributes)
SPANS: list[tuple[int, int, bool, dict[str, str | int]]] = [
    (1, 100, False, {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000}),
    (2, 300, True, {"gen_ai.request.model": "gpt-4o"}),
    (
        3,
        200,
        False,
        {"llm.model_name": "gpt-4o", "llm.token_count.prompt": 500, "llm.token_count.completion": 50},
    ),
    (61, 400, False, {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.output_tokens": 10}),
    (5, 50, False, {"gen_ai.request.model": "local-llama", "gen_ai.usage.input_tokens": 7}),
    (6, 10, False, {"http.route": "/"}),  # not an LLM call
]


def _request() -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i, (minutes, ms, error, attributes) in enumerate(SPANS):
        begin = to_unix_nano(START + timedelta(minutes=minutes))
        span = scope.spans.add(name="call", start_time_unix_nano=begin, end_time_unix_nano=begin + ms * 10**6)
        span.trace_id = bytes([i + 1] * 16)
        span.span_id = bytes([i + 1] * 8)
        span.status.code = 2 if error else 0
        for key, value in attributes.items():
            pair = KeyValue(key=key)
            if isinstance(value, str):
                pair.value.string_value = value
            else:
                pair.value.int_value = value
            span.attributes.append(pair)
    return request.SerializeToString()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm")
    converted = convert("traces", _request(), limits=Limits(), prices=load_prices())
    ParquetSink(root, settings=ParquetSettings(fsync=False)).write(
        "spans", [converted.batch], writer="w0", first_lsn=1, last_lsn=1
    )
    return root


def test_usage_per_model_and_hour(store: Path) -> None:
    with Store(store) as opened:
        usage = llm_usage(opened, start=START, end=START + timedelta(hours=2), step_s=3600)
    assert [(u.bucket_start, u.group["gen_ai_model"], u.calls) for u in usage] == [
        (START, "gpt-4o", 3),
        (START, "local-llama", 1),
        (START + timedelta(hours=1), "gpt-4o", 1),
    ]
    gpt = usage[0]
    assert (gpt.errors, gpt.error_rate) == (1, pytest.approx(1 / 3))
    assert (gpt.input_tokens, gpt.output_tokens, gpt.cached_input_tokens) == (1500, 50, 0)
    assert gpt.cost_usd == pytest.approx((1500 * 2.5 + 50 * 10.0) / 1e6)
    assert gpt.unpriced_calls == 0
    assert gpt.latency_p50_s == pytest.approx(0.2)
    assert gpt.latency_p95_s == pytest.approx(0.29)
    llama = usage[1]
    assert (llama.cost_usd, llama.unpriced_calls) == (None, 1)


def test_one_bucket_other_groups_and_bad_arguments(store: Path) -> None:
    with Store(store) as opened:
        usage = llm_usage(
            opened, start=START, end=START + timedelta(hours=2), group_by=("gen_ai_request_model",)
        )
        assert [(u.bucket_start, u.group, u.calls) for u in usage] == [
            (None, {"gen_ai_request_model": None}, 1),  # the OpenInference span
            (None, {"gen_ai_request_model": "gpt-4o"}, 3),
            (None, {"gen_ai_request_model": "local-llama"}, 1),
        ]
        with pytest.raises(InvalidArgument, match="group_by"):
            llm_usage(opened, start=START, end=START + timedelta(hours=1), group_by=("attributes",))
        with pytest.raises(InvalidArgument, match="step_s"):
            llm_usage(opened, start=START, end=START + timedelta(hours=1), step_s=0)
        with pytest.raises(InvalidArgument, match="empty"):
            llm_usage(opened, start=START, end=START)
