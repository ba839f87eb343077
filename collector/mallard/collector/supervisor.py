"""Runs the collector: one worker in this process, or `--workers N` processes sharing the ports.

Workers share the receiver ports with SO_REUSEPORT; each has its own WAL (`wal/w<i>`) and writes files
named after itself, so nothing collides. A worker that dies is restarted and replays its WAL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import queue
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Final

from mallard.collector.config import CollectorConfig
from mallard.collector.server import BoundPorts, run_worker

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S: Final = 120.0
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def ready_line(config: CollectorConfig, ports: BoundPorts) -> str:
    """The line `mallard serve` prints once it accepts data (tests and scripts read the ports from it)."""
    return (
        f"mallard serve: ready grpc={config.host}:{ports.grpc} http={config.host}:{ports.http} "
        f"data={config.data.resolve()} workers={config.workers}"
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=_LOG_FORMAT)


async def _serve_here(
    config: CollectorConfig,
    index: int,
    on_ready: Callable[[BoundPorts], None],
    *,
    parent_sentinel: int | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if parent_sentinel is not None:

        def supervisor_gone() -> None:
            loop.remove_reader(parent_sentinel)
            logger.error("the supervisor is gone (killed?): w%d drains and exits", index)
            stop.set()

        # readable once the supervisor has exited, even by kill -9: an orphan must not serve on beside
        # the workers of a restarted collector, on the same ports and the same WAL
        loop.add_reader(parent_sentinel, supervisor_gone)
    await run_worker(config, index=index, stop=stop, on_ready=on_ready)


def _worker_main(config: CollectorConfig, index: int, ready: Any) -> None:
    configure_logging(config.log_level)
    parent = multiprocessing.parent_process()
    asyncio.run(
        _serve_here(
            config,
            index,
            lambda ports: ready.put((index, ports.grpc, ports.http)),
            parent_sentinel=parent.sentinel if parent is not None else None,
        )
    )


def _reserve_port(host: str, port: int) -> socket.socket:
    """Binds (without listening) a SO_REUSEPORT socket, so `port=0` gives one port all workers share."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def serve(config: CollectorConfig, *, announce: Callable[[str], None]) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code."""
    config.data.mkdir(parents=True, exist_ok=True)
    if config.workers == 1:
        asyncio.run(_serve_here(config, 0, lambda ports: announce(ready_line(config, ports))))
        return 0
    return _Supervisor(config, announce).run()


class _Supervisor:
    def __init__(self, config: CollectorConfig, announce: Callable[[str], None]) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._announce = announce
        self._reserved = [
            _reserve_port(config.host, config.grpc_port),
            _reserve_port(config.host, config.http_port),
        ]
        self._config = dataclasses.replace(
            config, grpc_port=self._reserved[0].getsockname()[1], http_port=self._reserved[1].getsockname()[1]
        )
        self._ready: Any = self._context.Queue()
        self._workers: dict[int, BaseProcess] = {}
        self._stopping = False

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=_worker_main, args=(self._config, index, self._ready), name=f"mallard-w{index}"
        )
        process.start()
        self._workers[index] = process

    def _stop(self, *_: object) -> None:
        self._stopping = True
        for process in self._workers.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for index in range(self._config.workers):
            self._start(index)
        if not self._await_ready():
            self._stop()
            self._join()
            return 1
        for sock in self._reserved:
            sock.close()
        self._announce(
            ready_line(self._config, BoundPorts(grpc=self._config.grpc_port, http=self._config.http_port))
        )
        while not self._stopping:
            time.sleep(0.2)
            for index, process in list(self._workers.items()):
                if not process.is_alive() and not self._stopping:
                    logger.error("worker w%d exited with %s; restarting it", index, process.exitcode)
                    self._start(index)
        return self._join()

    def _await_ready(self) -> bool:
        pending = set(self._workers)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while pending and time.monotonic() < deadline and not self._stopping:
            try:
                index, _, _ = self._ready.get(timeout=0.2)
                pending.discard(index)
            except queue.Empty:
                dead = [i for i in pending if not self._workers[i].is_alive()]
                if dead:
                    logger.error("worker(s) %s failed to start", ", ".join(f"w{i}" for i in dead))
                    return False
        return not pending

    def _join(self) -> int:
        code = 0
        for process in self._workers.values():
            process.join()
            if process.exitcode not in (0, -signal.SIGTERM):
                code = 1
        return code
