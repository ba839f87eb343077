"""Model prices, and the `gen_ai_cost_usd` span column the collector computes from them at ingest.

A price table is TOML (the built-in one is `prices.toml` beside this module, which documents the
format): a `version` string and, per model, USD per million input, output and cached-input tokens.
`load_prices(override)` reads the built-in table and lays the user's file over it, model by model.

`add_costs` fills `gen_ai_cost_usd` of a converted `spans` batch, vectorised: the prices of the
batch's distinct models are looked up once, then taken per row. A span's cost is

    (max(input - cached, 0) * input_price + cached * cached_input_price + output * output_price) / 1e6

from `gen_ai_input_tokens`, `gen_ai_cache_read_input_tokens` (counted in the input tokens, as the
GenAI conventions say) and `gen_ai_output_tokens`, a missing count read as 0 and a negative one as 0.
It is NULL when the span has no model, a model the table does not price, or neither an input nor an
output count: unknown stays unknown, never $0.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from mallard.storage.schema import SPANS

PER_TOKENS: Final = 1_000_000  # prices are per million tokens
SUFFIX_SEPARATORS: Final = ("-", ":", "@")  # what may follow a priced name in a longer model name
_MAX_MATCHED: Final = 4096
_MODEL_KEYS: Final = frozenset({"input", "output", "cached_input"})
_COST: Final = "gen_ai_cost_usd"
_ZERO: Final = pa.scalar(0.0, pa.float64())
_NULL_COST: Final = pa.scalar(None, pa.float64())


class PricingError(Exception):
    """A price table cannot be read or is malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceTable:
    """Prices by lowercase model name; `version` names the tables it was made of (`base+override`)."""

    version: str
    models: Mapping[str, ModelPrice]
    _matched: dict[str, ModelPrice | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def price_of(self, model: str) -> ModelPrice | None:
        """The model's prices: exact name, else the longest priced prefix ending at `-`, `:` or `@`,
        then the same for the part after the last `/`; None when none matches."""
        if model in self._matched:
            return self._matched[model]
        name = model.strip().lower()
        found = self._match(name)
        if found is None and "/" in name:
            found = self._match(name.rsplit("/", 1)[1])
        if len(self._matched) >= _MAX_MATCHED:  # model names come from clients: bound what is kept
            self._matched.clear()
        self._matched[model] = found
        return found

    def _match(self, name: str) -> ModelPrice | None:
        exact = self.models.get(name)
        if exact is not None:
            return exact
        best: str | None = None
        for key in self.models:
            if (
                len(name) > len(key)
                and name.startswith(key)
                and name[len(key)] in SUFFIX_SEPARATORS
                and (best is None or len(key) > len(best))
            ):
                best = key
        return None if best is None else self.models[best]


def parse_prices(text: str, *, source: str) -> PriceTable:
    """A price table from TOML text; raises PricingError naming `source` and the bad entry."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"version", "models"})
    if unknown:
        raise PricingError(f"{source}: unknown key(s) {', '.join(unknown)} (expected version, models)")
    version = document.get("version")
    if not isinstance(version, str) or not version.strip():
        raise PricingError(f'{source}: `version` must be a non-empty string (e.g. version = "2025-06-01")')
    entries = document.get("models", {})
    if not isinstance(entries, dict):
        raise PricingError(f'{source}: `models` must be a table of [models."<name>"] tables')
    models: dict[str, ModelPrice] = {}
    for name, entry in entries.items():
        where = f'{source}: models."{name}"'
        if not isinstance(entry, dict):
            raise PricingError(f"{where} must be a table with input, output and cached_input")
        if not name.strip():
            raise PricingError(f"{where}: the model name is empty")
        bad = sorted(set(entry) - _MODEL_KEYS)
        if bad:
            raise PricingError(
                f"{where}: unknown key(s) {', '.join(bad)} (expected input, output, cached_input)"
            )
        for key in ("input", "output"):
            if key not in entry:
                raise PricingError(f"{where}: `{key}` is missing (USD per million tokens)")
        prices = {key: _price(where, key, value) for key, value in entry.items()}
        models[name.strip().lower()] = ModelPrice(
            input=prices["input"],
            output=prices["output"],
            cached_input=prices.get("cached_input", prices["input"]),
        )
    return PriceTable(version=version.strip(), models=models)


def _price(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise PricingError(f"{where}: `{key}` must be a number of USD, 0 or more, not {value!r}")
    return float(value)


def default_prices() -> PriceTable:
    """The built-in table (`prices.toml` in this package)."""
    text = resources.files("mallard.collector").joinpath("prices.toml").read_text(encoding="utf-8")
    return parse_prices(text, source="built-in prices.toml")


def load_prices(override: Path | None = None) -> PriceTable:
    """The built-in table with `override`'s models laid over it; raises PricingError."""
    base = default_prices()
    if override is None:
        return base
    try:
        text = override.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PricingError(f"cannot read price table {override}: {exc}") from None
    extra = parse_prices(text, source=str(override))
    return PriceTable(version=f"{base.version}+{extra.version}", models={**base.models, **extra.models})


def add_costs(batch: pa.RecordBatch, prices: PriceTable) -> pa.RecordBatch:
    """`batch` (schema `SPANS`) with `gen_ai_cost_usd` computed; the batch itself when no span has a
    model the table prices (the column then stays NULL)."""
    models = batch.column("gen_ai_model")
    if models.null_count == len(models):
        return batch
    names: list[str] = []
    rates: list[ModelPrice] = []
    for model in pc.unique(models).to_pylist():
        price = None if model is None else prices.price_of(model)
        if price is not None:
            names.append(model)
            rates.append(price)
    if not names:
        return batch
    row_rate = pc.index_in(models, value_set=pa.array(names, pa.string()))  # NULL: not priced

    def per_token(prices_per_million: list[float]) -> pa.Array:
        per_model = pa.array([p / PER_TOKENS for p in prices_per_million], pa.float64())
        return per_model.take(row_rate)

    def tokens(column: str) -> pa.Array:
        return pc.max_element_wise(pc.fill_null(batch.column(column), 0).cast(pa.float64()), _ZERO)

    used = pc.or_(
        pc.is_valid(batch.column("gen_ai_input_tokens")), pc.is_valid(batch.column("gen_ai_output_tokens"))
    )
    cached = tokens("gen_ai_cache_read_input_tokens")
    uncached = pc.max_element_wise(pc.subtract(tokens("gen_ai_input_tokens"), cached), _ZERO)
    dollars = pc.add(
        pc.add(
            pc.multiply(uncached, per_token([r.input for r in rates])),
            pc.multiply(cached, per_token([r.cached_input for r in rates])),
        ),
        pc.multiply(tokens("gen_ai_output_tokens"), per_token([r.output for r in rates])),
    )
    cost = pc.if_else(used, dollars, _NULL_COST)
    index = SPANS.get_field_index(_COST)
    return batch.set_column(index, SPANS.field(_COST), cost)
