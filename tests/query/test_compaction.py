"""Compaction, the traces table and retention (`mallard.storage.compact`), read through `Store`.

Stores are written with the collector's own `ParquetSink` (hand-made rows with known answers), or
by a real `mallard serve`; every expectation is computed by hand from the rows written.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from harness import post_otlp, run_cli, start_server, wait_for_rows
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from otlp_values import kv

from mallard.query import QueryError, Store, get_trace, metric_series, search_traces
from mallard.storage.compact import CompactionSettings, maintain
from mallard.storage.layout import (
    committed_ranges,
    directory_coverage,
    journal_dir,
    merge_ranges,
    tmp_dir,
    trash_dir,
)
from mallard.storage.schema import SCHEMAS
from mallard.storage.writer import ParquetSettings, ParquetSink

NOW = datetime(2026, 11, 22, 12, 30, tzinfo=UTC)  # hours up to 11:00-12:00 are closed (settle 5 min)
HOUR_NS = 3_600_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAST = ParquetSettings(fsync=False)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000


def _span(
    trace: int,
    span: int,
    start_ns: int,
    *,
    parent: int | None = None,
    service: str = "shop",
    name: str = "GET /",
    duration_ns: int = 1_000_000,
    error: bool = False,
    tokens: tuple[int, int] | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trace_id": f"{trace:032x}",
        "span_id": f"{span:016x}",
        "parent_span_id": "" if parent is None else f"{parent:016x}",
        "name": name,
        "kind": "SERVER",
        "service_name": service,
        "start_time": EPOCH + timedelta(microseconds=start_ns // 1000),
        "end_time": EPOCH + timedelta(microseconds=(start_ns + duration_ns) // 1000),
        "start_time_unix_nano": start_ns,
        "end_time_unix_nano": start_ns + duration_ns,
        "duration": duration_ns,
        "status_code": "ERROR" if error else "UNSET",
        "attributes": [("span.n", str(span))],
    }
    if tokens is not None:
        row["gen_ai_input_tokens"], row["gen_ai_output_tokens"] = tokens
    return row


class Writer:
    """Commits rows as the collector's worker `w0` does, one WAL range per call."""

    def __init__(self, root: Path) -> None:
        self.sink = ParquetSink(root, settings=FAST)
        self.lsn = 0
        self.lock = threading.Lock()

    def write(self, table: str, rows: list[dict[str, Any]]) -> None:
        data = pa.Table.from_pylist(rows, schema=SCHEMAS[table])
        with self.lock:
            self.lsn += 1
            self.sink.write(table, data.to_batches(), writer="w0", first_lsn=self.lsn, last_lsn=self.lsn)


def _files(root: Path, table: str) -> list[str]:
    return sorted(path.name for path in (root / "v1" / table).rglob("*.parquet"))


def _rows(store: Store, table: str, order: str) -> list[dict[str, Any]]:
    return store.sql(f"SELECT * EXCLUDE (date, hour) FROM {table} ORDER BY {order}").to_pylist()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def _traces(store: Store) -> dict[str, dict[str, Any]]:
    return {row["trace_id"]: row for row in store.sql("SELECT * FROM traces").to_pylist()}


def _three_hour_store(root: Path) -> Writer:
    """Trace 1 crosses 10:00→11:00 (root in 10:xx with an LLM child, a failing child in 11:xx);
    trace 2 has no parentless span; trace 3 is one span; 3 flushes per hour."""
    writer = Writer(root)
    t10, t11 = _ns(NOW.replace(hour=10, minute=59)), _ns(NOW.replace(hour=11, minute=0))
    writer.write("spans", [_span(1, 1, t10, duration_ns=120_000_000_000, service="front", name="POST /chat")])
    writer.write("spans", [_span(1, 2, t10 + 1000, parent=1, service="llm", name="chat", tokens=(100, 20))])
    writer.write("spans", [_span(3, 9, t10 + 5000, service="solo", name="tick")])
    writer.write("spans", [_span(1, 3, t11 + 10, parent=1, service="db", name="SELECT", error=True)])
    writer.write("spans", [_span(2, 5, t11 + 20, parent=4, service="late", name="orphan-b")])
    writer.write("spans", [_span(2, 6, t11 + 10, parent=4, service="late", name="orphan-a", tokens=(5, 1))])
    return writer


