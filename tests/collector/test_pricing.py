"""The price table (`mallard.collector.pricing`): parsing, model matching, the vectorised cost column
through both span converters, the `prices` setting, and the cost computed again on WAL replay."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from harness import post_otlp, query, run_cli, start_server, wait_for_rows
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from mallard.collector.arrow import Limits, convert
from mallard.collector.arrow.spans import spans_to_arrow, spans_to_arrow_python
from mallard.collector.config import ConfigError, load_config
from mallard.collector.pricing import (
    ModelPrice,
    PriceTable,
    PricingError,
    add_costs,
    default_prices,
    load_prices,
    parse_prices,
)
from mallard.storage.schema import SPANS

T0 = 1_700_000_000_000_000_000
TABLE = PriceTable(
    version="t",
    models={
        "gpt-4o": ModelPrice(input=2.5, output=10.0, cached_input=1.25),
        "gpt-4o-mini": ModelPrice(input=0.15, output=0.6, cached_input=0.075),
        "claude-3-5-sonnet": ModelPrice(input=3.0, output=15.0, cached_input=0.3),
    },
)


# --- parsing ---------------------------------------------------------------------------------------


def test_the_built_in_table_parses_and_names_its_date() -> None:
    table = default_prices()
    assert table.version == "2025-06-01"
    assert table.models["gpt-4o"] == ModelPrice(input=2.5, output=10.0, cached_input=1.25)
    assert table.models["gpt-4-turbo"].cached_input == 10.0  # no cached price: the input price
    assert len(table.models) >= 20


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("version = ", "not valid TOML"),
        ('[models."x"]\ninput = 1\noutput = 1', "`version` must be a non-empty string"),
        ('version = 3\n[models."x"]\ninput = 1\noutput = 1', "`version` must be a non-empty string"),
        ('version = "v"\ncurrency = "EUR"', "unknown key"),
        ('version = "v"\nmodels = 3', "`models` must be a table"),
        ('version = "v"\n[models."x"]\noutput = 1', r'models\."x": `input` is missing'),
        ('version = "v"\n[models."x"]\ninput = 1\noutput = -1', "`output` must be a number of USD"),
        ('version = "v"\n[models."x"]\ninput = "1"\noutput = 1', "`input` must be a number"),
        ('version = "v"\n[models."x"]\ninput = true\noutput = 1', "`input` must be a number"),
        ('version = "v"\n[models."x"]\ninput = nan\noutput = 1', "`input` must be a number"),
        ('version = "v"\n[models."x"]\ninput = 1\noutput = 1\ncache_read = 1', "unknown key.*cache_read"),
        ('version = "v"\n[models]\nx = 1', r'models\."x" must be a table'),
    ],
)
def test_a_malformed_table_is_refused_with_the_file_and_entry(text: str, error: str) -> None:
    with pytest.raises(PricingError, match=error) as raised:
        parse_prices(text, source="my.toml")
    message = str(raised.value)
    assert message.startswith("my.toml") and "\n" not in message


def test_an_override_replaces_and_adds_models(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        'version = "mine"\n[models."GPT-4o"]\ninput = 1\noutput = 2\n[models."x"]\ninput = 3\noutput = 4'
    )
    table = load_prices(path)
    assert table.version == "2025-06-01+mine"
    assert table.models["gpt-4o"] == ModelPrice(input=1.0, output=2.0, cached_input=1.0)
    assert table.models["x"] == ModelPrice(input=3.0, output=4.0, cached_input=3.0)
    assert table.models["gpt-4o-mini"] == default_prices().models["gpt-4o-mini"]
    with pytest.raises(PricingError, match="cannot read price table"):
        load_prices(tmp_path / "missing.toml")


# --- matching --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest prefix wins
        ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
        ("claude-3-5-sonnet:2", "claude-3-5-sonnet"),
        ("openai/gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o2", None),  # a prefix counts only up to a separator
        ("gpt-4", None),
        ("gpt-4o.1", None),
        ("my-model", None),
        ("", None),
    ],
)
def test_models_match_exactly_else_by_the_longest_prefix(model: str, priced_as: str | None) -> None:
    expected = None if priced_as is None else TABLE.models[priced_as]
    assert TABLE.price_of(model) == expected


# --- the cost column -------------------------------------------------------------------------------


def _attribute(key: str, value: str | int) -> KeyValue:
    pair = KeyValue(key=key)
    if isinstance(value, str):
        pair.value.string_value = value
    else:
        pair.value.int_value = value
    return pair


def spans_request(*spans: dict[str, str | int]) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i, attributes in enumerate(spans):
        span = scope.spans.add(name=f"s{i}", start_time_unix_nano=T0, end_time_unix_nano=T0 + 1000)
        span.trace_id = bytes([1] * 16)
        span.span_id = bytes([1] * 7 + [i + 1])
        span.attributes.extend(_attribute(k, v) for k, v in attributes.items())
    return request.SerializeToString()


CASES: list[tuple[dict[str, str | int], float | None]] = [
    # gen_ai.* names: 1000 in (400 of them cached), 200 out
    (
        {
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.cache_read.input_tokens": 400,
            "gen_ai.usage.output_tokens": 200,
        },
        (600 * 0.15 + 400 * 0.075 + 200 * 0.6) / 1e6,
    ),
    # the response model wins over the request model
    (
        {
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 100,
        },
        100 * 2.5 / 1e6,
    ),
    # OpenInference names
    (
        {
            "llm.model_name": "claude-3-5-sonnet-20241022",
            "llm.token_count.prompt": 2000,
            "llm.token_count.completion": 100,
            "llm.token_count.prompt_details.cache_read": 1000,
        },
        (1000 * 3.0 + 1000 * 0.3 + 100 * 15.0) / 1e6,
    ),
    ({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.output_tokens": 10}, 10 * 10.0 / 1e6),
    # more cached than input tokens: the cached ones at the cached price, nothing below zero
    (
        {
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.cache_read.input_tokens": 100,
        },
        100 * 1.25 / 1e6,
    ),
    ({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": -5}, 0.0),
    ({"gen_ai.request.model": "gpt-4o"}, None),  # no token counts
    ({"gen_ai.request.model": "llama-3", "gen_ai.usage.input_tokens": 10}, None),  # unknown model
    ({"gen_ai.usage.input_tokens": 10}, None),  # no model
    ({"http.route": "/"}, None),  # not an LLM span
]


@pytest.mark.parametrize("converter", [spans_to_arrow, spans_to_arrow_python])
def test_cost_per_span_through_both_converters(converter: object) -> None:
    payload = spans_request(*(attributes for attributes, _ in CASES))
    converted = converter(payload)  # type: ignore[operator]
    assert converted.batch.column("gen_ai_cost_usd").null_count == len(CASES)  # converters leave it
    batch = add_costs(converted.batch, TABLE)
    assert batch.schema == SPANS
    costs = batch.column("gen_ai_cost_usd").to_pylist()
    for (attributes, expected), got in zip(CASES, costs, strict=True):
        assert got == (None if expected is None else pytest.approx(expected)), attributes
    others = [name for name in SPANS.names if name != "gen_ai_cost_usd"]
    assert batch.select(others).equals(converted.batch.select(others))


def test_convert_prices_spans_only_and_keeps_batches_without_models() -> None:
    plain = spans_request({"http.route": "/"})
    converted = convert("traces", plain, limits=Limits(), prices=TABLE)
    assert converted.batch.column("gen_ai_cost_usd").to_pylist() == [None]
    assert add_costs(converted.batch, TABLE) is converted.batch
    priced = convert(
        "traces",
        spans_request({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1_000_000}),
        limits=Limits(),
        prices=TABLE,
    )
    assert priced.batch.column("gen_ai_cost_usd").to_pylist() == [2.5]
    empty = add_costs(pa.RecordBatch.from_pylist([], schema=SPANS), TABLE)
    assert empty.num_rows == 0


# --- the setting -----------------------------------------------------------------------------------


def test_the_prices_setting_reads_the_file_when_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('version = "v"\n[models."x"]\ninput = 1\noutput = 1')
    assert load_config({}, env={"MALLARD_PRICES": str(good)}).prices == good
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "v"\n[models."x"]\ninput = 1')
    with pytest.raises(ConfigError, match=r'^prices: .*bad\.toml: models\."x": `output` is missing'):
        load_config({"prices": str(bad)}, env={})


def test_serve_refuses_a_bad_price_table_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('version = "v"\n[models."gpt-4o"]\ninput = "cheap"\noutput = 1')
    result = run_cli(
        [
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--prices",
            str(bad),
        ]
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f'mallard serve: error: prices: {bad}: models."gpt-4o": `input` must be a number of USD, 0 or more,'
        " not 'cheap'"
    ]
    assert not (tmp_path / "data").exists()


def test_wal_replay_prices_the_spans_again(tmp_path: Path) -> None:
    """Spans acknowledged but not yet flushed when the collector is killed get their cost on replay."""
    data = tmp_path / "data"
    server = start_server(data, "--flush-interval", "3600", "--ui", "false")
    post_otlp(server, "traces", spans_request(CASES[0][0]))
    server.kill()
    assert query(data, "SELECT count(*) AS n FROM spans").to_pylist() == [{"n": 0}]
    server = start_server(data, "--flush-interval", "0.2", "--ui", "false")
    try:
        rows = wait_for_rows(data, "SELECT gen_ai_cost_usd FROM spans", 1).to_pylist()
    finally:
        server.stop()
    assert rows == [{"gen_ai_cost_usd": pytest.approx(CASES[0][1])}]
