"""`mallard.instrumentation.llm` against a real `mallard serve`: GenAI spans and metrics from `llm_span`
and `@llm_call`, OpenInference-named spans from a plain tracer, the typed columns both land in, and
the cost the collector computes from its price table (built in, or laid over by `--prices`).

OpenTelemetry's providers are process-global, so the instrumented app runs in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import MallardServer, run_python, start_server, wait_for_rows

from mallard.instrumentation.llm import (
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    LlmSpan,
    current_llm_span,
    llm_call,
    llm_span,
)

CHILD = r"""
import asyncio, json, sys
from opentelemetry import trace
from mallard.instrumentation import configure, shutdown
from mallard.instrumentation.llm import current_llm_span, llm_call, llm_span

configure(service_name="llm-app", endpoint=sys.argv[1], metric_interval_s=3600)
out = {}

with trace.get_tracer("test").start_as_current_span("answer") as root:
    out["trace_id"] = format(root.get_span_context().trace_id, "032x")
    with llm_span("gpt-4o-mini", provider="openai", temperature=0.2, max_tokens=300) as call:
        call.record_response(model="gpt-4o-mini-2024-07-18", input_tokens=1000, output_tokens=200,
                             cached_tokens=400, finish_reasons=["stop"], response_id="chatcmpl-1")

    @llm_call(provider="openai", model="gpt-4o")
    def complete(prompt):
        current_llm_span().record_response(input_tokens=100, output_tokens=50, finish_reasons=["length"])
        return prompt.upper()

    complete("hello")

    # OpenInference names, as Phoenix's instrumentations send them
    with trace.get_tracer("openinference.instrumentation.anthropic").start_as_current_span(
        "Messages", attributes={
            "openinference.span.kind": "LLM", "llm.model_name": "claude-3-5-sonnet-20241022",
            "llm.provider": "anthropic", "llm.system": "anthropic", "llm.token_count.prompt": 2000,
            "llm.token_count.completion": 100, "llm.token_count.prompt_details.cache_read": 1000,
            "llm.token_count.total": 2100}):
        pass

    @llm_call(provider="acme", model="my-finetune", operation="text_completion",
              on_result=lambda span, n: span.record_response(input_tokens=n, output_tokens=100))
    async def finetuned(n):
        return n

    asyncio.run(finetuned(1000))

    with llm_span("my-local-llama", provider="ollama", operation="embeddings") as call:
        call.record_response(input_tokens=10)

    try:
        with llm_span("gpt-4o", provider="openai"):
            raise TimeoutError("the provider did not answer")
    except TimeoutError:
        out["raised"] = True

shutdown()
print(json.dumps(out))
"""

SPANS_SQL = """
    SELECT name, kind, status_code, gen_ai_system, gen_ai_operation_name, gen_ai_request_model,
        gen_ai_response_model, gen_ai_model, gen_ai_input_tokens, gen_ai_output_tokens,
        gen_ai_cache_read_input_tokens, gen_ai_cost_usd, attributes, attribute_types
    FROM spans WHERE trace_id = '{trace_id}' AND name <> 'answer' ORDER BY start_time_unix_nano
