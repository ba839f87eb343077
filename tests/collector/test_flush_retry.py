"""A flush that fails after committing some of its hour partitions is retried without doubling rows."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
from harness import query
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from mallard.collector.arrow import spans_to_arrow
from mallard.collector.batcher import Batcher, BatcherSettings
from mallard.collector.telemetry import SelfMetrics
from mallard.storage.errors import StorageError
from mallard.storage.layout import Partition
from mallard.storage.schema import TABLES
from mallard.storage.writer import ParquetSink

HOUR_NS = 3_600_000_000_000
BASE_NS = 1_763_800_000 * 1_000_000_000 // HOUR_NS * HOUR_NS


def spans(first: int, count: int, hour: int) -> pa.RecordBatch:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(first, first + count):
        span = scope.spans.add(
            name=f"s{i}", trace_id=(i + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big")
        )
        span.start_time_unix_nano = BASE_NS + hour * HOUR_NS + i
        span.end_time_unix_nano = span.start_time_unix_nano + 1
    return spans_to_arrow(request.SerializeToString()).batch


class DiskFullOnce(ParquetSink):
    """A real sink whose second partition commit fails once, as a full disk would."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.commits = 0
        self.failed = threading.Event()

    def _commit(self, partition: Partition, rows: pa.Table, name: str) -> Path:
        self.commits += 1
        if self.commits == 2 and not self.failed.is_set():
            self.failed.set()
            raise StorageError("No space left on device (simulated)")
        return super()._commit(partition, rows, name)


def test_partly_committed_flush_is_retried_exactly_once(tmp_path: Path) -> None:
    sink = DiskFullOnce(tmp_path)
    committed: list[int] = []
    batcher = Batcher(
        sink,
        writer="w0",
        tables=TABLES,
        settings=BatcherSettings(flush_interval_s=0.05, retry_interval_s=0.05),
        metrics=SelfMetrics(),
        on_committed=committed.append,
    )
    batcher.start(last_lsn=0)
    batcher.accept(1, "spans", spans(0, 10, hour=0))
    batcher.accept(2, "spans", spans(10, 10, hour=1))  # one flush, two hour partitions
    assert sink.failed.wait(10)
    batcher.accept(3, "spans", spans(20, 5, hour=1))  # arrives while the failed flush waits to retry
    batcher.close()
    names = query(tmp_path, "select name, count(*) as n from spans group by name having n > 1")
    assert names.num_rows == 0, names.to_pylist()
    assert query(tmp_path, "select count(*) as n from spans").to_pylist() == [{"n": 25}]
    assert batcher.committed_lsn() == 3 and committed[-1] == 3
    hour1 = sorted(p.name for p in (tmp_path / "v1" / "spans").glob("date=*/hour=*/*.parquet"))
    assert len(hour1) == 3  # hour 0 and hour 1 of the retried flush, then the later one