def test_traces_view_is_the_same_before_and_after_compaction(root: Path) -> None:
    _three_hour_store(root)
    with Store(root) as store:
        before = _traces(store)
        spans_before = _rows(store, "spans", "span_id")
        report = maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
        assert report.compacted_partitions == 2 and report.files_in == 6 and report.rows == 6
        assert all(name.startswith("c-") for name in _files(root, "spans"))
        assert len(_files(root, "spans")) == 2 and len(_files(root, "traces")) == 2
        after = _traces(store)
        assert _rows(store, "spans", "span_id") == spans_before

    assert after == before
    one, two, three = (after[f"{n:032x}"] for n in (1, 2, 3))
    t10 = _ns(NOW.replace(hour=10, minute=59))
    assert (one["root_service"], one["root_operation"], one["root_span_id"]) == (
        "front",
        "POST /chat",
        f"{1:016x}",
    )
    assert (one["span_count"], one["error_count"]) == (3, 1)
    assert one["start_time_unix_nano"] == t10 and one["duration"] == 120_000_000_000
    assert one["services"] == ["db", "front", "llm"]
    assert (one["input_tokens"], one["output_tokens"]) == (100, 20)
    # no parentless span: the earliest span is the root
    assert (two["root_operation"], two["span_count"], two["input_tokens"]) == ("orphan-a", 2, 5)
    assert (three["root_service"], three["span_count"], three["error_count"]) == ("solo", 1, 0)
    assert three["input_tokens"] is None


def test_compacted_files_are_sorted_by_trace_then_time_and_record_their_wal_ranges(root: Path) -> None:
    writer = Writer(root)
    base = _ns(NOW.replace(hour=9, minute=0))
    rng = random.Random(7)
    for batch in range(5):
        writer.write(
            "spans",
            [
                _span(rng.randrange(1, 1000), batch * 100 + i, base + rng.randrange(HOUR_NS))
                for i in range(50)
            ],
        )
    maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
    (compacted,) = (root / "v1" / "spans").rglob("c-*.parquet")
    table = pq.read_table(compacted, columns=["start_time_unix_nano", "trace_id"]).to_pylist()
    assert table == sorted(table, key=lambda row: (row["trace_id"], row["start_time_unix_nano"]))
    assert json.loads(pq.read_metadata(compacted).metadata[b"mallard.wal_coverage"]) == {"w0": [[1, 5]]}
    assert [(writer_, first, last) for _, writer_, first, last in committed_ranges(root, "spans")] == [
        ("w0", 1, 5)
    ]
    # A retried flush of an already compacted range is skipped (it would duplicate rows), a new one is not.
    sink = ParquetSink(root, settings=FAST)
    again = pa.Table.from_pylist([_span(5, 999, base + 1)], schema=SCHEMAS["spans"])
    assert sink.write("spans", again.to_batches(), writer="w0", first_lsn=3, last_lsn=3) == []
    assert len(sink.write("spans", again.to_batches(), writer="w0", first_lsn=6, last_lsn=6)) == 1


def test_late_data_for_a_compacted_hour_is_seen_at_once_and_compacted_again(root: Path) -> None:
    writer = _three_hour_store(root)
    maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
    t11 = _ns(NOW.replace(hour=11))
    writer.write("spans", [_span(1, 7, t11 + 99, parent=2, service="cache", name="GET", error=True)])
    with Store(root) as store:
        late = _traces(store)[f"{1:032x}"]
        assert (late["span_count"], late["error_count"], late["services"]) == (
            4,
            2,
            ["cache", "db", "front", "llm"],
        )
        report = maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
        assert report.compacted_partitions == 1 and report.rows == 4  # hour 11 only: 3 old rows + 1 late
        assert _traces(store)[f"{1:032x}"] == late
        assert store.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").to_pylist() == [
            {"n": 7, "d": 7}
        ]
    assert len(_files(root, "spans")) == 2
    again = maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
    assert again.compacted_partitions == 0  # nothing new


def test_open_hours_are_not_compacted(root: Path) -> None:
    writer = Writer(root)
    for minute in (1, 2):
        writer.write("spans", [_span(minute, minute, _ns(NOW.replace(minute=minute)))])
    writer.write("spans", [_span(9, 9, _ns(NOW.replace(hour=12, minute=0)) - 1000)])  # 11:59:59.999999
    report = maintain(root, now=NOW.replace(hour=12, minute=2), settings=CompactionSettings(fsync=False))
    assert report.compacted_partitions == 0  # 11:00-12:00 ended 2 minutes ago, settle is 5 minutes
    assert maintain(root, now=NOW, settings=CompactionSettings(fsync=False)).compacted_partitions == 1
    assert sum(name.startswith("w0-") for name in _files(root, "spans")) == 2  # 12:xx untouched