"""


def _run_app(server: MallardServer) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(run_python(CHILD, server.grpc_endpoint).splitlines()[-1])
    assert out["raised"] is True
    return out


def _spans(server: MallardServer, trace_id: str) -> dict[str, dict[str, Any]]:
    rows = wait_for_rows(server.data, SPANS_SQL.format(trace_id=trace_id), 6).to_pylist()
    assert len(rows) == 6, rows
    named: dict[str, dict[str, Any]] = {}
    for row in rows:
        named.setdefault(row["name"], row)
    assert len(named) == 5  # the two `chat gpt-4o` spans: the decorated call and the failed one
    named["chat gpt-4o (failed)"] = rows[-1]
    return named


@pytest.fixture
def priced_server(tmp_path: Path) -> Iterator[MallardServer]:
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'version = "test-override"\n'
        '[models."gpt-4o"]\ninput = 1.0\noutput = 2.0\n'
        '[models."my-finetune"]\ninput = 10.0\noutput = 20.0\n'
    )
    running = start_server(tmp_path / "data", "--flush-interval", "0.2", "--prices", str(prices))
    yield running
    running.stop()


def test_genai_and_openinference_spans_land_in_the_same_columns_with_their_cost(
    server: MallardServer,
) -> None:
    trace_id = _run_app(server)["trace_id"]
    spans = _spans(server, trace_id)

    mini = spans["chat gpt-4o-mini"]
    assert {k: mini[k] for k in ("kind", "status_code", "gen_ai_system", "gen_ai_operation_name")} == {
        "kind": "CLIENT",
        "status_code": "UNSET",
        "gen_ai_system": "openai",
        "gen_ai_operation_name": "chat",
    }
    assert (mini["gen_ai_request_model"], mini["gen_ai_response_model"], mini["gen_ai_model"]) == (
        "gpt-4o-mini",
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-2024-07-18",
    )
    assert (mini["gen_ai_input_tokens"], mini["gen_ai_output_tokens"]) == (1000, 200)
    assert mini["gen_ai_cache_read_input_tokens"] == 400
    attrs, types = dict(mini["attributes"]), dict(mini["attribute_types"])
    assert attrs["gen_ai.provider.name"] == "openai"
    assert (attrs["gen_ai.response.finish_reasons"], types["gen_ai.response.finish_reasons"]) == (
        '["stop"]',
        "array",
    )
    assert (attrs["gen_ai.request.temperature"], attrs["gen_ai.request.max_tokens"]) == ("0.2", "300")
    assert attrs["gen_ai.response.id"] == "chatcmpl-1"
    # built-in gpt-4o-mini, matched by prefix: 600 uncached x 0.15 + 400 cached x 0.075 + 200 x 0.60
    assert mini["gen_ai_cost_usd"] == pytest.approx((600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6)

    decorated = spans["chat gpt-4o"]
    assert decorated["gen_ai_model"] == "gpt-4o" and decorated["status_code"] == "UNSET"
    assert decorated["gen_ai_cost_usd"] == pytest.approx((100 * 2.50 + 50 * 10.00) / 1e6)

    openinference = spans["Messages"]
    assert openinference["gen_ai_system"] == "anthropic"
    assert openinference["gen_ai_model"] == "claude-3-5-sonnet-20241022"
    assert openinference["gen_ai_request_model"] is None  # gen_ai.request.model only
    assert (
        openinference["gen_ai_input_tokens"],
        openinference["gen_ai_output_tokens"],
        openinference["gen_ai_cache_read_input_tokens"],
    ) == (2000, 100, 1000)
    assert openinference["gen_ai_cost_usd"] == pytest.approx((1000 * 3.0 + 1000 * 0.30 + 100 * 15.0) / 1e6)

    async_call = spans["text_completion my-finetune"]
    assert (async_call["gen_ai_input_tokens"], async_call["gen_ai_output_tokens"]) == (1000, 100)
    assert async_call["gen_ai_cost_usd"] is None  # not in the built-in table: unknown, not $0

    unknown = spans["embeddings my-local-llama"]
    assert unknown["gen_ai_input_tokens"] == 10 and unknown["gen_ai_cost_usd"] is None

    failed = spans["chat gpt-4o (failed)"]
    assert failed["status_code"] == "ERROR" and dict(failed["attributes"])["error.type"] == "TimeoutError"
    assert failed["gen_ai_cost_usd"] is None  # no usage recorded

    # the whole trace's cost in the traces view
    totals = wait_for_rows(
        server.data, f"SELECT input_tokens, cost_usd FROM traces WHERE trace_id = '{trace_id}'", 1
    ).to_pylist()
    assert totals[0]["input_tokens"] == 1000 + 100 + 2000 + 1000 + 10
    assert totals[0]["cost_usd"] == pytest.approx(
        sum(spans[name]["gen_ai_cost_usd"] for name in ("chat gpt-4o-mini", "chat gpt-4o", "Messages"))
    )


def test_genai_client_metrics_are_recorded(server: MallardServer) -> None:
    _run_app(server)
    rows = wait_for_rows(
        server.data,
        "SELECT metric_name, unit, attributes, count, sum, explicit_bounds FROM metrics"
        " WHERE metric_name LIKE 'gen_ai.client.%' ORDER BY metric_name, attributes['gen_ai.request.model']",
        1,
    ).to_pylist()
    usage = {
        (dict(r["attributes"]).get("gen_ai.request.model"), dict(r["attributes"])["gen_ai.token.type"]): r
        for r in rows
        if r["metric_name"] == "gen_ai.client.token.usage"
    }
    assert usage[("gpt-4o-mini", "input")]["sum"] == 1000
    assert usage[("gpt-4o-mini", "output")]["sum"] == 200
    assert usage[("gpt-4o-mini", "input")]["unit"] == "{token}"
    assert usage[("gpt-4o-mini", "input")]["explicit_bounds"] == [float(b) for b in TOKEN_BUCKETS]
    durations = [r for r in rows if r["metric_name"] == "gen_ai.client.operation.duration"]
    assert sum(r["count"] for r in durations) == 5  # every llm_span, the failed one included
    assert {r["unit"] for r in durations} == {"s"}
    assert durations[0]["explicit_bounds"] == pytest.approx(list(DURATION_BUCKETS))
    failed = [r for r in durations if dict(r["attributes"]).get("error.type") == "TimeoutError"]
    assert len(failed) == 1 and dict(failed[0]["attributes"])["gen_ai.request.model"] == "gpt-4o"


def test_an_override_price_table_replaces_and_adds_models(priced_server: MallardServer) -> None:
    spans = _spans(priced_server, _run_app(priced_server)["trace_id"])
    assert spans["chat gpt-4o"]["gen_ai_cost_usd"] == pytest.approx((100 * 1.0 + 50 * 2.0) / 1e6)
    assert spans["text_completion my-finetune"]["gen_ai_cost_usd"] == pytest.approx(
        (1000 * 10.0 + 100 * 20.0) / 1e6
    )
    # the built-in entries the override does not name stay
    assert spans["chat gpt-4o-mini"]["gen_ai_cost_usd"] == pytest.approx(
        (600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6
    )
    assert spans["embeddings my-local-llama"]["gen_ai_cost_usd"] is None


# --- in this process, without a configured provider (the calls run untraced) ----------------------


def test_bad_arguments_raise_before_anything_is_recorded() -> None:
    with pytest.raises(ValueError, match="model"), llm_span(""):
        pass
    with pytest.raises(TypeError, match="temperature"), llm_span("gpt-4o", temperature="hot"):  # type: ignore[arg-type]
        pass
    with llm_span("gpt-4o") as call:
        with pytest.raises(ValueError, match="input_tokens must be 0 or more"):
            call.record_response(input_tokens=-1)
        with pytest.raises(TypeError, match="finish_reasons"):
            call.record_response(finish_reasons="stop")
        assert current_llm_span() is call
    assert current_llm_span() is None


def test_the_decorator_keeps_the_function_and_its_exceptions() -> None:
    @llm_call(model="gpt-4o", provider="openai")
    def fails() -> None:
        raise KeyError("quota")

    @llm_call(model="gpt-4o", on_result=lambda span, result: span.record_response(output_tokens=result))
    async def answers() -> int:
        handle = current_llm_span()
        assert isinstance(handle, LlmSpan)
        return 7

    with pytest.raises(KeyError, match="quota"):
        fails()
    assert fails.__name__ == "fails"
    assert asyncio.run(answers()) == 7
