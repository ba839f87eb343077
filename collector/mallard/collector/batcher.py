"""Buffers acknowledged rows per table and flushes them to Parquet by size or age.

Rows arrive in WAL order (`accept` is called by the WAL thread), so each flush of a table holds every
record of that table between its first and last LSN: the file names can state the range they cover.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from mallard.collector.telemetry import SelfMetrics

logger = logging.getLogger(__name__)


class Sink(Protocol):
    def write(
        self,
        table: str,
        batches: Sequence[pa.RecordBatch],
        *,
        writer: str,
        first_lsn: int,
        last_lsn: int,
    ) -> list[Path]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BatcherSettings:
    flush_rows: int = 250_000
    flush_bytes: int = 64 << 20
    flush_interval_s: float = 2.0
    retry_interval_s: float = 1.0


Entries = list[tuple[int, pa.RecordBatch]]


@dataclass(slots=True)
class _Buffer:
    entries: Entries = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    since: float = 0.0
    # A flush being written, or one that failed and will be retried exactly as it was: the same
    # entries, so the same WAL range, so the sink can skip the partitions it already committed.
    flushing: Entries = field(default_factory=list)
    flushing_bytes: int = 0
    in_flight: bool = False
    failing_until: float = 0.0

    def first_pending_lsn(self) -> int | None:
        if self.flushing:
            return self.flushing[0][0]
        return self.entries[0][0] if self.entries else None


class Batcher:
    """Per-table buffers and one flusher thread."""

    def __init__(
        self,
        sink: Sink,
        *,
        writer: str,
        tables: Sequence[str],
        settings: BatcherSettings,
        metrics: SelfMetrics,
        on_committed: Callable[[int], object],
    ) -> None:
        self._sink = sink
        self._writer = writer
        self._settings = settings
        self._metrics = metrics
        self._on_committed = on_committed
        self._buffers = {table: _Buffer() for table in tables}
        self._cond = threading.Condition()
        self._last_accepted = 0
        self._buffered_bytes = 0
        self._closing = False
        self._healthy = True
        self._thread = threading.Thread(target=self._run, name="mallard-flush", daemon=True)

    def start(self, *, last_lsn: int) -> None:
        self._last_accepted = last_lsn
        self._thread.start()

    @property
    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    @property
    def healthy(self) -> bool:
        return self._healthy

    def accept(self, lsn: int, table: str, batch: pa.RecordBatch) -> None:
        """Takes the rows of WAL record `lsn`; must be called in LSN order."""
        size = batch.nbytes
        with self._cond:
            buffer = self._buffers[table]
            if not buffer.entries:
                buffer.since = time.monotonic()
            buffer.entries.append((lsn, batch))
            buffer.rows += batch.num_rows
            buffer.bytes += size
            self._buffered_bytes += size
            self._last_accepted = lsn
            if buffer.rows >= self._settings.flush_rows or buffer.bytes >= self._settings.flush_bytes:
                self._cond.notify()

    def committed_lsn(self) -> int:
        """Every WAL record at or below this LSN is in Parquet."""
        with self._cond:
            firsts = [lsn for b in self._buffers.values() if (lsn := b.first_pending_lsn()) is not None]
            return (min(firsts) if firsts else self._last_accepted + 1) - 1

    def _due(self, now: float) -> str | None:
        for table, buffer in self._buffers.items():
            if buffer.in_flight or now < buffer.failing_until:
                continue
            if buffer.flushing:  # a failed flush whose retry time has come
                return table
            if not buffer.entries:
                continue
            if (
                self._closing
                or buffer.rows >= self._settings.flush_rows
                or buffer.bytes >= self._settings.flush_bytes
                or now - buffer.since >= self._settings.flush_interval_s
            ):
                return table
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                table = self._due(time.monotonic())
                while table is None:
                    if self._closing and not any(b.entries or b.flushing for b in self._buffers.values()):
                        return
                    self._cond.wait(0.05)
                    table = self._due(time.monotonic())
                    if self._closing and table is None and self._failing_only():
                        return
                buffer = self._buffers[table]
                if not buffer.flushing:
                    buffer.flushing, buffer.flushing_bytes = buffer.entries, buffer.bytes
                    buffer.entries, buffer.rows, buffer.bytes = [], 0, 0
                buffer.in_flight = True
                entries = buffer.flushing
            ok = self._flush(table, entries)
            with self._cond:
                buffer.in_flight = False
                if ok:
                    self._buffered_bytes -= buffer.flushing_bytes
                    buffer.flushing, buffer.flushing_bytes = [], 0
                else:
                    buffer.failing_until = time.monotonic() + self._settings.retry_interval_s
            if ok:
                try:
                    self._on_committed(self.committed_lsn())
                except Exception:  # e.g. a WAL segment that cannot be deleted: retried after the next flush
                    logger.exception("releasing committed WAL segments failed")

    def _failing_only(self) -> bool:
        """While closing: every table with rows has just failed (give up instead of spinning)."""
        now = time.monotonic()
        return all(
            (not b.entries and not b.flushing) or now < b.failing_until for b in self._buffers.values()
        )

    def _flush(self, table: str, entries: list[tuple[int, pa.RecordBatch]]) -> bool:
        started = time.monotonic()
        rows = sum(batch.num_rows for _, batch in entries)
        try:
            self._sink.write(
                table,
                [batch for _, batch in entries],
                writer=self._writer,
                first_lsn=entries[0][0],
                last_lsn=entries[-1][0],
            )
        except Exception:  # a failing disk must not kill the flusher: retry, count, stay unready
            logger.exception("flush of %d %s rows failed; retrying", rows, table)
            self._metrics.add("mallard_flushes_total", table=table, outcome="error")
            self._healthy = False
            return False
        self._healthy = True
        self._metrics.add("mallard_flushes_total", table=table, outcome="ok")
        self._metrics.add("mallard_flush_seconds_sum", time.monotonic() - started, table=table)
        self._metrics.add("mallard_committed_rows_total", rows, table=table)
        return True

    def close(self) -> None:
        """Flushes everything buffered (one more try for a failing table) and stops the thread."""
        with self._cond:
            self._closing = True
            for buffer in self._buffers.values():
                buffer.failing_until = 0.0
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()
