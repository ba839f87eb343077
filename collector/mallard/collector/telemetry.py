"""The collector's own numbers: counters and gauges, exposed in the Prometheus text format."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

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

    def snapshot(self) -> tuple[list[tuple[str, tuple[tuple[str, str], ...], float]], dict[str, float]]:
        """Counters as (name, labels, value), sorted, and every gauge read now."""
        with self._lock:
            counters = [(name, labels, value) for (name, labels), value in sorted(self._counters.items())]
        return counters, {name: float(read()) for name, read in sorted(self._gauges.items())}

    def render_prometheus(self) -> str:
        counters, gauges = self.snapshot()
        lines: list[str] = []
        seen: set[str] = set()
        for name, labels, value in counters:
            if name not in seen:
                seen.add(name)
                lines.append(f"# HELP {name} {_HELP.get(name, name)}")
                lines.append(f"# TYPE {name} counter")
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
        for name, value in gauges.items():
            lines.append(f"# HELP {name} {_HELP.get(name, name)}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def to_otlp(
    metrics: SelfMetrics, *, service: str, instance: str, start_unix_nano: int, now_unix_nano: int
) -> bytes:
    """The counters (cumulative monotonic sums) and gauges as an OTLP metrics request, so the collector's
    own numbers land in the store like anyone else's (`service_name = 'mallard'`)."""
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    for key, text in (("service.name", service), ("service.instance.id", instance)):
        attribute = resource_metrics.resource.attributes.add()
        attribute.key, attribute.value.string_value = key, text
    scope = resource_metrics.scope_metrics.add()
    scope.scope.name = "mallard.collector"
    counters, gauges = metrics.snapshot()
    by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
    for name, labels, value in counters:
        by_name.setdefault(name, []).append((labels, value))
    for name, points in by_name.items():
        metric = scope.metrics.add()
        metric.name, metric.description = name, _HELP.get(name, "")
        metric.unit = "s" if name.endswith("_seconds_sum") else "1"
        metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
        metric.sum.is_monotonic = True
        for labels, value in points:
            point = metric.sum.data_points.add()
            point.start_time_unix_nano, point.time_unix_nano = start_unix_nano, now_unix_nano
            point.as_double = value
            for label, label_value in labels:
                attribute = point.attributes.add()
                attribute.key, attribute.value.string_value = label, label_value
    for name, value in gauges.items():
        metric = scope.metrics.add()
        metric.name, metric.description, metric.unit = name, _HELP.get(name, ""), "By"
        point = metric.gauge.data_points.add()
        point.time_unix_nano = now_unix_nano
        point.as_double = value
    return bytes(request.SerializeToString())
