"""Compaction and retention: the store's maintenance, run by `mallard compact` and by `mallard serve`.

**Compaction** merges the files of each *closed* hour partition (its end at least `settle_s` ago) into
a few large files (`c-<nonce>-<index>.parquet`, up to `file_bytes` each), sorted by `COMPACT_SORT`
so that time ranges and the usual filters prune row groups, and builds the hour's rows of the
`traces` summary table from its spans. A partition is compacted again when files arrive for it later
(late data): its compacted files and the new ones are merged into new compacted files, and its
`traces` rows are built again. Each compacted file records in its footer the WAL ranges of every
collector file it replaced (`mallard.wal_coverage`), so collector recovery and flush retries still
know what is committed (`layout.committed_ranges`).

Publishing is atomic for readers that take the `ReaderLock` (`mallard.query.Store` does):

1. the new files are written under `<root>/tmp/compact-<nonce>/` and fsynced;
2. a journal naming every rename (new files in, replaced files out) is written to
   `<root>/compaction/<nonce>.json` and fsynced;
3. under the exclusive reader lock, the new files are renamed into place and the replaced ones are
   moved to `<root>/trash/<unix_s>-<nonce>/` (same relative path), and the directories are fsynced;
4. the journal is deleted.

A crash after step 2 is finished by the next run (the journal's renames are idempotent); a crash
before it leaves only the staging directory, deleted by the next run. Trash is deleted after
`grace_s`, so a compaction can be inspected or undone by moving the files back.

**Retention** drops whole hour partitions whose end is older than a table's maximum age: each one by
one rename of its directory into the trash, under the exclusive reader lock. `traces` follows
`spans` unless it has its own age.

Only one maintenance run works on a store at a time (`<root>/compaction/LOCK`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import duckdb

from mallard.storage.attribute_index import attribute_index_sql
from mallard.storage.errors import StorageError
from mallard.storage.layout import (
    COVERAGE_KEY,
    Partition,
    compacted_file_name,
    files_coverage,
    is_compacted,
    journal_dir,
    merge_ranges,
    partition_dirs,
    tmp_dir,
    trash_dir,
)
from mallard.storage.lock import ReaderLock
from mallard.storage.schema import ALL_TABLES, COMPACTED_COLUMNS, DERIVED_TABLES, SCHEMA_VERSION, TABLES
from mallard.storage.traces import trace_rows_sql
from mallard.storage.writer import fsync_path

logger = logging.getLogger(__name__)

# Row order and row-group size of compacted files. The hour partitions already prune time to the
# hour; within one, spans are ordered by trace so that a trace lookup reads one small row group per
# hour (its min/max trace id), metrics by name so that one metric's points are read alone, logs by
# time. `traces` rows are ordered by trace id (`trace_rows_sql`) in small row groups for the same
# reason.
COMPACT_SORT: Final[dict[str, tuple[str, ...]]] = {
    "spans": ("trace_id", "start_time_unix_nano"),
    "metrics": ("metric_name", "service_name", "time_unix_nano"),
    "logs": ("time_unix_nano", "service_name"),
}
ROW_GROUP_ROWS: Final[dict[str, int]] = {
    "spans": 8_192,
    "metrics": 122_880,
    "logs": 122_880,
    "traces": 2_048,
    "attribute_index": 16_384,
}
_STAGING_PREFIX: Final = "compact-"
# The SQL that builds each table derived from spans (`DERIVED_TABLES`) from a spans relation.
_DERIVED_SQL: Final[dict[str, Callable[[str], str]]] = {
    "traces": trace_rows_sql,
    "attribute_index": attribute_index_sql,
}


class MaintenanceBusy(StorageError):
    """Another compaction or retention run holds the store."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompactionSettings:
    settle_s: float = 300.0  # an hour is closed once its end is this many seconds in the past
    file_bytes: int = 512 << 20  # a compacted file is closed after about this many bytes
    memory_limit: str = "1GB"  # DuckDB spills the sort to <root>/tmp/ beyond this
    threads: int = 0  # DuckDB threads; 0: one per core
    grace_s: float = 600.0  # how long replaced and dropped files stay in the trash
    lock_timeout_s: float = 120.0  # wait for running queries before swapping files anyway
    fsync: bool = True


