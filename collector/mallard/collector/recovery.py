"""Start-up replay: commits what a write-ahead log holds that is not yet in Parquet, exactly once.

A WAL record is skipped, per hour partition, when a committed file of the same writer names a WAL
range holding it (a collector file in its name, a compacted file in its footer); every other row is
written again, in chunks, with the chunk's range in the name.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa

from mallard.collector.arrow import TABLE_OF_SIGNAL, Limits, convert
from mallard.collector.batcher import Sink
from mallard.collector.errors import PermanentError
from mallard.collector.pricing import PriceTable, load_prices
from mallard.collector.wal import WalRecord, WriteAheadLog
from mallard.storage.layout import Partition, committed_ranges
from mallard.storage.schema import TABLES
from mallard.storage.writer import split_by_hour

logger = logging.getLogger(__name__)

_CHUNK_BYTES: Final = 64 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryReport:
    records: int
    rows: int
    skipped_rows: int
    quarantined: int
    next_lsn: int


class _Coverage:
    """Which (partition, LSN) pairs of one writer are already committed."""

    def __init__(self, root: Path, writer: str) -> None:
        self._ranges: dict[Partition, list[tuple[int, int]]] = defaultdict(list)
        self.max_lsn = 0
        for table in TABLES:
            for partition, owner, first, last in committed_ranges(root, table):
                if owner == writer:
                    self._ranges[partition].append((first, last))
                    self.max_lsn = max(self.max_lsn, last)

    def covers(self, partition: Partition, lsn: int) -> bool:
        return any(first <= lsn <= last for first, last in self._ranges.get(partition, ()))


def _chunks(replayed: Iterable[WalRecord]) -> Iterator[list[WalRecord]]:
    """The replayed records in runs of about `_CHUNK_BYTES` of payload (the last one may be smaller)."""
    chunk: list[WalRecord] = []
    chunk_bytes = 0
    for record in replayed:
        chunk.append(record)
        chunk_bytes += len(record.payload)
        if chunk_bytes >= _CHUNK_BYTES:
            yield chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        yield chunk


def recover(
    wal: WriteAheadLog,
    *,
    root: Path,
    writer: str,
    sink: Sink,
    limits: Limits,
    quarantine: Path,
    prices: PriceTable | None = None,
) -> RecoveryReport:
    """Replays `wal` into `sink`; afterwards `wal.next_lsn` is set, and every replayed record is committed.

    Records are converted as live ingest converts them, spans priced by `prices` (None: the built-in
    table)."""
    coverage = _Coverage(root, writer)
    prices = load_prices() if prices is None else prices
    records = rows = skipped = quarantined = 0
    for chunk in _chunks(wal.replay(min_next_lsn=coverage.max_lsn + 1)):
        records += len(chunk)
        r, s, q = _commit_chunk(
            chunk,
            coverage=coverage,
            writer=writer,
            sink=sink,
            limits=limits,
            prices=prices,
            quarantine=quarantine,
        )
        rows, skipped, quarantined = rows + r, skipped + s, quarantined + q
    if records:
        logger.info(
            "replayed %d WAL records of %s: %d rows written, %d already committed",
            records,
            writer,
            rows,
            skipped,
        )
    return RecoveryReport(
        records=records, rows=rows, skipped_rows=skipped, quarantined=quarantined, next_lsn=wal.next_lsn
    )


def _commit_chunk(
    chunk: Iterable[WalRecord],
    *,
    coverage: _Coverage,
    writer: str,
    sink: Sink,
    limits: Limits,
    prices: PriceTable,
    quarantine: Path,
) -> tuple[int, int, int]:
    by_table: dict[str, list[pa.Table]] = defaultdict(list)
    rows = skipped = quarantined = 0
    lsns = []
    for record in chunk:
        lsns.append(record.lsn)
        table = TABLE_OF_SIGNAL[record.signal]
        try:
            converted = convert(
                record.signal,
                record.payload,
                limits=limits,
                prices=prices,
                received_unix_nano=record.received_unix_nano,
            )
        except PermanentError as exc:
            quarantined += 1
            quarantine.mkdir(parents=True, exist_ok=True)
            (quarantine / f"{writer}-{record.lsn:016d}.{record.signal}.pb").write_bytes(record.payload)
            logger.error("WAL record %d of %s no longer converts (%s): quarantined", record.lsn, writer, exc)
            continue
        for partition, part_rows in split_by_hour(table, pa.Table.from_batches([converted.batch])):
            if coverage.covers(partition, record.lsn):
                skipped += part_rows.num_rows
            else:
                by_table[table].append(part_rows)
                rows += part_rows.num_rows
    for table, tables in by_table.items():
        batches = pa.concat_tables(tables).to_batches()
        sink.write(table, batches, writer=writer, first_lsn=min(lsns), last_lsn=max(lsns))
    return rows, skipped, quarantined
