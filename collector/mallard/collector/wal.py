"""The write-ahead log: append-only segments of checksummed OTLP payloads, with group-commit fsync.

A request is acknowledged only after its record is in the log (and, with `fsync="always"`, on disk).
Record layout, little-endian:
```
u32 payload length | u32 crc32 of everything after this field | u64 lsn | u64 received_unix_nano
u8 signal | payload (protobuf bytes of the OTLP export request)
```
Segments are named by the first log sequence number (LSN) they hold: `<first_lsn:016d>.wal`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from mallard.collector.errors import StorageUnavailableError

logger = logging.getLogger(__name__)

FsyncMode = Literal["always", "interval", "never"]
SIGNALS: Final = ("traces", "metrics", "logs")
_HEADER: Final = struct.Struct("<IIQQB")
_CRC_FROM: Final = 8  # the crc covers lsn, received time, signal and payload
_SUFFIX: Final = ".wal"
_INTERVAL_S: Final = 0.2


def lock_directory(directory: Path, *, timeout_s: float) -> int:
    """Takes the exclusive lock of one writer's WAL (`<dir>/LOCK`); returns the descriptor to keep open.

    Two processes must never append to or replay the same WAL: a second `mallard serve` on the same
    data, or a restart while the old workers still drain, waits here and then fails with a clear error.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StorageUnavailableError(
                    f"{directory} is in use by another mallard process (its WAL lock is held)"
                ) from None
            time.sleep(0.1)


@dataclass(frozen=True, slots=True, kw_only=True)
class WalRecord:
    lsn: int
    signal: str
    received_unix_nano: int
    payload: bytes


@dataclass(slots=True, kw_only=True)
class _Pending:
    signal: str
    payload: bytes
    received_unix_nano: int
    item: object
    future: Future[int]


OnCommit = Callable[[int, str, object], None]


def _encode(lsn: int, signal: int, received: int, payload: bytes) -> bytes:
    body = struct.pack("<QQB", lsn, received, signal) + payload
    return struct.pack("<II", len(payload), zlib.crc32(body)) + body


def _segment_paths(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob(f"*{_SUFFIX}"):
        try:
            found.append((int(path.stem), path))
        except ValueError:
            continue
    return sorted(found)


def read_segment(path: Path) -> tuple[list[WalRecord], int, bool]:
    """Reads one segment: its good records, the byte offset where they end, and whether it is clean."""
    data = path.read_bytes()
    records: list[WalRecord] = []
    offset = 0
    while offset < len(data):
        if offset + _HEADER.size > len(data):
            return records, offset, False
        length, crc, lsn, received, signal = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data) or zlib.crc32(data[offset + _CRC_FROM : end]) != crc:
            return records, offset, False
        if signal >= len(SIGNALS):
            return records, offset, False
        payload = data[offset + _HEADER.size : end]
        records.append(
            WalRecord(lsn=lsn, signal=SIGNALS[signal], received_unix_nano=received, payload=payload)
        )
        offset = end
    return records, offset, True


