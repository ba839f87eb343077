"""Start-up replay against real Parquet, crash window by crash window, and the Batcher in front of it."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from harness import query
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from mallard.collector import recovery
from mallard.collector.arrow import CONVERTERS, Limits
from mallard.collector.batcher import Batcher, BatcherSettings
from mallard.collector.recovery import RecoveryReport, recover
from mallard.collector.telemetry import SelfMetrics
from mallard.collector.wal import WriteAheadLog
from mallard.storage import StorageError
from mallard.storage.layout import list_part_files, tmp_dir, wal_dir
from mallard.storage.schema import TABLES
from mallard.storage.writer import ParquetSink, clean_tmp

WRITER = "w0"
FIRST_HOUR = 472_222  # 2023-11-14 22:00 UTC, in hours since the epoch
HOURS = (22, 23)
TIMEOUT_S = 10
ID_SQL = {
    "spans": "select span_id as id from spans",
    "logs": "select body as id from logs",
    "metrics": "select attributes['point.id'] as id from metrics",
}


# -- OTLP payloads: item i lies in hour 22 when i is odd, in hour 23 when it is even -----------------
def time_of(i: int) -> int:
    return (FIRST_HOUR + (i + 1) % 2) * 3_600_000_000_000 + i * 1_000_000


def resource() -> Resource:
    res = Resource()
    attribute = res.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "recovery-test"
    return res


def spans_payload(ids: Sequence[int]) -> bytes:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.CopyFrom(resource())
    spans = resource_spans.scope_spans.add().spans
    for i in ids:
        span = spans.add()
        span.trace_id, span.span_id, span.name = i.to_bytes(16, "big"), i.to_bytes(8, "big"), f"op-{i}"
        span.start_time_unix_nano, span.end_time_unix_nano = time_of(i), time_of(i) + 1_000
    return request.SerializeToString()


def logs_payload(ids: Sequence[int]) -> bytes:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.CopyFrom(resource())
    records = resource_logs.scope_logs.add().log_records
    for i in ids:
        record = records.add()
        record.time_unix_nano, record.body.string_value = time_of(i), f"log-{i}"
    return request.SerializeToString()


def metrics_payload(ids: Sequence[int]) -> bytes:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.CopyFrom(resource())
    metric = resource_metrics.scope_metrics.add().metrics.add()
    metric.name = "recovery.gauge"
    for i in ids:
        point = metric.gauge.data_points.add()
        point.time_unix_nano, point.as_int = time_of(i), i
        attribute = point.attributes.add()
        attribute.key, attribute.value.string_value = "point.id", str(i)
    return request.SerializeToString()


def stored_id(table: str, value: str) -> int:
    if table == "spans":
        return int(value, 16)
    return int(value.removeprefix("log-"))


def stored_ids(root: Path, table: str) -> Counter[int]:
    return Counter(stored_id(table, v) for v in query(root, ID_SQL[table]).column("id").to_pylist())


@dataclass(frozen=True, slots=True)
class Logged:
    lsn: int
    signal: str
    payload: bytes

    def batch(self) -> pa.RecordBatch:
        return CONVERTERS[self.signal](self.payload).batch


# The WAL most tests replay: spans 1-20 in two records, logs 1-10 and metrics 1-10, each over two hours.
RECORDS = (
    Logged(1, "traces", spans_payload(range(1, 11))),
    Logged(2, "logs", logs_payload(range(1, 11))),
    Logged(3, "metrics", metrics_payload(range(1, 11))),
    Logged(4, "traces", spans_payload(range(11, 21))),
)
EXPECTED = {"spans": set(range(1, 21)), "logs": set(range(1, 11)), "metrics": set(range(1, 11))}


def write_wal(root: Path, records: Sequence[Logged] = RECORDS) -> None:
    wal = WriteAheadLog(wal_dir(root, WRITER), fsync="never", on_commit=lambda *_: None)
    assert list(wal.replay()) == []
    wal.start()
    for record in records:
        lsn = wal.append(record.signal, record.payload, received_unix_nano=1, item=None).result(TIMEOUT_S)
        assert lsn == record.lsn
    wal.close()


def replay(root: Path, sink: ParquetSink | None = None) -> RecoveryReport:
    """What the collector does on start-up, on a fresh WriteAheadLog over the same directory."""
    wal = WriteAheadLog(wal_dir(root, WRITER), on_commit=lambda *_: None)
    return recover(
        wal,
        root=root,
        writer=WRITER,
        sink=sink or ParquetSink(root),
        limits=Limits(),
        quarantine=root / "wal" / "quarantine",
    )


def assert_exactly_once(root: Path, expected: dict[str, set[int]] = EXPECTED) -> None:
    for table, ids in expected.items():
        found = stored_ids(root, table)
        assert set(found) == ids, table
        assert max(found.values(), default=1) == 1, (
            f"duplicate {table}: {[i for i, n in found.items() if n > 1]}"
        )


def committed_files(root: Path) -> set[Path]:
    return {part.path for table in TABLES for part in list_part_files(root, table)}


def hour_rows(batch: pa.RecordBatch, hour: int) -> pa.RecordBatch:
    micros = pc.cast(batch.column("start_time"), pa.int64())
    return batch.filter(pc.equal(pc.divide(micros, 3_600_000_000), FIRST_HOUR + HOURS.index(hour)))


# -- recovery ---------------------------------------------------------------------------------------
def test_nothing_committed_replay_writes_everything_once(tmp_path: Path) -> None:
    write_wal(tmp_path)
    report = replay(tmp_path)
    assert (report.records, report.rows, report.skipped_rows, report.quarantined) == (4, 40, 0, 0)
    assert report.next_lsn == 5
    assert_exactly_once(tmp_path)
    spans = list_part_files(tmp_path, "spans")
    assert sorted(p.partition.hour for p in spans) == list(HOURS)
    assert {(p.writer, p.first_lsn, p.last_lsn) for p in spans} == {(WRITER, 1, 4)}

    files = committed_files(tmp_path)
    again = replay(tmp_path)  # a second crash right after the first replay
    assert (again.rows, again.skipped_rows) == (0, 40)
    assert committed_files(tmp_path) == files
    assert_exactly_once(tmp_path)


@pytest.mark.parametrize("window", ["second_file_of_a_flush_missing", "flush_of_one_record_one_hour"])
def test_partly_committed_replay_writes_only_what_is_missing(tmp_path: Path, window: str) -> None:
    write_wal(tmp_path)
    sink = ParquetSink(tmp_path)
    first, fourth = RECORDS[0].batch(), RECORDS[3].batch()
    if window == "second_file_of_a_flush_missing":
        # the batcher flushed spans of LSN 1-4: the hour-22 file was renamed into place, then the crash
        written = sink.write("spans", [first, fourth], writer=WRITER, first_lsn=1, last_lsn=4)
        (late,) = [path for path in written if "hour=23" in str(path)]
        late.unlink()
        expected_rows, expected_skipped = 30, 10
    else:
        sink.write("spans", [hour_rows(first, 22)], writer=WRITER, first_lsn=1, last_lsn=1)
        expected_rows, expected_skipped = 35, 5
    before = committed_files(tmp_path)

    report = replay(tmp_path)
    assert (report.rows, report.skipped_rows) == (expected_rows, expected_skipped)
    assert_exactly_once(tmp_path)
    assert before <= committed_files(tmp_path), "replay adds files, it never rewrites committed ones"
    counts = query(tmp_path, "select hour, count(*) as n from spans group by hour order by hour")
    assert counts.to_pylist() == [{"hour": 22, "n": 10}, {"hour": 23, "n": 10}]


def test_everything_committed_replay_writes_nothing(tmp_path: Path) -> None:
    write_wal(tmp_path)
    sink = ParquetSink(tmp_path)
    sink.write("spans", [RECORDS[0].batch(), RECORDS[3].batch()], writer=WRITER, first_lsn=1, last_lsn=4)
    sink.write("logs", [RECORDS[1].batch()], writer=WRITER, first_lsn=2, last_lsn=2)
    sink.write("metrics", [RECORDS[2].batch()], writer=WRITER, first_lsn=3, last_lsn=3)
    files = committed_files(tmp_path)

    report = replay(tmp_path)
    assert (report.records, report.rows, report.skipped_rows) == (4, 0, 40)
    assert committed_files(tmp_path) == files
    assert_exactly_once(tmp_path)


def test_files_of_another_writer_do_not_count_as_committed(tmp_path: Path) -> None:
    write_wal(tmp_path)
    ParquetSink(tmp_path).write("logs", [RECORDS[1].batch()], writer="w1", first_lsn=2, last_lsn=2)
    report = replay(tmp_path)
    assert (report.rows, report.skipped_rows) == (40, 0)
    assert stored_ids(tmp_path, "logs") == Counter({i: 2 for i in range(1, 11)})  # w1's copy, and ours


def test_an_emptied_wal_still_continues_above_what_parquet_holds(tmp_path: Path) -> None:
    write_wal(tmp_path)
    replay(tmp_path)
    shutil.rmtree(wal_dir(tmp_path, WRITER))
    report = replay(tmp_path)
    assert (report.records, report.next_lsn) == (0, 5)


def test_a_crash_during_replay_is_replayed_again_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of one record each; the disk fails on the third write, as a crash would stop it there."""
    monkeypatch.setattr(recovery, "_CHUNK_BYTES", 1)
    write_wal(tmp_path)

    class FailingSink(ParquetSink):
        writes = 0

        def write(self, table: str, batches: Sequence[pa.RecordBatch], **kw: object) -> list[Path]:
            FailingSink.writes += 1
            if FailingSink.writes == 3:
                raise StorageError("disk gone")
            return super().write(table, batches, **kw)  # type: ignore[arg-type]

    with pytest.raises(StorageError):
        replay(tmp_path, FailingSink(tmp_path))
    assert {p.first_lsn for p in list_part_files(tmp_path, "spans")} == {1}
    assert set(stored_ids(tmp_path, "logs")) == set(range(1, 11))
    assert not list_part_files(tmp_path, "metrics")

    report = replay(tmp_path)
    assert (report.rows, report.skipped_rows) == (20, 20)
    assert_exactly_once(tmp_path)


