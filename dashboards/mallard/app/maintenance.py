"""Store maintenance from the command line: `mallard compact`, and the child process through which
`mallard serve` runs the same work every `--compact-interval` seconds.

`mallard compact` applies `--retention` (if given), compacts every closed hour, prints one summary line
and exits 0; it exits 1 with a one-line reason when the store cannot be maintained (another run holds
it, a write failed) and 2 for bad arguments. See `mallard.storage.compact` for what a run does.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final

from mallard.query.cli import add_data_argument, data_dir
from mallard.storage.retention import parse_duration, parse_retention

logger = logging.getLogger(__name__)

_PROG: Final = "mallard compact"
_STOP_TIMEOUT_S: Final = 60.0


def add_compact_arguments(parser: argparse.ArgumentParser) -> None:
    from mallard.storage.compact import CompactionSettings

    defaults = CompactionSettings()
    add_data_argument(parser)
    parser.add_argument(
        "--retention",
        default="",
        metavar="AGE",
        help="also drop data older than AGE: '7d' for every table, or 'spans=7d,metrics=30d,logs=3d' "
        "(whole hours; traces follow spans)",
    )
    parser.add_argument(
        "--settle",
        default=f"{defaults.settle_s:g}s",
        metavar="DURATION",
        help=f"an hour is compacted once it ended this long ago (default: {defaults.settle_s:g}s)",
    )
    parser.add_argument(
        "--grace",
        default=f"{defaults.grace_s:g}s",
        metavar="DURATION",
        help=f"replaced and dropped files stay in <data>/trash/ this long (default: {defaults.grace_s:g}s)",
    )
    parser.add_argument(
        "--memory-limit",
        default=defaults.memory_limit,
        metavar="SIZE",
        help=f"DuckDB memory for sorting; beyond it spills to <data>/tmp/ (default: {defaults.memory_limit})",
    )
    parser.add_argument(
        "--no-compact",
        action="store_true",
        help="apply --retention only",
    )


def run_compact(args: argparse.Namespace) -> int:
    from mallard.storage.compact import CompactionSettings, maintain
    from mallard.storage.errors import StorageError

    try:
        retention = parse_retention(args.retention)
        settings = CompactionSettings(
            settle_s=_duration_or_zero(args.settle),
            grace_s=_duration_or_zero(args.grace),
            memory_limit=args.memory_limit,
        )
    except ValueError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    root = data_dir(args.data)
    if not root.is_dir():
        print(f"{_PROG}: error: {root} is not a directory", file=sys.stderr)
        return 1
    try:
        report = maintain(root, retention=retention, settings=settings, compact=not args.no_compact)
    except (StorageError, OSError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(f"{_PROG}: {report.summary()}")
    return 0


def _duration_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s") else parse_duration(text)


# -- the child process of `mallard serve` ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceSettings:
    data: Path
    interval_s: float
    retention: tuple[tuple[str, float], ...]
    log_level: str


class MaintenanceProcess:
    """Runs a maintenance pass at start and then every `interval_s`; stops on `stop()` (after the pass
    in progress, or killed after a minute: an interrupted publish is finished by the next run) and by
    itself when its parent dies."""

    def __init__(self, process: BaseProcess) -> None:
        self._process = process

    @classmethod
    def start(cls, settings: MaintenanceSettings) -> MaintenanceProcess:
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=_maintenance_main, args=(settings,), name="mallard-maintenance")
        process.start()
        return cls(process)

    def stop(self) -> int:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(_STOP_TIMEOUT_S)
        if self._process.is_alive():
            logger.error("store maintenance did not stop within %.0f s; killing it", _STOP_TIMEOUT_S)
            self._process.kill()
            self._process.join()
        return self._process.exitcode or 0


def _maintenance_main(settings: MaintenanceSettings) -> None:
    from mallard.collector.supervisor import configure_logging
    from mallard.storage.compact import MaintenanceBusy, maintain
    from mallard.storage.errors import StorageError

    configure_logging(settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the parent stops us
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    parent = multiprocessing.parent_process()
    sentinels = [parent.sentinel] if parent is not None else []
    retention = dict(settings.retention)
    while not stopping.is_set():
        try:
            report = maintain(settings.data, retention=retention)
            if report.compacted_partitions or report.dropped_partitions:
                logger.info("store maintenance: %s", report.summary())
        except MaintenanceBusy as exc:
            logger.info("store maintenance skipped: %s", exc)
        except (StorageError, OSError) as exc:
            logger.error("store maintenance failed: %s", exc)
        deadline_s = settings.interval_s
        while deadline_s > 0 and not stopping.is_set():
            step = min(deadline_s, 0.5)
            if sentinels and wait(sentinels, timeout=step):
                return  # the parent is gone
            if not sentinels:
                stopping.wait(step)
            deadline_s -= step
