"""Where things live under a store root: the directory layout of the storage contract.

```
<root>/v1/<table>/date=YYYY-MM-DD/hour=HH/<writer>-<first_lsn>-<last_lsn>-<nonce>.parquet
<root>/v1/<table>/date=YYYY-MM-DD/hour=HH/c-<nonce>-<index>.parquet    written by compaction
<root>/tmp/      files being written (outside every table glob; renamed into place when complete)
<root>/wal/<writer>/  write-ahead log segments of one collector worker
<root>/compaction/    journals of compactions being published
<root>/trash/         files replaced by compaction or dropped by retention, deleted after a grace period
```
A collector file's name records which WAL records (log sequence numbers, inclusive) of which writer
the file holds, so replay after a crash can skip what is already committed. A compacted file holds
the same facts for every file it replaced, in its footer (`mallard.wal_coverage`): `committed_ranges`
reads both.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import pyarrow.parquet as pq

from mallard.storage.errors import StorageError
from mallard.storage.schema import SCHEMA_VERSION

VERSION_DIR: Final = f"v{SCHEMA_VERSION}"
_FILE_RE: Final = re.compile(
    r"^(?P<writer>[A-Za-z0-9_]+)-(?P<first>[0-9]{16})-(?P<last>[0-9]{16})-(?P<nonce>[0-9a-f]+)\.parquet$"
)
COMPACTED_PREFIX: Final = "c-"
# Footer key of a compacted file: JSON `{"<writer>": [[first_lsn, last_lsn], ...]}` of the WAL ranges
# of every collector file it replaced (directly or through an earlier compacted file).
COVERAGE_KEY: Final = b"mallard.wal_coverage"
_COVERAGE_ATTEMPTS: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """One hour of one table."""

    table: str
    date: str  # YYYY-MM-DD
    hour: int

    @classmethod
    def for_hour(cls, table: str, epoch_hour: int) -> Partition:
        moment = datetime.fromtimestamp(epoch_hour * 3600, tz=UTC)
        return cls(table=table, date=moment.strftime("%Y-%m-%d"), hour=moment.hour)

    def relative_dir(self) -> str:
        return f"{VERSION_DIR}/{self.table}/date={self.date}/hour={self.hour:02d}"

    def epoch_hour(self) -> int:
        moment = datetime.strptime(self.date, "%Y-%m-%d").replace(tzinfo=UTC)
        return int(moment.timestamp()) // 3600 + self.hour

    @classmethod
    def of_dir(cls, table: str, directory: Path) -> Partition | None:
        """The partition of `<...>/date=YYYY-MM-DD/hour=HH`; None for other directories."""
        hour_dir, date_dir = directory.name, directory.parent.name
        if not hour_dir.startswith("hour=") or not date_dir.startswith("date="):
            return None
        try:
            hour = int(hour_dir[5:])
            datetime.strptime(date_dir[5:], "%Y-%m-%d")
        except ValueError:
            return None
        return cls(table=table, date=date_dir[5:], hour=hour)


@dataclass(frozen=True, slots=True, kw_only=True)
class PartFile:
    """What a committed Parquet file's name says about its contents."""

    partition: Partition
    writer: str
    first_lsn: int
    last_lsn: int
    path: Path

    def covers(self, writer: str, lsn: int) -> bool:
        return self.writer == writer and self.first_lsn <= lsn <= self.last_lsn


def table_dir(root: Path, table: str) -> Path:
    return root / VERSION_DIR / table


def table_glob(root: Path | str, table: str) -> str:
    """The glob plain DuckDB reads: `read_parquet(glob, hive_partitioning=true)`."""
    return f"{os.fspath(root)}/{VERSION_DIR}/{table}/**/*.parquet"


def tmp_dir(root: Path) -> Path:
    return root / "tmp"


def trash_dir(root: Path) -> Path:
    return root / "trash"


def journal_dir(root: Path) -> Path:
    return root / "compaction"