def test_orphan_tmp_files_are_invisible_and_cleaned_per_writer(tmp_path: Path) -> None:
    write_wal(tmp_path)
    replay(tmp_path)
    committed = sorted(committed_files(tmp_path))[0]
    tmp = tmp_dir(tmp_path)
    orphans = {
        writer: tmp / f"{writer}-0000000000000005-0000000000000009-0badf00d.parquet.spans-2023-11-14-22.tmp"
        for writer in (WRITER, "w1", "w01", "w00")
    }
    for path in orphans.values():  # complete Parquet files, as a crash before the rename leaves them
        shutil.copyfile(committed, path)
    assert_exactly_once(tmp_path)  # readers never see what is under tmp/

    assert clean_tmp(tmp_path, WRITER) == 1
    assert not orphans[WRITER].exists()
    assert all(orphans[w].exists() for w in ("w1", "w01", "w00")), "other writers' files are theirs"
    assert clean_tmp(tmp_path, WRITER) == 0


def test_a_record_that_no_longer_converts_is_quarantined_not_fatal(tmp_path: Path) -> None:
    garbage = b"\xff\x00not protobuf"
    write_wal(
        tmp_path,
        [
            Logged(1, "traces", spans_payload(range(1, 11))),
            Logged(2, "traces", garbage),
            Logged(3, "logs", logs_payload(range(1, 11))),
        ],
    )
    report = replay(tmp_path)
    assert (report.records, report.rows, report.quarantined) == (3, 20, 1)
    assert report.next_lsn == 4
    quarantined = tmp_path / "wal" / "quarantine" / f"{WRITER}-{2:016d}.traces.pb"
    assert quarantined.read_bytes() == garbage
    assert_exactly_once(tmp_path, {"spans": set(range(1, 11)), "logs": set(range(1, 11)), "metrics": set()})


