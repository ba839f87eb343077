"""What a conversion produced: the rows, and what was rejected and why."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from mallard.collector.errors import PermanentError

_MAX_REASONS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Converted:
    """Rows of one request for one table, and the count and reasons of the items rejected."""

    table: str
    batch: pa.RecordBatch
    rejected: int = 0
    message: str = ""


@dataclass(slots=True)
class Rejections:
    """Counts rejected items and keeps the first few reasons for the partial-success message."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(f"{where}: {reason}")

    def message(self) -> str:
        if not self.count:
            return ""
        more = self.count - len(self.reasons)
        tail = f" (and {more} more)" if more > 0 else ""
        return f"rejected {self.count}: " + "; ".join(self.reasons) + tail


def optional_id(data: bytes, size: int, what: str) -> str:
    """An optional id (logs, exemplars) as hex, '' when absent; PermanentError naming `what` if malformed."""
    try:
        return hex_id(data, size, optional=True)
    except ValueError as exc:
        raise PermanentError(f"{what} {exc}") from None


def hex_id(data: bytes, size: int, *, optional: bool) -> str:
    """A trace (16 bytes) or span (8 bytes) id as lowercase hex; raises ValueError when malformed."""
    if not data:
        if optional:
            return ""
        raise ValueError("missing")
    if len(data) != size:
        raise ValueError(f"{len(data)} bytes, expected {size}")
    if data == bytes(size):
        if optional:
            return ""
        raise ValueError("all zero")
    return data.hex()