@dataclass(slots=True, kw_only=True)
class MaintenanceReport:
    compacted_partitions: int = 0
    files_in: int = 0
    files_out: int = 0
    rows: int = 0
    trace_rows: int = 0
    dropped_partitions: int = 0
    trash_deleted: int = 0
    seconds: float = 0.0
    compacted: list[str] = field(default_factory=list)  # relative partition dirs
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"compacted {self.compacted_partitions} partitions ({self.files_in} files -> "
            f"{self.files_out}, {self.rows} rows, {self.trace_rows} trace rows), dropped "
            f"{self.dropped_partitions} partitions, in {self.seconds:.2f} s"
        )


def maintain(
    root: Path,
    *,
    retention: Mapping[str, float] | None = None,
    settings: CompactionSettings = CompactionSettings(),
    now: datetime | None = None,
    compact: bool = True,
) -> MaintenanceReport:
    """One maintenance run: finish interrupted publishes, apply `retention` (table → maximum age in
    seconds), compact closed hours, empty old trash. Raises MaintenanceBusy or StorageError."""
    started = time.monotonic()
    root = Path(root)
    moment = now or datetime.now(UTC)
    report = MaintenanceReport()
    with _maintenance_lock(root):
        run = _Run(root=root, now=moment, reader_lock=ReaderLock(root), settings=settings, report=report)
        try:
            _finish_journals(run)
            _remove_staging(root)
            if retention:
                _apply_retention(run, retention)
            if compact:
                _compact(run)
            report.trash_deleted = _empty_trash(root, moment, settings.grace_s)
        finally:
            run.reader_lock.close()
    report.seconds = time.monotonic() - started
    return report


@contextmanager
def _maintenance_lock(root: Path) -> Iterator[None]:
    directory = journal_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MaintenanceBusy(f"another compaction or retention run is working on {root}") from None
        yield
    finally:
        os.close(fd)


# -- compaction ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Run:
    """What every step of one maintenance run works with."""

    root: Path
    now: datetime
    reader_lock: ReaderLock
    settings: CompactionSettings
    report: MaintenanceReport