def test_an_interrupted_publish_is_finished_by_the_next_run(root: Path) -> None:
    _three_hour_store(root)
    with Store(root) as store:
        expected = _rows(store, "spans", "span_id")
    # A run that crashed after writing its journal: its new files are staged, nothing is swapped yet.
    stage = tmp_dir(root) / "compact-deadbeef" / "data"
    stage.mkdir(parents=True)
    hour = root / "v1/spans/date=2026-11-22/hour=10"
    old = sorted(hour.glob("*.parquet"))
    pq.write_table(pa.concat_tables([pq.read_table(path) for path in old]), stage / "data_0.parquet")
    journal_dir(root).mkdir(parents=True, exist_ok=True)
    record = {
        "nonce": "deadbeef",
        "in": [
            [
                os.path.relpath(stage / "data_0.parquet", root),
                os.path.relpath(hour / "c-deadbeef-000.parquet", root),
            ]
        ],
        "out": [os.path.relpath(path, root) for path in old],
    }
    (journal_dir(root) / "deadbeef.json").write_text(json.dumps(record))
    # ...and a run that crashed before its journal: only a staging directory.
    (tmp_dir(root) / "compact-0badf00d").mkdir()
    maintain(root, now=NOW, settings=CompactionSettings(fsync=False), compact=False)
    assert sorted(path.name for path in hour.glob("*.parquet")) == ["c-deadbeef-000.parquet"]
    assert not list(journal_dir(root).glob("*.json"))
    assert not list(tmp_dir(root).glob("compact-*"))
    assert sorted(path.name for path in trash_dir(root).rglob("*.parquet")) == sorted(
        path.name for path in old
    )
    with Store(root) as store:
        assert _rows(store, "spans", "span_id") == expected


def test_retention_drops_whole_old_hours_of_each_table(root: Path) -> None:
    writer = Writer(root)
    for hours_ago in (1, 5, 30):
        moment = _ns(NOW - timedelta(hours=hours_ago))
        writer.write("spans", [_span(hours_ago, hours_ago, moment)])
        writer.write(
            "logs",
            [{"time": NOW - timedelta(hours=hours_ago), "time_unix_nano": moment, "body": str(hours_ago)}],
        )
    maintain(root, now=NOW, settings=CompactionSettings(fsync=False))  # builds traces rows for closed hours
    report = maintain(
        root,
        now=NOW,
        retention={"spans": 6 * 3600, "logs": 2 * 3600},
        settings=CompactionSettings(fsync=False),
    )
    assert sorted(report.dropped) == [
        "v1/attribute_index/date=2026-11-21/hour=06",
        "v1/logs/date=2026-11-21/hour=06",
        "v1/logs/date=2026-11-22/hour=07",
        "v1/spans/date=2026-11-21/hour=06",
        "v1/traces/date=2026-11-21/hour=06",
    ]
    with Store(root) as store:
        assert store.sql("SELECT body FROM logs").column(0).to_pylist() == ["1"]
        assert sorted(store.sql("SELECT trace_id FROM traces").column(0).to_pylist()) == [
            f"{1:032x}",
            f"{5:032x}",
        ]
    assert not (root / "v1/spans/date=2026-11-21").exists()  # the emptied date directory is gone
    # Dropped files wait in the trash for the grace period, then go.
    assert len(list(trash_dir(root).rglob("*.parquet"))) > 0
    later = NOW + timedelta(seconds=CompactionSettings().grace_s + 1)
    assert (
        maintain(root, now=later, settings=CompactionSettings(fsync=False), compact=False).trash_deleted > 0
    )
    assert not list(trash_dir(root).rglob("*.parquet"))


