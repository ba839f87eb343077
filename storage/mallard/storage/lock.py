"""`ReaderLock`: keeps compaction and retention from changing a store's files under a running query.

Readers (`mallard.query.Store`) hold the lock shared for the length of each query, from listing the
files to reading the last row; compaction and retention take it exclusively only for the instant in
which they swap files (renames, no I/O of data), so queries wait at most that long. It is an advisory
`flock` on `<root>/.readers.lock`: it works between threads and processes on one machine. Readers
that do not take it (another engine reading the glob) can see a file vanish between listing and
opening it, and should retry; a store on a read-only file system gets no lock and needs none.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

LOCK_FILE: Final = ".readers.lock"
_POLL_S: Final = 0.005


class ReaderLock:
    """The readers' lock of the store under `root`. Not re-entrant; one per holder."""

    def __init__(self, root: Path) -> None:
        self._fd: int | None
        try:
            self._fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            try:  # a read-only store: the file may exist, or nothing can change the files anyway
                self._fd = os.open(root / LOCK_FILE, os.O_RDONLY)
            except OSError:
                self._fd = None

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held while a query lists and reads files."""
        if self._fd is None:
            yield
            return
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self, *, timeout_s: float) -> Iterator[bool]:
        """Held while files are swapped; yields whether it was taken within `timeout_s` (readers that
        keep overlapping can hold it longer: the caller then goes on without it)."""
        if self._fd is None:
            yield False
            return
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(_POLL_S)
        try:
            yield True
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