# -- the Batcher ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Write:
    table: str
    lsns: list[int]
    first_lsn: int
    last_lsn: int


class MemorySink:
    """A downstream stage in memory: records each write; can fail the first `failures` writes, or hold
    every write until `release()` lets it through."""

    def __init__(self, *, failures: int = 0, gated: bool = False) -> None:
        self.writes: list[Write] = []
        self.attempts = 0
        self._failures = failures
        self._gate = threading.Semaphore(0) if gated else None
        self._cond = threading.Condition()

    def write(
        self, table: str, batches: Sequence[pa.RecordBatch], *, writer: str, first_lsn: int, last_lsn: int
    ) -> list[Path]:
        with self._cond:
            self.attempts += 1
            self._cond.notify_all()
        if self._gate is not None:
            assert self._gate.acquire(timeout=TIMEOUT_S)
        with self._cond:
            if self._failures:
                self._failures -= 1
                raise StorageError("disk full")
            lsns = [lsn for batch in batches for lsn in batch.column("lsn").to_pylist()]
            self.writes.append(Write(table, lsns, first_lsn, last_lsn))
            self._cond.notify_all()
        return []

    def release(self) -> None:
        assert self._gate is not None
        self._gate.release()

    def wait_until(self, done: Callable[[MemorySink], bool]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: done(self), TIMEOUT_S)


