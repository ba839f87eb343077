"""The collector's own numbers: counters and gauges, exposed in the Prometheus text format."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

_HELP: Final[dict[str, str]] = {
    "mallard_accepted_items_total": "Spans, data points and log records acknowledged, by signal.",
    "mallard_refused_items_total": "Items rejected as invalid (partial success), by signal.",
    "mallard_refused_requests_total": "Requests answered with an error, by signal and reason.",
    "mallard_committed_rows_total": "Rows committed to Parquet, by table.",
    "mallard_flushes_total": "Parquet flushes, by table and outcome.",
    "mallard_flush_seconds_sum": "Seconds spent in Parquet flushes, by table.",
    "mallard_queue_bytes": "Bytes of acknowledged data waiting to be committed to Parquet.",
    "mallard_wal_bytes": "Bytes in write-ahead log segments on disk.",
    "mallard_recovered_records_total": "WAL records replayed at start-up.",
}


class SelfMetrics:
    """Thread-safe counters keyed by (name, labels); gauges are read when rendered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[str, Callable[[], float]] = {}

    def add(self, name: str, value: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0)

    def render_prometheus(self) -> str:
        with self._lock:
            counters = sorted(self._counters.items())
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in counters:
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {_HELP.get(name, name)}")
                lines.append(f"# TYPE {name} counter")
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
        for name, read in sorted(self._gauges.items()):
            lines.append(f"# HELP {name} {_HELP.get(name, name)}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {read():g}")
        return "\n".join(lines) + "\n"
