"""The `attribute_index` that compaction builds, and searches on span attributes that use it.

The index's rows are checked against hand-made expectations; searches are checked against a
reference computed here from the rows written, over stores with compacted hours, open hours and
late data, so that an index that drops a match or keeps a wrong one fails.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from mallard.query import Store, search_traces
from mallard.storage.attribute_index import MAX_INDEXED_VALUE_CHARS, MAX_POSTINGS_PER_VALUE
from mallard.storage.compact import CompactionSettings, maintain
from mallard.storage.schema import SCHEMAS
from mallard.storage.writer import ParquetSettings, ParquetSink

NOW = datetime(2026, 11, 22, 12, 30, tzinfo=UTC)  # hours up to 11:00-12:00 are closed
BASE = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
HOUR_NS = 3_600_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SETTINGS = CompactionSettings(fsync=False)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000


class Writer:
    """Commits spans as the collector's worker `w0` does, one WAL range per call, and keeps them for
    the reference search."""

    def __init__(self, root: Path) -> None:
        self.sink = ParquetSink(root, settings=ParquetSettings(fsync=False))
        self.lsn = 0
        self.spans: list[dict[str, Any]] = []

    def span(self, trace: int, span: int, start_ns: int, attributes: list[tuple[str, str | None]]) -> None:
        self.spans.append(
            {
                "trace_id": f"{trace:032x}",
                "span_id": f"{span:016x}",
                "parent_span_id": "",
                "name": "op",
                "kind": "SERVER",
                "service_name": "svc",
                "start_time": EPOCH + timedelta(microseconds=start_ns // 1000),
                "end_time": EPOCH + timedelta(microseconds=start_ns // 1000 + 1),
                "start_time_unix_nano": start_ns,
                "end_time_unix_nano": start_ns + 1000,
                "duration": 1000,
                "status_code": "UNSET",
                "attributes": attributes,
                "http_route": dict(attributes).get("http.route"),
            }
        )

    def flush(self) -> None:
        pending = [row for row in self.spans if not row.get("_written")]
        if not pending:
            return
        rows = [{key: value for key, value in row.items() if key != "_written"} for row in pending]
        self.lsn += 1
        data = pa.Table.from_pylist(rows, schema=SCHEMAS["spans"])
        self.sink.write("spans", data.to_batches(), writer="w0", first_lsn=self.lsn, last_lsn=self.lsn)
        for row in pending:
            row["_written"] = True


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def _index_rows(store: Store) -> list[tuple[Any, ...]]:
    rows = store.sql(
        "SELECT hour, key, value, trace_id FROM attribute_index ORDER BY ALL NULLS FIRST"
    ).to_pylist()
    return [tuple(row.values()) for row in rows]


def test_the_index_lists_rare_values_marks_frequent_values_and_near_unique_keys(root: Path) -> None:
    writer = Writer(root)
    start = _ns(BASE.replace(hour=3))
    long_value = "x" * (MAX_INDEXED_VALUE_CHARS + 1)
    span = 0
    for trace in range(1, MAX_POSTINGS_PER_VALUE + 4):
        user = "rare" if trace in (2, 3) else "common"
        for _ in range(2):  # two spans per trace: a value counts once per trace
            span += 1
            writer.span(
                trace,
                span,
                start + span,
                [
                    ("user.id", user),
                    ("request.id", f"r{span}"),  # a new value on every span
                    ("http.route", "/cart"),  # promoted: has its own column
                    ("note", long_value if trace == 1 else None),
                ],
            )
    writer.flush()
    maintain(root, now=NOW, settings=SETTINGS)
    with Store(root) as store:
        assert _index_rows(store) == [
            (3, "request.id", None, None),
            (3, "user.id", "common", None),
            (3, "user.id", "rare", f"{2:032x}"),
            (3, "user.id", "rare", f"{3:032x}"),
        ]
        # Every filter still answers exactly, indexed or not.
        everything = {"start": BASE, "end": NOW, "limit": 1000}
        assert len(search_traces(store, attributes={"user.id": "common"}, **everything)) == 65
        assert {s.trace_id for s in search_traces(store, attributes={"user.id": "rare"}, **everything)} == {
            f"{2:032x}",
            f"{3:032x}",
        }
        assert [s.trace_id for s in search_traces(store, attributes={"request.id": "r7"}, **everything)] == [
            f"{4:032x}"
        ]
        assert [s.trace_id for s in search_traces(store, attributes={"note": long_value}, **everything)] == [
            f"{1:032x}"
        ]
        assert search_traces(store, attributes={"user.id": "nobody"}, **everything) == []
        assert search_traces(store, attributes={"no.such.key": "v"}, **everything) == []


def _reference(
    spans: list[dict[str, Any]], start: datetime, end: datetime, attributes: dict[str, str], limit: int
) -> list[str]:
    """The `limit` traces whose earliest span matching every filter (in the range) is newest."""
    lo, hi = _ns(start), _ns(end)
    first: dict[str, int] = {}
    for row in spans:
        values: dict[str, str | None] = {}
        for key, value in row["attributes"]:
            values.setdefault(key, value)
        if lo <= row["start_time_unix_nano"] < hi and all(values.get(k) == v for k, v in attributes.items()):
            trace = row["trace_id"]
            first[trace] = min(first.get(trace, row["start_time_unix_nano"]), row["start_time_unix_nano"])
    return sorted(first, key=lambda trace: (-first[trace], trace))[:limit]


def test_searches_match_a_reference_over_compacted_open_and_late_hours(root: Path) -> None:
    rng = random.Random(7)
    writer = Writer(root)
    users = [f"u{i}" for i in range(40)]
    span = 0

    def add_trace(trace: int, hour: int) -> None:
        nonlocal span
        start = _ns(BASE) + hour * HOUR_NS + rng.randrange(HOUR_NS - 10**9)
        user, tier = rng.choice(users), rng.choice(["gold", "free", "free", "free"])
        for offset in range(rng.randrange(1, 4)):
            span += 1
            attributes: list[tuple[str, str | None]] = [("tier", tier), ("peer", f"10.0.{span}")]
            if offset == 0:
                attributes.append(("user.id", user))
            writer.span(trace, span, start + offset * 1000, attributes)

    trace = 0
    for hour in range(13):  # 00:00-12:59; 12:00 is open
        for _ in range(rng.randrange(20, 120) if hour != 5 else 0):  # 05:00 has no spans at all
            trace += 1
            add_trace(trace, hour)
        writer.flush()
    maintain(root, now=NOW, settings=SETTINGS)
    for _ in range(5):  # late data for the compacted hour 04:00, not indexed yet
        trace += 1
        add_trace(trace, 4)
    writer.flush()
    ranges = [(BASE, NOW), (BASE + timedelta(hours=2, minutes=30), BASE + timedelta(hours=9, minutes=10))]
    filters = [
        *({"user.id": user} for user in rng.sample(users, 8)),
        {"tier": "gold"},
        {"tier": "free"},
        {"user.id": users[0], "tier": "gold"},
        {"user.id": users[1], "tier": "free"},
        {"peer": "10.0.17"},
        {"user.id": "nobody"},
    ]

    def check(store: Store) -> None:
        for start, end in ranges:
            for attributes in filters:
                for limit in (1, 5, 1000):
                    expected = _reference(writer.spans, start, end, attributes, limit)
                    found = search_traces(store, start=start, end=end, attributes=attributes, limit=limit)
                    assert {summary.trace_id for summary in found} == set(expected), (attributes, limit)

    with Store(root) as store:
        store.sql("SELECT 1")  # the open hours are those of the last query
        assert store.open_hours() == (("2026-11-22", 4), ("2026-11-22", 12))
        check(store)
        maintain(root, now=NOW, settings=SETTINGS)  # indexes the late spans
        store.sql("SELECT 1")
        assert store.open_hours() == (("2026-11-22", 12),)
        check(store)
