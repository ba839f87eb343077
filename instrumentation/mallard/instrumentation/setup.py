"""`configure()`: tracer, meter and logger providers exporting OTLP to mallard, in one call.

Settings come from the arguments first, then the standard OpenTelemetry environment variables, then
defaults:

- service name: `service_name`, else `OTEL_SERVICE_NAME`, else `service.name` in
  `OTEL_RESOURCE_ATTRIBUTES`, else `unknown_service:python`;
- resource: `resource_attributes` merged over `OTEL_RESOURCE_ATTRIBUTES` (the arguments win);
- endpoint: `endpoint` (the collector's base address), else `OTEL_EXPORTER_OTLP_ENDPOINT` and the
  per-signal variables, else `localhost:4317` (gRPC) or `http://localhost:4318` (HTTP);
- protocol: `protocol` (`grpc` or `http/protobuf`), else `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`;
- headers: `headers`, else `OTEL_EXPORTER_OTLP_HEADERS`; `token` adds `authorization: Bearer <token>`;
- metric export interval: `metric_interval_s`, else `OTEL_METRIC_EXPORT_INTERVAL` (ms), else 60 s.

The providers become OpenTelemetry's global ones, so every instrumentation library (Flask, requests,
…) uses them. `configure()` is idempotent: later calls return the first call's `Telemetry` (with a
warning when they ask for other settings; OpenTelemetry allows one global provider per signal).
Python `logging` records at `log_level` and above flow to mallard as OTel logs, with the trace and
span ids of the span current when they were logged. `shutdown()` flushes everything and stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import _logs, context, metrics, trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.util.re import parse_env_headers

PROTOCOLS: Final = ("grpc", "http/protobuf")
_SIGNAL_PATHS: Final = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What `configure()` set up."""

    service_name: str
    protocol: str
    endpoint: str | None  # None: the exporters' own default or environment variables
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider
    log_handler: logging.Handler | None
    requested: tuple[Any, ...]  # the arguments of the call that made it

    def shutdown(self) -> None:
        """Flushes every pending span, metric and log record, then stops the exporters."""
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()


class _State:
    """The process's one configuration (OpenTelemetry's providers are process-global too)."""

    lock = threading.Lock()
    active: Telemetry | None = None


def configure(
    service_name: str | None = None,
    endpoint: str | None = None,
    *,
    protocol: str | None = None,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    resource_attributes: Mapping[str, str | bool | int | float] | None = None,
    logs: bool = True,
    log_level: int = logging.INFO,
    metric_interval_s: float | None = None,
) -> Telemetry:
    """Sets up OTLP export of traces, metrics and logs (see the module docstring for the settings)."""
    requested = (
        service_name,
        endpoint,
        protocol,
        dict(headers or {}),
        token,
        dict(resource_attributes or {}),
        logs,
        log_level,
        metric_interval_s,
    )
    with _State.lock:
        if _State.active is not None:
            if requested != _State.active.requested:
                warnings.warn(
                    "mallard.instrumentation is already configured; these settings are ignored "
                    "(call shutdown() first to configure it again)",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return _State.active
        chosen = (protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
        if chosen == "http":
            chosen = "http/protobuf"
        if chosen not in PROTOCOLS:
            raise ValueError(f"protocol is one of {', '.join(PROTOCOLS)}, got {chosen!r}")
        attributes: dict[str, Any] = dict(resource_attributes or {})
        if service_name is not None:
            attributes[SERVICE_NAME] = service_name
        resource = Resource.create(attributes)
        export_headers = _headers(headers, token)
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(_exporter("traces", chosen, endpoint, export_headers))
        )
        interval_ms = None if metric_interval_s is None else metric_interval_s * 1000
        reader = PeriodicExportingMetricReader(
            _exporter("metrics", chosen, endpoint, export_headers), export_interval_millis=interval_ms
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(_exporter("logs", chosen, endpoint, export_headers))
        )
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
        _logs.set_logger_provider(logger_provider)
        handler = None
        if logs:
            handler = OtelLogHandler(logger_provider, level=log_level)
            root = logging.getLogger()
            root.addHandler(handler)
            if root.level > log_level or root.level == logging.NOTSET:
                root.setLevel(log_level)
        _State.active = Telemetry(
            service_name=str(resource.attributes.get(SERVICE_NAME)),
            protocol=chosen,
            endpoint=endpoint,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            logger_provider=logger_provider,
            log_handler=handler,
            requested=requested,
        )
        return _State.active


def shutdown() -> None:
    """Flushes and stops what `configure()` set up; a no-op when it was not called. OpenTelemetry's
    global providers cannot be replaced, so a later `configure()` in the same process sets up new
    exporters but the global providers stay the stopped ones: call it once per process."""
    with _State.lock:
        if _State.active is not None:
            _State.active.shutdown()
            _State.active = None


def _headers(headers: Mapping[str, str] | None, token: str | None) -> dict[str, str] | None:
    """The export headers: the argument, else `OTEL_EXPORTER_OTLP_HEADERS`; plus the bearer token.
    None leaves the exporters to read the environment themselves."""
    if headers is None and token is None:
        return None
    merged = dict(
        headers
        if headers is not None
        else parse_env_headers(os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""), liberal=True)
    )
    if token is not None:
        merged["authorization"] = f"Bearer {token}"
    return merged