def rows(lsn: int, count: int = 1) -> pa.RecordBatch:
    """`count` rows tagged with the LSN of the WAL record they came from."""
    return pa.record_batch({"lsn": [lsn] * count})


def make_batcher(
    sink: MemorySink | ParquetSink,
    *,
    tables: Sequence[str] = ("spans", "logs"),
    committed: list[int] | None = None,
    metrics: SelfMetrics | None = None,
    **settings: Any,
) -> Batcher:
    defaults = {"flush_rows": 1_000_000, "flush_bytes": 1 << 40, "flush_interval_s": 3600.0}
    return Batcher(
        sink,
        writer=WRITER,
        tables=tables,
        settings=BatcherSettings(**{**defaults, **settings}),
        metrics=metrics or SelfMetrics(),
        on_committed=(committed if committed is not None else []).append,
    )


def test_batcher_flushes_by_age(tmp_path: Path) -> None:
    sink = MemorySink()
    batcher = make_batcher(sink, flush_interval_s=0.05)
    batcher.start(last_lsn=0)
    batcher.accept(1, "spans", rows(1, 3))
    batcher.accept(2, "logs", rows(2))
    sink.wait_until(lambda s: len(s.writes) == 2)
    batcher.close()
    assert sorted(sink.writes, key=lambda w: w.first_lsn) == [
        Write("spans", [1, 1, 1], 1, 1),
        Write("logs", [2], 2, 2),
    ]
    assert batcher.committed_lsn() == 2


def test_batcher_flushes_by_rows_and_by_bytes(tmp_path: Path) -> None:
    by_rows = MemorySink()
    batcher = make_batcher(by_rows, flush_rows=5)
    batcher.start(last_lsn=0)
    for lsn in range(1, 6):
        batcher.accept(lsn, "spans", rows(lsn))
    by_rows.wait_until(lambda s: len(s.writes) == 1)
    assert by_rows.writes == [Write("spans", [1, 2, 3, 4, 5], 1, 5)], "not one row earlier"
    batcher.close()

    by_bytes = MemorySink()
    batcher = make_batcher(by_bytes, flush_bytes=2 * rows(0, 10).nbytes)
    batcher.start(last_lsn=0)
    batcher.accept(1, "logs", rows(1, 10))
    batcher.accept(2, "logs", rows(2, 10))
    by_bytes.wait_until(lambda s: len(s.writes) == 1)
    assert by_bytes.writes == [Write("logs", [1] * 10 + [2] * 10, 1, 2)]
    batcher.close()


