"""WriteAheadLog on real files: round trip, group commit, torn tails, corrupt segments, rolling, release."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mallard.collector.errors import StorageUnavailableError
from mallard.collector.wal import FsyncMode, WalRecord, WriteAheadLog, read_segment

TIMEOUT_S = 10
HEADER_BYTES = 25  # u32 length, u32 crc, u64 lsn, u64 received, u8 signal
RECEIVED = 1_700_000_000_123_456_789


@dataclass
class Opened:
    """A started log, what its replay yielded, and every `on_commit` call it made since."""

    wal: WriteAheadLog
    replayed: list[WalRecord]
    commits: list[tuple[int, str, object]] = field(default_factory=list)

    def append(self, signal: str, payload: bytes, item: object = None) -> int:
        return self.wal.append(signal, payload, received_unix_nano=RECEIVED, item=item).result(TIMEOUT_S)


def open_wal(
    directory: Path, *, segment_bytes: int = 64 << 20, fsync: FsyncMode = "always", min_next_lsn: int = 1
) -> Opened:
    commits: list[tuple[int, str, object]] = []
    wal = WriteAheadLog(
        directory,
        fsync=fsync,
        segment_bytes=segment_bytes,
        on_commit=lambda lsn, signal, item: commits.append((lsn, signal, item)),
    )
    replayed = list(wal.replay(min_next_lsn=min_next_lsn))
    wal.start()
    return Opened(wal, replayed, commits)


def replayed_lsns(directory: Path) -> list[int]:
    """What a restart would replay, without starting the log."""
    wal = WriteAheadLog(directory, on_commit=lambda *_: None)
    return [record.lsn for record in wal.replay()]


def segment_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.wal"))


def payload(n: int, size: int = 100) -> bytes:
    return n.to_bytes(4, "big") * (size // 4)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_append_then_replay_round_trip(tmp_path: Path, fsync: FsyncMode) -> None:
    log = open_wal(tmp_path, fsync=fsync)
    assert log.replayed == []
    sent = [("traces", b"\x0a\x00spans"), ("metrics", b""), ("logs", bytes(range(256)) * 40)]
    lsns = [log.append(signal, body, item=f"item-{i}") for i, (signal, body) in enumerate(sent)]
    assert lsns == [1, 2, 3]
    assert log.commits == [(1, "traces", "item-0"), (2, "metrics", "item-1"), (3, "logs", "item-2")]
    log.wal.close()

    again = open_wal(tmp_path, fsync=fsync)
    assert [(r.lsn, r.signal, r.payload, r.received_unix_nano) for r in again.replayed] == [
        (lsn, signal, body, RECEIVED) for lsn, (signal, body) in zip(lsns, sent, strict=True)
    ]
    assert again.wal.next_lsn == 4
    assert again.append("traces", b"next") == 4
    again.wal.close()


def test_group_commit_resolves_every_append_and_commits_in_lsn_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one fsync is under way, every append queues up; the next write takes them all at once."""
    syncs: list[int] = []
    in_first_sync, release = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 1:
            in_first_sync.set()
            assert release.wait(TIMEOUT_S)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    log = open_wal(tmp_path)
    first = log.wal.append("traces", payload(0), received_unix_nano=RECEIVED, item=("first", 0))
    assert in_first_sync.wait(TIMEOUT_S)

    futures: dict[tuple[str, int], Future[int]] = {}
    lock = threading.Lock()

    def client(name: str) -> None:
        for i in range(25):
            future = log.wal.append("logs", payload(i), received_unix_nano=RECEIVED, item=(name, i))
            with lock:
                futures[(name, i)] = future

    threads = [threading.Thread(target=client, args=(f"t{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not any(f.done() for f in futures.values())
    release.set()

    assert first.result(TIMEOUT_S) == 1
    lsn_of = {key: future.result(TIMEOUT_S) for key, future in futures.items()}
    assert sorted(lsn_of.values()) == list(range(2, 202))
    assert [lsn for lsn, _, _ in log.commits] == list(range(1, 202))
    assert all(lsn_of[item] == lsn for lsn, _, item in log.commits[1:])
    for name in (f"t{n}" for n in range(8)):  # each client's appends keep their order
        own = [lsn_of[(name, i)] for i in range(25)]
        assert own == sorted(own)
    assert len(syncs) == 2, "200 queued appends should share one fsync"
    log.wal.close()
    assert replayed_lsns(tmp_path) == list(range(1, 202))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_torn_tail_is_cut_off_and_appends_continue(tmp_path: Path, damage: str) -> None:
    log = open_wal(tmp_path)
    for n in range(3):
        log.append("traces", payload(n))
    log.wal.close()
    (segment,) = tmp_path.glob("*.wal")
    record_bytes = HEADER_BYTES + 100
    assert segment.stat().st_size == 3 * record_bytes
    data = bytearray(segment.read_bytes())
    if damage == "truncate":
        del data[-40:]  # the crash came in the middle of the third record's payload
    else:
        data[-1] ^= 0xFF  # its checksum no longer matches
    segment.write_bytes(bytes(data))

    again = open_wal(tmp_path)
    assert [r.lsn for r in again.replayed] == [1, 2]
    assert segment.stat().st_size == 2 * record_bytes, "the torn record is cut off the file"
    assert again.wal.corrupt_records == 0, "a torn tail is the expected end of a crash, not corruption"
    assert again.append("logs", b"after the crash") == 3
    again.wal.close()

    third = open_wal(tmp_path)
    assert [(r.lsn, r.signal) for r in third.replayed] == [(1, "traces"), (2, "traces"), (3, "logs")]
    assert third.replayed[-1].payload == b"after the crash"
    third.wal.close()


def test_corrupt_record_in_a_closed_segment_is_skipped_and_counted(tmp_path: Path) -> None:
    record_bytes = HEADER_BYTES + 100
    log = open_wal(tmp_path, segment_bytes=3 * record_bytes)
    for n in range(9):
        log.append("traces", payload(n))
    log.wal.close()
    assert segment_files(tmp_path) == [f"{first:016d}.wal" for first in (1, 4, 7)]
    middle = tmp_path / f"{4:016d}.wal"
    data = bytearray(middle.read_bytes())
    data[record_bytes + HEADER_BYTES + 10] ^= 0x01  # a payload byte of LSN 5
    middle.write_bytes(bytes(data))

    again = open_wal(tmp_path)
    # the rest of the damaged segment is unreadable; the segments around it are intact
    assert [r.lsn for r in again.replayed] == [1, 2, 3, 4, 7, 8, 9]
    assert again.wal.corrupt_records == 1
    assert middle.read_bytes() == bytes(data), "only a torn tail of the last segment is cut"
    assert again.wal.next_lsn == 10
    assert again.append("logs", b"x") == 10
    again.wal.close()


def test_segments_roll_at_segment_bytes_and_release_deletes_only_committed_closed_ones(
    tmp_path: Path,
) -> None:
    record_bytes = HEADER_BYTES + 100
    log = open_wal(tmp_path, segment_bytes=2 * record_bytes - 1)
    for n in range(1, 11):
        assert log.append("traces", payload(n)) == n
    firsts = [1, 3, 5, 7, 9]  # a segment is closed once it reaches segment_bytes
    assert segment_files(tmp_path) == [f"{first:016d}.wal" for first in firsts]
    for first in firsts:
        records, end, clean = read_segment(tmp_path / f"{first:016d}.wal")
        assert clean and end == 2 * record_bytes
        assert [r.lsn for r in records] == [first, first + 1], "a segment is named by its first LSN"
    assert log.wal.size_bytes() == 10 * record_bytes

    assert log.wal.release_upto(0) == 0
    assert log.wal.release_upto(4) == 2  # segments 1 and 3 hold LSNs 1-4 only
    assert log.wal.release_upto(5) == 0  # segment 5 still holds LSN 6
    assert segment_files(tmp_path) == [f"{first:016d}.wal" for first in (5, 7, 9)]
    assert log.wal.release_upto(100) == 2  # the active segment stays, whatever it holds
    assert segment_files(tmp_path) == [f"{9:016d}.wal"]
    assert log.wal.size_bytes() == 2 * record_bytes
    assert log.append("logs", b"y") == 11
    log.wal.close()

    assert replayed_lsns(tmp_path) == [9, 10, 11]


def test_next_lsn_never_goes_backwards(tmp_path: Path) -> None:
    log = open_wal(tmp_path)
    for n in range(5):
        log.append("traces", payload(n))
    log.wal.close()

    # a restart after everything was committed: a fresh segment, the old one released
    restarted = open_wal(tmp_path)
    assert restarted.wal.next_lsn == 6
    assert restarted.wal.release_upto(5) == 1
    restarted.wal.close()
    assert segment_files(tmp_path) == [f"{6:016d}.wal"]
    assert (tmp_path / f"{6:016d}.wal").stat().st_size == 0

    # the log holds no record at all now; the empty segment's name still carries the LSN
    emptied = open_wal(tmp_path)
    assert emptied.replayed == []
    assert emptied.append("traces", b"a") == 6
    emptied.wal.close()

    # with no segment at all, what is already in Parquet (min_next_lsn) keeps the LSNs going up
    for path in tmp_path.glob("*.wal"):
        path.unlink()
    lost = open_wal(tmp_path, min_next_lsn=7)
    assert lost.replayed == []
    assert lost.append("traces", b"b") == 7
    lost.wal.close()

    # and a low min_next_lsn never pulls the log back below what it holds
    low = open_wal(tmp_path, min_next_lsn=2)
    assert [r.lsn for r in low.replayed] == [7]
    assert low.append("traces", b"c") == 8
    low.wal.close()


def test_append_after_close_raises_storage_unavailable(tmp_path: Path) -> None:
    log = open_wal(tmp_path)
    assert log.append("traces", b"a") == 1
    log.wal.close()
    with pytest.raises(StorageUnavailableError):
        log.wal.append("traces", b"b", received_unix_nano=RECEIVED, item=None)
    assert replayed_lsns(tmp_path) == [1]


def test_a_failing_on_commit_still_resolves_the_append(tmp_path: Path) -> None:
    def broken(lsn: int, signal: str, item: object) -> None:
        raise RuntimeError("consumer bug")

    wal = WriteAheadLog(tmp_path, on_commit=broken)
    assert list(wal.replay()) == []
    wal.start()
    assert wal.append("logs", b"z", received_unix_nano=RECEIVED, item=None).result(TIMEOUT_S) == 1
    wal.close()


def test_a_segment_that_cannot_be_created_fails_the_batch_and_the_next_append_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full just when a segment rolls: those appends fail (503), the log recovers once it can."""
    record_bytes = HEADER_BYTES + 100
    log = open_wal(tmp_path, segment_bytes=record_bytes)
    assert log.append("traces", payload(1)) == 1
    real_open = os.open
    full = threading.Event()
    full.set()

    def open_or_enospc(path: str | os.PathLike[str], flags: int, *args: int, **kw: object) -> int:
        if full.is_set() and str(path).endswith(".wal"):
            raise OSError(28, "No space left on device")
        return real_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", open_or_enospc)
    with pytest.raises(StorageUnavailableError):
        log.append("traces", payload(2))
    assert not log.wal.healthy
    full.clear()
    assert log.append("traces", payload(3)) == 2
    assert log.wal.healthy
    monkeypatch.undo()
    log.wal.close()
    assert segment_files(tmp_path) == [f"{1:016d}.wal", f"{2:016d}.wal"]
    wal = WriteAheadLog(tmp_path, on_commit=lambda *_: None)
    assert [(r.lsn, r.payload) for r in wal.replay()] == [(1, payload(1)), (2, payload(3))]
