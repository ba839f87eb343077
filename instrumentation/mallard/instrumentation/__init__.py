"""mallard.instrumentation: one-call OpenTelemetry set-up for services and training jobs.

Imports nothing else of mallard; needs only the OpenTelemetry SDK and OTLP exporters.
"""

from mallard.instrumentation.setup import OtelLogHandler, Telemetry, configure, shutdown

__all__ = ["OtelLogHandler", "Telemetry", "configure", "shutdown"]
