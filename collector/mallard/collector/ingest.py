"""The one path every OTLP request takes, whatever its transport: convert, log durably, acknowledge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from mallard.collector.arrow import Converted, Limits, convert
from mallard.collector.errors import OverloadedError, PermanentError, StorageUnavailableError
from mallard.collector.pricing import PriceTable, load_prices
from mallard.collector.telemetry import SelfMetrics
from mallard.collector.wal import WriteAheadLog

RETRY_AFTER_S: Final = 1
# rough size of the converted rows per byte of OTLP protobuf (measured ~2x on the ingest benchmark)
ARROW_BYTES_PER_PROTOBUF_BYTE: Final = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportResult:
    """What the client is told: how many items were rejected, and why."""

    accepted: int
    rejected: int
    message: str


class Ingest:
    """Converts a request to Arrow, appends it to the WAL and answers once it is durable.

    Conversion happens before the append, so a request that cannot be stored is refused
    (400) instead of acknowledged; the WAL keeps the raw protobuf, replay converts it again.
    """

    def __init__(
        self,
        wal: WriteAheadLog,
        *,
        limits: Limits,
        metrics: SelfMetrics,
        max_queue_bytes: int,
        buffered_bytes: Callable[[], int],
        storage_healthy: Callable[[], bool],
        prices: PriceTable | None = None,
    ) -> None:
        """`prices` price the spans' `gen_ai_cost_usd`; None: the built-in table."""
        self._wal = wal
        self._limits = limits
        self._prices = load_prices() if prices is None else prices
        self._metrics = metrics
        self._max_queue_bytes = max_queue_bytes
        self._buffered_bytes = buffered_bytes
        self._storage_healthy = storage_healthy
        self._admitted_bytes = 0  # changed only on the event loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mallard-convert")

    def refused(self, signal: str, reason: str) -> None:
        """Counts a request a receiver refused before it reached `export` (auth, size, media type)."""
        self._metrics.add("mallard_refused_requests_total", signal=signal, reason=reason)

    def queue_bytes(self) -> int:
        """Acknowledged bytes not yet in Parquet, plus an estimate for requests admitted and in flight."""
        return self._buffered_bytes() + self._wal.pending_bytes + self._admitted_bytes

    async def export(self, signal: str, payload: bytes) -> ExportResult:
        """Raises PermanentError, OverloadedError or StorageUnavailableError; see `status`."""
        try:
            return await self._export(signal, payload)
        except PermanentError:
            self._metrics.add("mallard_refused_requests_total", signal=signal, reason="invalid")
            raise
        except OverloadedError:
            self._metrics.add("mallard_refused_requests_total", signal=signal, reason="overloaded")
            raise
        except StorageUnavailableError:
            self._metrics.add("mallard_refused_requests_total", signal=signal, reason="unavailable")
            raise

    async def _export(self, signal: str, payload: bytes) -> ExportResult:
        if self.queue_bytes() >= self._max_queue_bytes:
            if not self._storage_healthy():
                raise StorageUnavailableError("storage is failing and the queue is full: retry later")
            raise OverloadedError(
                f"{self.queue_bytes()} bytes are waiting to be written: retry in {RETRY_AFTER_S}s"
            )
        # reserve room at admission, so concurrent requests see each other before they are converted
        reserved = ARROW_BYTES_PER_PROTOBUF_BYTE * len(payload)
        self._admitted_bytes += reserved
        try:
            return await self._admitted(signal, payload)
        finally:
            self._admitted_bytes -= reserved

    async def _admitted(self, signal: str, payload: bytes) -> ExportResult:
        received = time.time_ns()
        loop = asyncio.get_running_loop()
        converted: Converted = await loop.run_in_executor(
            self._executor, self._convert, signal, payload, received
        )
        rows = converted.batch.num_rows
        if rows:
            future = self._wal.append(signal, payload, received_unix_nano=received, item=converted)
            await asyncio.wrap_future(future)
        self._metrics.add("mallard_accepted_items_total", rows, signal=signal)
        if converted.rejected:
            self._metrics.add("mallard_refused_items_total", converted.rejected, signal=signal)
        return ExportResult(accepted=rows, rejected=converted.rejected, message=converted.message)

    def _convert(self, signal: str, payload: bytes, received: int) -> Converted:
        return convert(signal, payload, limits=self._limits, prices=self._prices, received_unix_nano=received)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