def test_compaction_and_retention_under_concurrent_queries_and_ingest(root: Path) -> None:
    """Writers add spans to closed hours (late data) and to the open hour while maintenance runs over
    and over and readers query: no query fails, nothing is lost or duplicated."""
    writer = Writer(root)
    old = _ns(NOW - timedelta(hours=30))  # dropped by retention
    writer.write("spans", [_span(10**6 + i, 10**6 + i, old + i) for i in range(20)])
    stop = threading.Event()
    errors: list[BaseException] = []
    written: list[int] = []

    def ingest(offset: int) -> None:
        rng = random.Random(offset)
        span = offset * 1_000_000
        try:
            while not stop.is_set():
                batch = []
                for _ in range(rng.randrange(5, 40)):
                    span += 1
                    hour = rng.choice((7, 8, 9, 10, 11, 12))
                    start = _ns(NOW.replace(hour=hour, minute=0)) + rng.randrange(
                        min(HOUR_NS, 30 * 60 * 10**9)
                    )
                    batch.append(_span(span // 3, span, start, parent=None if span % 3 == 0 else span - 1))
                writer.write("spans", batch)
                written.extend(row_id for row_id in (int(row["span_id"], 16) for row in batch))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    counts: list[int] = []

    def read() -> None:
        try:
            with Store(root) as store:
                while not stop.is_set():
                    (row,) = store.sql(
                        "SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans"
                        " WHERE start_time_unix_nano > ?",
                        [old + 1000],
                    ).to_pylist()
                    n, distinct = row["n"], row["d"]
                    assert n == distinct, "a row was read twice"
                    counts.append(n)
                    store.sql("SELECT sum(span_count) AS n FROM traces")
                    found = search_traces(store, start=NOW - timedelta(hours=6), end=NOW, limit=5)
                    if found:
                        get_trace(store, found[0].trace_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(n,)) for n in (1, 2)] + [
        threading.Thread(target=read) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    passes = 0
    try:
        for _ in range(6):
            maintain(
                root,
                now=NOW,
                retention={"spans": 24 * 3600},
                settings=CompactionSettings(fsync=False, grace_s=0),
            )
            passes += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]
    assert passes == 6 and len(counts) > 5
    maintain(root, now=NOW, retention={"spans": 24 * 3600}, settings=CompactionSettings(fsync=False))
    with Store(root) as store:
        ids = store.sql("SELECT span_id FROM spans").column(0).to_pylist()
        assert sorted(int(i, 16) for i in ids) == sorted(written)  # old rows dropped, the rest exactly once
        spans_per_trace = store.sql("SELECT trace_id, count(*) AS n FROM spans GROUP BY ALL").to_pylist()
        summary = {
            row["trace_id"]: row["span_count"]
            for row in store.sql("SELECT trace_id, span_count FROM traces").to_pylist()
        }
        assert summary == {row["trace_id"]: row["n"] for row in spans_per_trace}


def test_coverage_reads_survive_compacted_files_replaced_while_they_are_listed(root: Path) -> None:
    """Flushes check coverage without the reader lock: a compacted file replaced between the
    listing and the footer read must not fail the flush nor hide the range it held."""
    directory = root / "v1" / "spans" / "date=2026-11-22" / "hour=09"
    directory.mkdir(parents=True)
    table = pa.Table.from_pylist([], schema=SCHEMAS["spans"])

    def compacted(index: int) -> Path:
        staged = root / f"staged-{index}.parquet"
        coverage = json.dumps({"w0": [[1, 5 + index]]}).encode()
        pq.write_table(table.replace_schema_metadata({b"mallard.wal_coverage": coverage}), staged)
        return staged

    staged = [compacted(index) for index in range(2)]
    current = directory / "c-a-000.parquet"
    os.link(staged[0], current)
    stop = threading.Event()
    swaps = 0

    def replace() -> None:  # as `compact._publish` does: the successor in, then the old file out
        nonlocal current, swaps
        while not stop.is_set():
            swaps += 1
            successor = directory / f"c-{swaps:x}-000.parquet"
            os.link(staged[swaps % 2], successor)
            os.unlink(current)
            current = successor
            time.sleep(0.0002)  # far more often than any compaction publishes

    thread = threading.Thread(target=replace)
    thread.start()
    try:
        seen = [merge_ranges(directory_coverage(directory)["w0"]) for _ in range(1500)]
    finally:
        stop.set()
        thread.join()
    assert swaps > 100
    assert all(ranges in ([(1, 5)], [(1, 6)]) for ranges in seen), seen


def test_queries_do_not_fail_when_a_file_vanishes_without_the_lock(root: Path) -> None:
    """A swap that did not wait for readers (another tool renaming files) makes the Store run the
    query again rather than fail with 'No such file'."""
    writer = Writer(root)
    for i in range(30):
        writer.write("logs", [{"time": NOW, "time_unix_nano": _ns(NOW) + i, "body": str(i)}])
    with Store(root) as store:
        victim = next((root / "v1" / "logs").rglob("*.parquet"))
        moved = root / "elsewhere.parquet"
        done = threading.Event()

        swaps: list[int] = []
        rng = random.Random(3)

        def shuffle() -> None:  # the file is gone for 2 ms every 50-150 ms
            while not done.wait(rng.uniform(0.05, 0.15)):
                os.replace(victim, moved)
                done.wait(0.002)
                os.replace(moved, victim)
                swaps.append(1)

        shuffler = threading.Thread(target=shuffle)
        shuffler.start()
        failures = 0
        try:
            for _ in range(300):
                try:
                    store.sql("SELECT count(*) FROM logs")
                except QueryError:
                    failures += 1
        finally:
            done.set()
            shuffler.join()
        retries = store.retries
    assert len(swaps) > 10
    assert retries > 0  # queries did meet the vanished file...
    assert failures == 0  # ...and ran again rather than fail


def test_mallard_compact_command(root: Path) -> None:
    writer = Writer(root)
    writer.write("spans", [_span(1, 1, _ns(datetime.now(UTC) - timedelta(hours=3)))])
    writer.write("spans", [_span(1, 2, _ns(datetime.now(UTC) - timedelta(hours=3)) + 5, parent=1)])
    done = run_cli(["compact", "--data", str(root)])
    assert done.returncode == 0, done.stderr
    assert "compacted 1 partitions (2 files -> 1, 2 rows, 1 trace rows)" in done.stdout
    bad = run_cli(["compact", "--data", str(root), "--retention", "spans=forever"])
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "mallard compact: error: not a duration: 'forever' (e.g. 7d, 12h, 30m)"
    )
    missing = run_cli(["compact", "--data", str(root / "nope")])
    assert missing.returncode == 1 and "is not a directory" in missing.stderr
    dropped = run_cli(["compact", "--data", str(root), "--retention", "1h", "--no-compact"])
    assert dropped.returncode == 0 and "dropped 3 partitions" in dropped.stdout  # spans, traces, index


