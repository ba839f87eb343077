"""Where things live under a store root: the directory layout of the storage contract.

```
<root>/v1/<table>/date=YYYY-MM-DD/hour=HH/<writer>-<first_lsn>-<last_lsn>-<nonce>.parquet
<root>/tmp/      files being written (outside every table glob; renamed into place when complete)
<root>/wal/<writer>/  write-ahead log segments of one collector worker
```
The file name records which WAL records (log sequence numbers, inclusive) of which writer the file
holds, so replay after a crash can skip what is already committed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from mallard.storage.schema import SCHEMA_VERSION

VERSION_DIR: Final = f"v{SCHEMA_VERSION}"
_FILE_RE: Final = re.compile(
    r"^(?P<writer>[A-Za-z0-9_]+)-(?P<first>[0-9]{16})-(?P<last>[0-9]{16})-(?P<nonce>[0-9a-f]+)\.parquet$"
)


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


def list_part_files(root: Path, table: str) -> list[PartFile]:
    """Every committed collector file of `table` (compacted files, with other names, are skipped)."""
    found = []
    for path in table_dir(root, table).glob("date=*/hour=*/*.parquet"):
        part = parse_part_file(path, table)
        if part is not None:
            found.append(part)
    return found