def partition_dirs(root: Path, table: str) -> list[tuple[Partition, Path]]:
    """Every `date=…/hour=…` directory of `table`, oldest first."""
    found = []
    for directory in table_dir(root, table).glob("date=*/hour=*"):
        partition = Partition.of_dir(table, directory)
        if partition is not None and directory.is_dir():
            found.append((partition, directory))
    return sorted(found, key=lambda item: (item[0].date, item[0].hour))


def is_compacted(path: Path) -> bool:
    return path.name.startswith(COMPACTED_PREFIX)


def compacted_file_name(*, nonce: str, index: int) -> str:
    return f"{COMPACTED_PREFIX}{nonce}-{index:03d}.parquet"


def wal_dir(root: Path, writer: str) -> Path:
    return root / "wal" / writer


def part_file_name(*, writer: str, first_lsn: int, last_lsn: int, nonce: str) -> str:
    return f"{writer}-{first_lsn:016d}-{last_lsn:016d}-{nonce}.parquet"


def parse_part_file(path: Path, table: str) -> PartFile | None:
    """Reads a committed file's path back into a `PartFile`; None for names not written by a collector."""
    match = _FILE_RE.match(path.name)
    hour_dir, date_dir = path.parent.name, path.parent.parent.name
    if match is None or not hour_dir.startswith("hour=") or not date_dir.startswith("date="):
        return None
    partition = Partition(table=table, date=date_dir[5:], hour=int(hour_dir[5:]))
    return PartFile(
        partition=partition,
        writer=match["writer"],
        first_lsn=int(match["first"]),
        last_lsn=int(match["last"]),
        path=path,
    )


def read_coverage(path: Path) -> dict[str, list[tuple[int, int]]]:
    """The WAL ranges a compacted file's footer records, by writer. Raises StorageError, or
    FileNotFoundError when the file is gone (a compaction replaced it since it was listed)."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
        raw = json.loads(metadata.get(COVERAGE_KEY, b"{}"))
        return {str(writer): [(int(a), int(b)) for a, b in ranges] for writer, ranges in raw.items()}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot read the WAL coverage of {path}: {exc}") from exc


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping and adjacent ranges joined."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def directory_coverage(directory: Path) -> dict[str, list[tuple[int, int]]]:
    """The committed WAL ranges, by writer, of the files in one partition directory.

    Compaction may replace files while this reads them, without the reader lock. It moves its new
    files in before it moves the replaced ones out, so when a listed compacted file has gone, a fresh
    listing holds its successor: the directory is listed again until one pass reads every file."""
    vanished: FileNotFoundError | None = None
    for _ in range(_COVERAGE_ATTEMPTS):
        try:
            return files_coverage(directory.glob("*.parquet"))
        except FileNotFoundError as exc:
            vanished = exc
    raise StorageError(f"files of {directory} kept vanishing while their WAL coverage was read") from vanished


def files_coverage(paths: Iterable[Path]) -> dict[str, list[tuple[int, int]]]:
    """The committed WAL ranges, by writer, that `paths` hold: collector files by their names,
    compacted files by their footers; other files hold none."""
    coverage: dict[str, list[tuple[int, int]]] = {}
    for path in paths:
        if is_compacted(path):
            for writer, ranges in read_coverage(path).items():
                coverage.setdefault(writer, []).extend(ranges)
            continue
        match = _FILE_RE.match(path.name)
        if match is not None:
            coverage.setdefault(match["writer"], []).append((int(match["first"]), int(match["last"])))
    return coverage


def committed_ranges(root: Path, table: str) -> Iterator[tuple[Partition, str, int, int]]:
    """(partition, writer, first_lsn, last_lsn) for every WAL range committed to `table`."""
    for partition, directory in partition_dirs(root, table):
        for writer, ranges in directory_coverage(directory).items():
            for first, last in ranges:
                yield partition, writer, first, last


def list_part_files(root: Path, table: str) -> list[PartFile]:
    """Every committed collector file of `table` (compacted files are skipped: see `committed_ranges`)."""
    found = []
    for path in table_dir(root, table).glob("date=*/hour=*/*.parquet"):
        part = parse_part_file(path, table)
        if part is not None:
            found.append(part)
    return found