class WriteAheadLog:
    """One writer's log. `replay()` first, then `start()`, `append()` from any thread, `close()`."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncMode = "always",
        segment_bytes: int = 64 << 20,
        on_commit: OnCommit,
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.on_commit = on_commit
        self.next_lsn = 1
        self.corrupt_records = 0
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._size = 0
        self._segments: list[tuple[int, Path]] = []
        self._last_sync = 0.0
        self._healthy = True
        self._segments_lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    # -- start-up -------------------------------------------------------------------------------
    def replay(self, *, min_next_lsn: int = 1) -> Iterator[WalRecord]:
        """Yields every intact record in LSN order and cuts a torn tail off the last segment."""
        segments = _segment_paths(self.directory)
        last_lsn = max(min_next_lsn - 1, segments[-1][0] - 1 if segments else 0)
        for index, (_, path) in enumerate(segments):
            records, good_end, clean = read_segment(path)
            if not clean:
                if index == len(segments) - 1:
                    logger.warning("cutting a torn tail off %s at byte %d", path.name, good_end)
                    with path.open("r+b") as handle:
                        handle.truncate(good_end)
                        os.fsync(handle.fileno())
                else:
                    self.corrupt_records += 1
                    logger.error(
                        "corrupt record in %s at byte %d: the rest of it is skipped", path.name, good_end
                    )
            for record in records:
                last_lsn = max(last_lsn, record.lsn)
                yield record
        self.next_lsn = last_lsn + 1

    def start(self) -> None:
        """Opens a fresh segment for appends (earlier ones hold only replayed records)."""
        with self._segments_lock:
            self._segments = _segment_paths(self.directory)
            if self._segments and self._segments[-1][0] == self.next_lsn:
                _, path = self._segments[-1]
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                self._size = os.fstat(self._fd).st_size
            else:
                self._roll()
        self._thread = threading.Thread(target=self._run, name="mallard-wal", daemon=True)
        self._thread.start()

    # -- appending ------------------------------------------------------------------------------
    def append(self, signal: str, payload: bytes, *, received_unix_nano: int, item: object) -> Future[int]:
        """Queues a record; the future resolves with its LSN once it is durable (after `on_commit`)."""
        future: Future[int] = Future()
        with self._cond:
            if self._closing:
                raise StorageUnavailableError("the write-ahead log is closing")
            self._pending.append(
                _Pending(
                    signal=signal,
                    payload=payload,
                    received_unix_nano=received_unix_nano,
                    item=item,
                    future=future,
                )
            )
            self._pending_bytes += len(payload)
            self._cond.notify()
        return future

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def healthy(self) -> bool:
        return self._healthy

    def size_bytes(self) -> int:
        total = 0
        with self._segments_lock:
            segments = list(self._segments)
        for _, path in segments:
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait(_INTERVAL_S if self.fsync == "interval" else None)
                    if self.fsync == "interval":
                        break
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
                if not batch and self._closing:
                    break
            if batch:
                self._write(batch)
            if self.fsync == "interval":
                self._sync_if_due()

    def _write(self, batch: list[_Pending]) -> None:
        first_lsn = self.next_lsn
        chunks = [
            _encode(first_lsn + i, SIGNALS.index(p.signal), p.received_unix_nano, p.payload)
            for i, p in enumerate(batch)
        ]
        try:
            if self._size >= self.segment_bytes:
                with self._segments_lock:
                    self._roll()
            written = os.writev(self._fd, chunks)
            expected = sum(len(c) for c in chunks)
            if written != expected:
                raise OSError(f"short write: {written} of {expected} bytes")
            if self.fsync == "always":
                os.fdatasync(self._fd)
        except OSError as exc:
            self._healthy = False
            logger.error("write-ahead log append failed: %s", exc)
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                logger.exception("could not cut the failed append off the write-ahead log")
            error = StorageUnavailableError(f"write-ahead log append failed: {exc.strerror or exc}")
            for pending in batch:
                pending.future.set_exception(error)
            return
        self._healthy = True
        self._size += expected
        self.next_lsn = first_lsn + len(batch)
        for i, pending in enumerate(batch):
            lsn = first_lsn + i
            try:
                self.on_commit(lsn, pending.signal, pending.item)
            except Exception:  # a broken consumer must not leave the request hanging
                logger.exception("on_commit failed for lsn %d", lsn)
            pending.future.set_result(lsn)

    def _sync_if_due(self) -> None:
        now = time.monotonic()
        if now - self._last_sync < _INTERVAL_S:
            return
        self._last_sync = now
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._healthy = False
            logger.error("write-ahead log fsync failed: %s", exc)

    def _roll(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1  # if the open below fails, the next write rolls again (no stale descriptor)
        path = self.directory / f"{self.next_lsn:016d}{_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0
        self._segments.append((self.next_lsn, path))
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- truncation and shutdown ----------------------------------------------------------------
    def release_upto(self, committed_lsn: int) -> int:
        """Deletes closed segments whose records are all at or below `committed_lsn`; returns how many."""
        removed = 0
        with self._segments_lock:
            segments = self._segments
            while len(segments) > 1 and segments[1][0] - 1 <= committed_lsn:
                _, path = segments.pop(0)
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