def test_mallard_serve_compacts_closed_hours_while_it_ingests(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--compact-interval", "0.5")
    try:
        start = _ns(datetime.now(UTC) - timedelta(hours=2))
        for batch in range(4):
            request = ExportTraceServiceRequest()
            resource = request.resource_spans.add()
            resource.resource.attributes.append(kv("service.name", "checkout"))
            spans = resource.scope_spans.add().spans
            for i in range(10):
                span = spans.add(
                    name=f"op{i}",
                    start_time_unix_nano=start + batch * 1000 + i,
                    end_time_unix_nano=start + 10**6,
                )
                span.trace_id = (batch + 1).to_bytes(16, "big")
                span.span_id = (batch * 100 + i + 1).to_bytes(8, "big")
                if i:
                    span.parent_span_id = (batch * 100 + 1).to_bytes(8, "big")
            post_otlp(server, "traces", request.SerializeToString())
        wait_for_rows(server.data, "SELECT * FROM traces WHERE span_count = 10", 4)
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while datetime.now(UTC) < deadline:
            names = _files(server.data, "spans")
            if names and all(name.startswith("c-") for name in names) and _files(server.data, "traces"):
                break
        assert all(name.startswith("c-") for name in _files(server.data, "spans")), _files(
            server.data, "spans"
        )
        with Store(server.data) as store:
            rows = store.sql(
                "SELECT root_operation, span_count, services FROM traces ORDER BY trace_id"
            ).to_pylist()
        assert rows == [{"root_operation": "op0", "span_count": 10, "services": ["checkout"]}] * 4
    finally:
        server.stop()


@pytest.mark.parametrize("compacted", [False, True])
def test_search_finds_the_traces_with_the_newest_matching_spans(root: Path, compacted: bool) -> None:
    """Search reads the range backwards in growing windows; the answer is the same as reading it all."""
    writer = Writer(root)
    base = _ns(NOW.replace(hour=0, minute=0))
    rng = random.Random(11)
    expected_first: dict[str, int] = {}
    for trace in range(1, 60):
        hour = rng.randrange(12)
        start = base + hour * HOUR_NS + rng.randrange(HOUR_NS // 2)
        matching = trace % 3 == 0
        rows = [_span(trace, trace * 10, start, service="edge")]
        # the matching child comes up to 3 hours after the root
        child_start = start + rng.randrange(3 * HOUR_NS) if matching else start + 5
        rows.append(
            _span(trace, trace * 10 + 1, child_start, parent=trace * 10, service="pay" if matching else "db")
        )
        for row in rows:
            writer.write("spans", [row])
        if matching and child_start < _ns(NOW):
            expected_first[f"{trace:032x}"] = child_start
    if compacted:
        maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
    newest = sorted(expected_first, key=lambda trace_id: -expected_first[trace_id])
    with Store(root) as store:
        for limit in (1, 3, 7, 50):
            found = search_traces(store, start=NOW - timedelta(hours=13), end=NOW, service="pay", limit=limit)
            chosen = set(newest[:limit])
            assert {summary.trace_id for summary in found} == chosen
            starts = [summary.start_time_unix_nano for summary in found]
            assert starts == sorted(starts, reverse=True)
            assert all(summary.span_count == 2 and summary.root_service == "edge" for summary in found)


def test_counter_series_are_the_same_after_compaction(root: Path) -> None:
    """Compacted metrics carry a series id; rate and increase read it instead of hashing the maps."""
    writer = Writer(root)
    start = _ns(NOW.replace(hour=8, minute=0))
    rows = []
    for host, restart_at in (("a", 7), ("b", None)):
        value, started = 0.0, start
        for k in range(16):  # one point every 15 minutes from 08:00 to 11:45; host a restarts
            time_ns = start + k * 15 * 60 * 10**9
            if k == restart_at:
                value, started = 0.0, time_ns - 10**9
            value += 10 + k
            rows.append(
                {
                    "metric_name": "requests",
                    "metric_type": "sum",
                    "service_name": "shop",
                    "time": EPOCH + timedelta(microseconds=time_ns // 1000),
                    "time_unix_nano": time_ns,
                    "start_time_unix_nano": started,
                    "temporality": "cumulative",
                    "is_monotonic": True,
                    "value": value,
                    "flags": 0,
                    "attributes": [("host", host)],
                    "resource_attributes": [("service.name", "shop")],
                }
            )
    for chunk in range(0, len(rows), 5):
        writer.write("metrics", rows[chunk : chunk + 5])
    window = {"start": NOW.replace(hour=8, minute=0), "end": NOW.replace(hour=12, minute=0), "step_s": 3600}
    with Store(root) as store:
        before = {
            (agg, keys): metric_series(store, "requests", agg=agg, group_by=keys, **window)
            for agg in ("rate", "increase")
            for keys in ((), ("host",))
        }
        maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
        assert all(name.startswith("c-") for name in _files(root, "metrics"))
        assert store.sql("SELECT count(DISTINCT series_id) AS n FROM metrics").column(0).to_pylist() == [2]
        for (agg, keys), series in before.items():
            assert metric_series(store, "requests", agg=agg, group_by=keys, **window) == series
    (total,) = before["increase", ()]
    assert [value for _, value in total.points] == [
        2 * (10 + 11 + 12 + 13),  # the counters started at 08:00: their first value counts
        2 * (14 + 15 + 16 + 17),  # host a restarted at k=7: its 17 counts from zero, not 17 - 91
        2 * (18 + 19 + 20 + 21),
        2 * (22 + 23 + 24 + 25),
    ]


def test_get_trace_reads_the_hours_that_hold_the_trace_and_survives_a_dropped_hour(root: Path) -> None:
    _three_hour_store(root)
    maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
    with Store(root) as store:
        trace = get_trace(store, f"{1:032x}")
        assert trace is not None and [span.span_id for span in trace.spans] == [
            f"{1:016x}",
            f"{2:016x}",
            f"{3:016x}",
        ]
        # The 11:00 spans go (as retention would drop them) while its `traces` rows stay: the lookup
        # still names the hour, whose files are gone; the rest of the trace is still found.
        (root / "v1/spans/date=2026-11-22/hour=11").rename(root / "gone")
        trace = get_trace(store, f"{1:032x}")
        assert trace is not None and [span.span_id for span in trace.spans] == [f"{1:016x}", f"{2:016x}"]
        assert get_trace(store, f"{2:032x}") is None  # all its spans were in 11:00


def test_search_without_the_traces_rows_of_a_compacted_hour_finds_no_summaries(root: Path) -> None:
    """Between retention dropping an hour's `traces` rows and its spans, a search that finds spans of
    that hour has no hours to read summaries from: it answers no traces instead of failing."""
    _three_hour_store(root)
    maintain(root, now=NOW, settings=CompactionSettings(fsync=False))
    (root / "v1/traces").rename(root / "gone")
    with Store(root) as store:
        assert search_traces(store, start=NOW - timedelta(hours=3), end=NOW, service="solo") == []