def test_a_failing_sink_loses_nothing_and_keeps_the_order(tmp_path: Path) -> None:
    sink, metrics, committed = MemorySink(failures=3), SelfMetrics(), []
    batcher = make_batcher(sink, metrics=metrics, committed=committed, flush_rows=2, retry_interval_s=0.01)
    batcher.start(last_lsn=0)
    batcher.accept(1, "spans", rows(1))
    batcher.accept(2, "spans", rows(2))
    sink.wait_until(lambda s: s.attempts >= 1)
    for lsn in range(3, 7):  # more rows arrive while the disk fails
        batcher.accept(lsn, "spans", rows(lsn))
    sink.wait_until(lambda s: sum(len(w.lsns) for w in s.writes) == 6)
    batcher.close()

    assert [lsn for w in sink.writes for lsn in w.lsns] == [1, 2, 3, 4, 5, 6]
    assert all((w.first_lsn, w.last_lsn) == (w.lsns[0], w.lsns[-1]) for w in sink.writes)
    assert sink.writes[0] == Write("spans", [1, 2], 1, 2), "a failed flush is retried exactly as it was"
    assert metrics.value("mallard_flushes_total", table="spans", outcome="error") == 3
    assert batcher.healthy
    assert batcher.committed_lsn() == 6
    assert committed[-1] == 6


def test_committed_lsn_is_below_every_row_not_yet_written(tmp_path: Path) -> None:
    sink, committed = MemorySink(gated=True), []
    batcher = make_batcher(sink, committed=committed, flush_rows=2)
    batcher.start(last_lsn=10)  # recovery committed everything up to 10
    assert batcher.committed_lsn() == 10

    batcher.accept(11, "spans", rows(11))
    batcher.accept(12, "logs", rows(12))
    assert batcher.committed_lsn() == 10
    batcher.accept(13, "spans", rows(13))  # spans are due: 11 and 13 go to the sink, which holds them
    sink.wait_until(lambda s: s.attempts == 1)
    batcher.accept(14, "logs", rows(14))
    assert batcher.committed_lsn() == 10, "11 is being written, not yet written"

    sink.release()
    sink.wait_until(lambda s: s.attempts == 2)  # spans are in; the logs flush (12, 14) is held
    assert batcher.committed_lsn() == 11
    sink.release()
    sink.wait_until(lambda s: len(s.writes) == 2)
    batcher.close()
    assert batcher.committed_lsn() == 14
    assert committed == [11, 14]
    assert sink.writes == [Write("spans", [11, 13], 11, 13), Write("logs", [12, 14], 12, 14)]


def test_close_flushes_everything_and_gives_up_on_a_dead_sink(tmp_path: Path) -> None:
    sink, committed = MemorySink(), []
    batcher = make_batcher(sink, committed=committed)
    batcher.start(last_lsn=0)
    for lsn in range(1, 5):
        batcher.accept(lsn, ("spans", "logs")[lsn % 2], rows(lsn))
    batcher.close()
    assert sorted(sink.writes, key=lambda w: w.first_lsn) == [
        Write("logs", [1, 3], 1, 3),
        Write("spans", [2, 4], 2, 4),
    ]
    assert batcher.committed_lsn() == 4
    assert committed[-1] == 4

    dead = MemorySink(failures=1_000)
    batcher = make_batcher(dead)
    batcher.start(last_lsn=0)
    batcher.accept(1, "spans", rows(1))
    batcher.close()  # one more try, then it returns instead of retrying forever
    assert (dead.attempts, dead.writes) == (1, [])
    assert batcher.committed_lsn() == 0, "nothing written, nothing may be released from the WAL"
    assert not batcher.healthy


def test_batcher_files_name_their_wal_range_so_replay_skips_them(tmp_path: Path) -> None:
    committed: list[int] = []
    batcher = make_batcher(ParquetSink(tmp_path), tables=TABLES, committed=committed)
    batcher.start(last_lsn=0)
    for record in RECORDS:
        converted = CONVERTERS[record.signal](record.payload)
        batcher.accept(record.lsn, converted.table, converted.batch)
    batcher.close()
    assert batcher.committed_lsn() == 4
    assert_exactly_once(tmp_path)
    ranges = {
        (t, p.partition.hour, p.first_lsn, p.last_lsn) for t in TABLES for p in list_part_files(tmp_path, t)
    }
    assert ranges == {
        *(("spans", h, 1, 4) for h in HOURS),
        *(("logs", h, 2, 2) for h in HOURS),
        *(("metrics", h, 3, 3) for h in HOURS),
    }

    write_wal(tmp_path)  # the same records, still in the WAL after a crash
    report = replay(tmp_path)
    assert (report.rows, report.skipped_rows) == (0, 40)
    assert_exactly_once(tmp_path)