def _exporter(signal: str, protocol: str, endpoint: str | None, headers: dict[str, str] | None) -> Any:
    """The OTLP exporter of `signal`. An explicit `endpoint` is the collector's base address
    (`host:port` or `http://host:port` for gRPC; `http://host:port` for HTTP, the signal's path is
    appended); without it the exporter reads the environment variables or uses its default."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        grpc_classes: dict[str, Any] = {
            "traces": OTLPSpanExporter,
            "metrics": OTLPMetricExporter,
            "logs": OTLPLogExporter,
        }
        target = None
        if endpoint is not None:
            target = endpoint if "://" in endpoint else f"http://{endpoint}"
        return grpc_classes[signal](endpoint=target, headers=headers)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

    http_classes: dict[str, Any] = {"traces": HttpSpans, "metrics": HttpMetrics, "logs": HttpLogs}
    url = None
    if endpoint is not None:
        base = endpoint if "://" in endpoint else f"http://{endpoint}"
        url = base.rstrip("/") + _SIGNAL_PATHS[signal]
    return http_classes[signal](endpoint=url, headers=headers)


# Python logging levels → OTel severity numbers (the log data model's mapping for these five).
_SEVERITY: Final = (
    (logging.CRITICAL, SeverityNumber.FATAL),
    (logging.ERROR, SeverityNumber.ERROR),
    (logging.WARNING, SeverityNumber.WARN),
    (logging.INFO, SeverityNumber.INFO),
    (logging.DEBUG, SeverityNumber.DEBUG),
)
_FORMATTER: Final = logging.Formatter()
_RESERVED: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class OtelLogHandler(logging.Handler):
    """A `logging` handler that emits each record as an OTel log record through `provider`, in the
    context (trace and span) current when it was logged. Attributes: `code.*` (file, line,
    function), `exception.*` for `exc_info`, and the `extra=` fields of the call."""

    def __init__(self, provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attributes: dict[str, Any] = {
                "code.file.path": record.pathname,
                "code.line.number": record.lineno,
                "code.function.name": record.funcName,
            }
            for key, value in vars(record).items():
                if key not in _RESERVED and isinstance(value, str | bool | int | float):
                    attributes[key] = value
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                attributes["exception.type"] = type(error).__qualname__
                attributes["exception.message"] = str(error)
                attributes["exception.stacktrace"] = (self.formatter or _FORMATTER).formatException(
                    record.exc_info
                )
            severity = next(
                (number for level, number in _SEVERITY if record.levelno >= level), SeverityNumber.TRACE
            )
            self._provider.get_logger(record.name).emit(
                LogRecord(
                    timestamp=int(record.created * 1e9),
                    context=context.get_current(),
                    observed_timestamp=time.time_ns(),
                    severity_text=record.levelname,
                    severity_number=severity,
                    body=record.getMessage(),
                    attributes=attributes,
                )
            )
        except Exception:  # a logging handler must not raise into the application
            self.handleError(record)
