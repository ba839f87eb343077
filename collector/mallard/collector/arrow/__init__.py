"""Pure bytes -> RecordBatch converters, one per OTLP signal.

A native implementation may replace them behind `Converter`; these stay its test oracle.
"""

from __future__ import annotations

import dataclasses
from typing import Final, Protocol

from mallard.collector.arrow.attributes import Limits
from mallard.collector.arrow.logs import logs_to_arrow
from mallard.collector.arrow.metrics import metrics_to_arrow
from mallard.collector.arrow.outcome import Converted
from mallard.collector.arrow.spans import spans_to_arrow
from mallard.collector.pricing import PriceTable, add_costs


class Converter(Protocol):
    """Turns the protobuf body of one OTLP export request into the rows of one table."""

    def __call__(
        self, payload: bytes, *, limits: Limits = ..., received_unix_nano: int = ...
    ) -> Converted: ...


CONVERTERS: Final[dict[str, Converter]] = {
    "traces": spans_to_arrow,
    "metrics": metrics_to_arrow,
    "logs": logs_to_arrow,
}
"""The converter of each OTLP signal."""

TABLE_OF_SIGNAL: Final = {"traces": "spans", "metrics": "metrics", "logs": "logs"}
"""The table each OTLP signal is stored in."""


def convert(
    signal: str, payload: bytes, *, limits: Limits, prices: PriceTable, received_unix_nano: int = 0
) -> Converted:
    """The conversion live ingest and WAL replay share: the signal's converter, then the columns
    computed from its rows (the spans' `gen_ai_cost_usd`, priced by `prices`)."""
    converted = CONVERTERS[signal](payload, limits=limits, received_unix_nano=received_unix_nano)
    if converted.table != "spans":
        return converted
    batch = add_costs(converted.batch, prices)
    return converted if batch is converted.batch else dataclasses.replace(converted, batch=batch)


__all__ = [
    "CONVERTERS",
    "TABLE_OF_SIGNAL",
    "Converted",
    "Converter",
    "Limits",
    "convert",
    "logs_to_arrow",
    "metrics_to_arrow",
    "spans_to_arrow",
]
