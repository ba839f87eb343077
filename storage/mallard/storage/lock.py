"""`ReaderLock`: keeps compaction and retention from changing a store's files under a running query.

Readers (`mallard.query.Store`) hold the lock shared for the length of each query, from listing the
files to reading the last row; compaction and retention take it exclusively only for the instant in
which they swap files (renames, no I/O of data), so queries wait at most that long. It is an advisory
`flock` on `<root>/.readers.lock`: it works between threads and processes on one machine. Readers
that do not take it (another engine reading the glob) can see a file vanish between listing and
opening it, and should retry; a store on a read-only file system gets no lock and needs none.

Swaps are not starved by queries that keep overlapping: a reader first passes a gate
(`<root>/.readers.gate`, held shared only while it takes the readers' lock), and a swap closes the
gate (exclusive) before it waits for the queries already running, so new queries wait behind it.
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
GATE_FILE: Final = ".readers.gate"
_POLL_S: Final = 0.005


class ReaderLock:
    """The readers' lock of the store under `root`. Not re-entrant; one per holder."""

    def __init__(self, root: Path) -> None:
        self._fd = _open(root / LOCK_FILE)
        self._gate = _open(root / GATE_FILE) if self._fd is not None else None

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Held while a query lists and reads files."""
        if self._fd is None or self._gate is None:
            yield
            return
        fcntl.flock(self._gate, fcntl.LOCK_SH)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self, *, timeout_s: float) -> Iterator[bool]:
        """Held while files are swapped; yields whether it was taken within `timeout_s` (a query
        running longer holds it longer: the caller then goes on without it)."""
        if self._fd is None or self._gate is None:
            yield False
            return
        deadline = time.monotonic() + timeout_s
        gate = _take(self._gate, deadline)
        taken = gate and _take(self._fd, deadline)
        try:
            yield taken
        finally:
            if taken:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            if gate:
                fcntl.flock(self._gate, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._fd, self._gate):
            if fd is not None:
                os.close(fd)
        self._fd = self._gate = None


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:  # a read-only store: the file may exist, or nothing can change the files anyway
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None


def _take(fd: int, deadline: float) -> bool:
    """An exclusive lock on `fd`, polled until `deadline`."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