def _compact(run: _Run) -> None:
    closed_before = int((run.now.timestamp() - run.settings.settle_s) // 3600)  # first hour still open
    connection = _connect(run.root, run.settings)
    try:
        for table in TABLES:
            for partition, directory in partition_dirs(run.root, table):
                if partition.epoch_hour() + 1 > closed_before:
                    continue
                _compact_partition(run, connection, partition, directory)
    finally:
        connection.close()
        shutil.rmtree(tmp_dir(run.root) / f"{_STAGING_PREFIX}spill", ignore_errors=True)


def _connect(root: Path, settings: CompactionSettings) -> duckdb.DuckDBPyConnection:
    spill = tmp_dir(root) / f"{_STAGING_PREFIX}spill"  # created by DuckDB only when a sort spills
    connection = duckdb.connect(":memory:")
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(f"SET memory_limit = {_literal(settings.memory_limit)}")
    connection.execute(f"SET temp_directory = {_literal(str(spill))}")
    connection.execute("SET preserve_insertion_order = true")
    connection.execute("SET enable_progress_bar = false")
    if settings.threads > 0:
        connection.execute(f"SET threads = {int(settings.threads)}")
    return connection


def _compact_partition(
    run: _Run, connection: duckdb.DuckDBPyConnection, partition: Partition, directory: Path
) -> None:
    root, settings, report = run.root, run.settings, run.report
    files = sorted(directory.glob("*.parquet"))
    fresh = [path for path in files if not is_compacted(path)]
    # The tables built from an hour of spans (none for other tables): built again with new spans, and
    # where they are missing (a store compacted before a table existed gets it on the next run).
    derived_dirs = {
        table: root / Partition(table=table, date=partition.date, hour=partition.hour).relative_dir()
        for table in (_DERIVED_SQL if partition.table == "spans" else ())
    }
    old_derived = {table: sorted(directory.glob("*.parquet")) for table, directory in derived_dirs.items()}
    needs_derived = bool(derived_dirs) and bool(files) and (bool(fresh) or not all(old_derived.values()))
    if not fresh and not needs_derived:
        return
    nonce = secrets.token_hex(4)
    staging = tmp_dir(root) / f"{_STAGING_PREFIX}{nonce}"
    staging.mkdir(parents=True)
    moves_in: list[tuple[Path, Path]] = []
    moves_out: list[Path] = []
    rows = 0
    sources = files
    if fresh:
        produced, rows = _merge(connection, partition.table, files, staging / "data", settings)
        moves_in += [
            (path, directory / compacted_file_name(nonce=nonce, index=index))
            for index, path in enumerate(produced)
        ]
        moves_out += files
        sources = produced
    trace_rows = 0
    for table, derived_dir in derived_dirs.items():
        built, built_rows = _build_derived(connection, table, sources, staging / table, settings)
        moves_in += [
            (path, derived_dir / compacted_file_name(nonce=nonce, index=index))
            for index, path in enumerate(built)
        ]
        moves_out += old_derived[table]
        if table == "traces":
            trace_rows = built_rows
    if settings.fsync:
        for path, _ in moves_in:
            fsync_path(path)
    journal = _write_journal(root, nonce, moves_in, moves_out, settings)
    _publish(run, journal)
    shutil.rmtree(staging, ignore_errors=True)
    report.compacted_partitions += 1
    report.files_in += len(files) if fresh else 0
    report.files_out += sum(1 for _, final in moves_in if final.parent == directory)
    report.rows += rows
    report.trace_rows += trace_rows
    report.compacted.append(partition.relative_dir())
    logger.info(
        "compacted %s: %d files -> %d, %d rows, %d trace rows",
        partition.relative_dir(),
        len(files) if fresh else 0,
        len(moves_in),
        rows,
        trace_rows,
    )


def _merge(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    files: Sequence[Path],
    out: Path,
    settings: CompactionSettings,
) -> tuple[list[Path], int]:
    coverage = files_coverage(files)
    merged = {writer: merge_ranges(ranges) for writer, ranges in sorted(coverage.items())}
    metadata = {
        "mallard.schema_version": str(SCHEMA_VERSION),
        "mallard.compacted": "true",
        COVERAGE_KEY.decode(): json.dumps(merged, separators=(",", ":")),
    }
    order = ", ".join(COMPACT_SORT[table])
    derived = COMPACTED_COLUMNS.get(table, {})
    if not derived:
        columns = "*"
    elif any(is_compacted(path) for path in files):  # they have the columns already: recompute
        columns = "* REPLACE (" + ", ".join(f"{sql} AS {name}" for name, (_, sql) in derived.items()) + ")"
    else:
        columns = "*, " + ", ".join(f"{sql} AS {name}" for name, (_, sql) in derived.items())
    query = f"SELECT {columns} FROM {_read(files)} ORDER BY {order}"
    rows = _copy(connection, query, out, settings, metadata, row_group_rows=ROW_GROUP_ROWS[table])
    return _produced(out), rows


def _build_derived(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    spans: Sequence[Path],
    out: Path,
    settings: CompactionSettings,
) -> tuple[list[Path], int]:
    """The rows of the derived `table` for the spans files `spans` (one hour)."""
    metadata = {"mallard.schema_version": str(SCHEMA_VERSION), "mallard.compacted": "true"}
    rows = _copy(
        connection,
        _DERIVED_SQL[table](_read(spans)),
        out,
        settings,
        metadata,
        row_group_rows=ROW_GROUP_ROWS[table],
    )
    return _produced(out), rows


def _read(files: Sequence[Path]) -> str:
    paths = ", ".join(_literal(str(path)) for path in files)
    return f"read_parquet([{paths}], union_by_name = true, hive_partitioning = false)"


def _copy(
    connection: duckdb.DuckDBPyConnection,
    query: str,
    out: Path,
    settings: CompactionSettings,
    metadata: Mapping[str, str],
    *,
    row_group_rows: int,
) -> int:
    kv = ", ".join(f"{_literal(key)}: {_literal(value)}" for key, value in metadata.items())
    statement = (
        f"COPY ({query}) TO {_literal(str(out))} (FORMAT parquet, COMPRESSION zstd, "
        f"COMPRESSION_LEVEL 3, ROW_GROUP_SIZE {int(row_group_rows)}, "
        f"FILE_SIZE_BYTES {int(settings.file_bytes)}, KV_METADATA {{{kv}}})"
    )
    try:
        result = connection.execute(statement).fetchone()
    except duckdb.Error as exc:
        raise StorageError(f"compaction could not write {out}: {exc}") from exc
    return int(result[0]) if result else 0


def _produced(out: Path) -> list[Path]:
    """DuckDB's output files (`data_<i>.parquet`) in the order it wrote them."""
    return sorted(out.glob("*.parquet"), key=lambda path: int(path.stem.rsplit("_", 1)[-1]))


# -- publishing ------------------------------------------------------------------------------------


def _write_journal(
    root: Path,
    nonce: str,
    moves_in: Sequence[tuple[Path, Path]],
    moves_out: Sequence[Path],
    settings: CompactionSettings,
) -> Path:
    directory = journal_dir(root)
    record = {
        "nonce": nonce,
        "in": [[_relative(root, src), _relative(root, dst)] for src, dst in moves_in],
        "out": [_relative(root, path) for path in moves_out],
    }
    final = directory / f"{nonce}.json"
    tmp = directory / f"{nonce}.json.tmp"
    tmp.write_text(json.dumps(record))
    if settings.fsync:
        fsync_path(tmp)
    os.replace(tmp, final)
    if settings.fsync:
        fsync_path(directory)
    return final


def _publish(run: _Run, journal: Path) -> None:
    root, settings = run.root, run.settings
    record = json.loads(journal.read_text())
    nonce = str(record["nonce"])
    trash = trash_dir(root) / f"{int(run.now.timestamp())}-{nonce}"
    touched: set[Path] = set()
    with run.reader_lock.exclusive(timeout_s=settings.lock_timeout_s) as locked:
        if not locked:
            logger.warning("queries held the store for %.0f s: publishing anyway", settings.lock_timeout_s)
        for src, dst in record["in"]:
            source, target = root / src, root / dst
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
                touched.add(target.parent)
        for relative in record["out"]:
            path = root / relative
            if path.exists():
                target = trash / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                touched.add(path.parent)
    if settings.fsync:
        for directory in touched:
            fsync_path(directory)
    journal.unlink()
    if settings.fsync:
        fsync_path(journal.parent)


def _finish_journals(run: _Run) -> None:
    for journal in sorted(journal_dir(run.root).glob("*.json")):
        logger.warning("finishing the interrupted compaction %s", journal.name)
        _publish(run, journal)
    for leftover in journal_dir(run.root).glob("*.json.tmp"):
        leftover.unlink(missing_ok=True)


def _remove_staging(root: Path) -> None:
    """Staging directories of runs that crashed before writing their journal (nothing refers to them)."""
    for path in tmp_dir(root).glob(f"{_STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _empty_trash(root: Path, now: datetime, grace_s: float) -> int:
    removed = 0
    for entry in trash_dir(root).glob("*"):
        try:
            stamp = int(entry.name.split("-", 1)[0])
        except ValueError:
            continue
        if now.timestamp() - stamp >= grace_s:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


# -- retention -------------------------------------------------------------------------------------


def _apply_retention(run: _Run, retention: Mapping[str, float]) -> None:
    root, now, report = run.root, run.now, run.report
    ages = dict(retention)
    if "spans" in ages:
        for derived in DERIVED_TABLES:
            ages.setdefault(derived, ages["spans"])
    for table, max_age_s in ages.items():
        if table not in ALL_TABLES:
            raise StorageError(f"unknown table {table!r} (tables: {', '.join(ALL_TABLES)})")
        # An hour is dropped once its end is more than the maximum age ago.
        first_kept = int((now.timestamp() - max_age_s) // 3600)
        expired = [
            (partition, directory)
            for partition, directory in partition_dirs(root, table)
            if partition.epoch_hour() + 1 <= first_kept
        ]
        if not expired:
            continue
        trash = trash_dir(root) / f"{int(now.timestamp())}-retention-{secrets.token_hex(4)}"
        with run.reader_lock.exclusive(timeout_s=run.settings.lock_timeout_s):
            for partition, directory in expired:
                target = trash / partition.relative_dir()
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(directory, target)
                report.dropped_partitions += 1
                report.dropped.append(partition.relative_dir())
        for _, directory in expired:
            date_dir = directory.parent
            if date_dir.exists() and not any(date_dir.iterdir()):
                date_dir.rmdir()
        logger.info("retention dropped %d hours of %s", len(expired), table)


# -- helpers ---------------------------------------------------------------------------------------


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _relative(root: Path, path: Path) -> str:
    return os.fspath(path.relative_to(root))
