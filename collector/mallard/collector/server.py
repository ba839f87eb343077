"""One collector worker process, wired: WAL → recovery → batcher → Parquet sink, and both receivers.

This is the composition root of a collector worker; `mallard serve` runs one, or several under
`mallard.collector.supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import uvicorn

from mallard.collector.arrow import Converted, Limits
from mallard.collector.batcher import Batcher, BatcherSettings
from mallard.collector.config import CollectorConfig
from mallard.collector.errors import StorageUnavailableError
from mallard.collector.grpc_receiver import create_grpc_server
from mallard.collector.http_receiver import OtlpHttpApp
from mallard.collector.ingest import Ingest
from mallard.collector.pricing import PriceTable, load_prices
from mallard.collector.recovery import recover
from mallard.collector.telemetry import SelfMetrics, to_otlp
from mallard.collector.wal import FsyncMode, WriteAheadLog, lock_directory
from mallard.storage.layout import wal_dir
from mallard.storage.schema import TABLES
from mallard.storage.writer import ParquetSettings, ParquetSink, clean_tmp

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundPorts:
    grpc: int
    http: int


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the worker decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _adopt_orphans(
    config: CollectorConfig, index: int, sink: ParquetSink, limits: Limits, prices: PriceTable
) -> None:
    """Replays and removes the WALs of workers that no longer exist (`--workers` was lowered)."""
    for directory in sorted((config.data / "wal").glob("w*")):
        suffix = directory.name[1:]
        if not suffix.isdigit() or int(suffix) < config.workers or int(suffix) % config.workers != index:
            continue
        lock = lock_directory(directory, timeout_s=config.wal_lock_timeout)
        orphan = WriteAheadLog(directory, fsync="never", on_commit=lambda *_: None)
        report = recover(
            orphan,
            root=config.data,
            writer=directory.name,
            sink=sink,
            limits=limits,
            quarantine=config.data / "wal" / "quarantine",
            prices=prices,
        )
        logger.info("adopted the WAL of %s: %d records", directory.name, report.records)
        shutil.rmtree(directory)
        os.close(lock)


async def run_worker(
    config: CollectorConfig,
    *,
    index: int,
    stop: asyncio.Event,
    on_ready: Callable[[BoundPorts], None],
) -> None:
    """Recovers, serves until `stop` is set, then drains: every acknowledged row ends in Parquet."""
    writer = f"w{index}"
    lock = lock_directory(wal_dir(config.data, writer), timeout_s=config.wal_lock_timeout)
    try:
        await _serve_locked(config, writer=writer, index=index, stop=stop, on_ready=on_ready)
    finally:
        os.close(lock)


async def _serve_locked(
    config: CollectorConfig,
    *,
    writer: str,
    index: int,
    stop: asyncio.Event,
    on_ready: Callable[[BoundPorts], None],
) -> None:
    root = config.data
    metrics = SelfMetrics()
    limits = Limits(max_attributes=config.max_attributes, max_depth=config.max_attribute_depth)
    sink = ParquetSink(root, settings=ParquetSettings(fsync=config.wal_fsync != "never"))
    prices = load_prices(config.prices)
    logger.info(
        "%s prices LLM spans with price table %s (%d models)", writer, prices.version, len(prices.models)
    )
    clean_tmp(root, writer)
    _adopt_orphans(config, index, sink, limits, prices)

    batcher_ref: list[Batcher] = []

    def on_commit(lsn: int, signal: str, item: object) -> None:
        assert isinstance(item, Converted)
        batcher_ref[0].accept(lsn, item.table, item.batch)

    fsync: FsyncMode = config.wal_fsync  # type: ignore[assignment]
    wal = WriteAheadLog(
        wal_dir(root, writer), fsync=fsync, segment_bytes=config.wal_segment_bytes, on_commit=on_commit
    )
    report = recover(
        wal,
        root=root,
        writer=writer,
        sink=sink,
        limits=limits,
        quarantine=root / "wal" / "quarantine",
        prices=prices,
    )
    metrics.add("mallard_recovered_records_total", report.records)
    wal.start()
    wal.release_upto(wal.next_lsn - 1)
    batcher = Batcher(
        sink,
        writer=writer,
        tables=TABLES,
        settings=BatcherSettings(
            flush_rows=config.flush_rows,
            flush_bytes=config.flush_bytes,
            flush_interval_s=config.flush_interval,
        ),
        metrics=metrics,
        on_committed=wal.release_upto,
    )
    batcher_ref.append(batcher)
    batcher.start(last_lsn=wal.next_lsn - 1)
    ingest = Ingest(
        wal,
        limits=limits,
        metrics=metrics,
        max_queue_bytes=config.max_queue_bytes,
        buffered_bytes=lambda: batcher.buffered_bytes,
        storage_healthy=lambda: batcher.healthy and wal.healthy,
        prices=prices,
    )
    metrics.gauge("mallard_queue_bytes", ingest.queue_bytes)
    metrics.gauge("mallard_wal_bytes", wal.size_bytes)

    try:
        grpc_server, grpc_port, http_socket = _bind(config, ingest)
    except (OSError, RuntimeError) as exc:  # a port taken or not ours to take: nothing was acked yet
        ingest.close()
        wal.close()
        batcher.close()
        raise StorageUnavailableError(f"cannot listen on {config.host}: {exc}") from None
    app = OtlpHttpApp(
        ingest,
        metrics=metrics,
        max_request_bytes=config.max_request_bytes,
        max_decompressed_bytes=config.max_decompressed_bytes,
        auth_token=config.auth_token,
        cors_allowed_origins=config.cors_allowed_origins,
        ready=lambda: batcher.healthy and wal.healthy and ingest.queue_bytes() < config.max_queue_bytes,
    )
    http_server = _QuietServer(
        uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            http="httptools",
            ssl_certfile=str(config.tls_cert) if config.tls_cert else None,
            ssl_keyfile=str(config.tls_key) if config.tls_key else None,
            timeout_graceful_shutdown=10,
            limit_concurrency=config.max_concurrent_requests,
        )
    )
    await grpc_server.start()
    http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
    while not http_server.started and not http_task.done():
        await asyncio.sleep(0.01)
    if http_task.done():
        await http_task  # raises what made it fail
    on_ready(BoundPorts(grpc=grpc_port, http=http_socket.getsockname()[1]))
    reporter = asyncio.create_task(_report_self_metrics(config, writer, metrics, ingest))
    try:
        await stop.wait()
    finally:
        reporter.cancel()
        logger.info("draining %s", writer)
        http_server.should_exit = True
        await asyncio.gather(grpc_server.stop(grace=10), http_task, return_exceptions=True)
        ingest.close()
        wal.close()
        batcher.close()
        wal.release_upto(batcher.committed_lsn())
        logger.info("%s stopped: everything acknowledged is in Parquet", writer)


def _bind(config: CollectorConfig, ingest: Ingest) -> tuple[grpc.aio.Server, int, socket.socket]:
    """The gRPC server with its port, and the HTTP listening socket; raises OSError/RuntimeError."""
    reuse_port = config.workers > 1
    grpc_server = create_grpc_server(
        ingest,
        max_request_bytes=config.max_request_bytes,
        auth_token=config.auth_token,
        reuse_port=reuse_port,
        max_concurrent_requests=config.max_concurrent_requests,
    )
    address = f"{config.host}:{config.grpc_port}"
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
        grpc_port = grpc_server.add_secure_port(address, credentials)
    else:
        grpc_port = grpc_server.add_insecure_port(address)
    http_socket = _listen_socket(config.host, config.http_port, reuse_port=reuse_port)
    return grpc_server, grpc_port, http_socket


async def _report_self_metrics(
    config: CollectorConfig, writer: str, metrics: SelfMetrics, ingest: Ingest
) -> None:
    """Writes the worker's own counters into the store, through the same path as any export."""
    if config.self_metrics_interval <= 0:
        return
    started = time.time_ns()
    while True:
        await asyncio.sleep(config.self_metrics_interval)
        payload = to_otlp(
            metrics,
            service="mallard",
            instance=f"{socket.gethostname()}/{writer}",
            start_unix_nano=started,
            now_unix_nano=time.time_ns(),
        )
        try:
            await ingest.export("metrics", payload)
        except Exception:  # overloaded or storage failing: skip this round, the counters keep counting
            logger.warning("could not write self-metrics this round", exc_info=True)
