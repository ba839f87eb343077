"""Pure bytes -> RecordBatch converters, one per OTLP signal.

A native implementation may replace them behind `Converter`; these stay its test oracle.
"""

from __future__ import annotations

from typing import Final, Protocol

from mallard.collector.arrow.attributes import Limits
from mallard.collector.arrow.logs import logs_to_arrow
from mallard.collector.arrow.metrics import metrics_to_arrow
from mallard.collector.arrow.outcome import Converted
from mallard.collector.arrow.spans import spans_to_arrow


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

__all__ = [
    "CONVERTERS",
    "TABLE_OF_SIGNAL",
    "Converted",
    "Converter",
    "Limits",
    "logs_to_arrow",
    "metrics_to_arrow",
    "spans_to_arrow",
]
