"""Time ranges of the typed query functions: validation and the hive partition predicate.

A range is half-open, `[start, end)`, on a row's partition column (`start_time` for spans), with both
ends timezone-aware. The tables are partitioned by the UTC `date` and `hour` of that column
(`docs/storage.md`), so `partition_predicate` names exactly the partitions a range can touch and
DuckDB skips every other directory without opening a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from mallard.query.errors import QueryError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


NS_PER_UNIT: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
"""Nanoseconds per duration unit, as the HTTP APIs accept them (`250ms`, `1.5s`, `2m`)."""


class InvalidArgument(QueryError):
    """A parameter of a typed query function is malformed (a bad trace id, an empty time range, …).

    The HTTP API answers it with 400 and the message.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeRange:
    """The half-open UTC range `[start, end)`."""

    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def start_unix_nano(self) -> int:
        return to_unix_nano(self.start)

    @property
    def end_unix_nano(self) -> int:
        return to_unix_nano(self.end)


def time_range(start: datetime, end: datetime) -> TimeRange:
    """Checks `start < end`, both timezone-aware, and returns them in UTC; raises `InvalidArgument`."""
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidArgument(f"{name} must be timezone-aware, got {value.isoformat()}")
    if start >= end:
        raise InvalidArgument(
            f"the time range is empty: start {start.isoformat()} is not before end {end.isoformat()}"
        )
    return TimeRange(start=start.astimezone(UTC), end=end.astimezone(UTC))


def partition_predicate(time: TimeRange) -> str:
    """SQL over the hive columns `date` and `hour` that keeps the partitions the range touches.

    The literals are built from `date` and `int` values, never from caller text, so inlining them is
    safe; they are inlined (not `?` parameters) so that DuckDB prunes directories at plan time.
    """
    first = time.start
    last = time.end - _MICROSECOND  # the end is exclusive
    first_date, last_date = _date_literal(first.date()), _date_literal(last.date())
    return (
        f"(date BETWEEN {first_date} AND {last_date}"
        f" AND (date > {first_date} OR hour >= {int(first.hour)})"
        f" AND (date < {last_date} OR hour <= {int(last.hour)}))"
    )


def to_unix_nano(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime (exact: no float on the way)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def from_unix_nano(nanoseconds: int) -> datetime:
    """The UTC datetime of `nanoseconds` since the epoch, truncated to microseconds."""
    return EPOCH + timedelta(microseconds=nanoseconds // 1_000)


def _date_literal(day: date) -> str:
    return f"DATE '{day.isoformat()}'"
