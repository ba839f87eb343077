"""mallard.instrumentation: one-call OpenTelemetry set-up for services and training jobs, and the
integrations that send through it: Flask, PyTorch training and inference, model quality, LLM calls.

Imports nothing else of mallard and needs only the OpenTelemetry SDK and OTLP exporters: Flask and
torch are imported when an integration is called (`pip install "mallard[flask]"`, `"mallard[torch]"`).
"""

from mallard.instrumentation.flask import instrument_flask
from mallard.instrumentation.inference import ModelInstrumentation, instrument_model
from mallard.instrumentation.llm import LlmSpan, current_llm_span, llm_call, llm_span
from mallard.instrumentation.quality import log_label, log_prediction
from mallard.instrumentation.setup import OtelLogHandler, Telemetry, configure, shutdown
from mallard.instrumentation.training import TrainingRun, TrainingSettings, autolog, training_run

__all__ = [
    "LlmSpan",
    "ModelInstrumentation",
    "OtelLogHandler",
    "Telemetry",
    "TrainingRun",
    "TrainingSettings",
    "autolog",
    "configure",
    "current_llm_span",
    "instrument_flask",
    "instrument_model",
    "llm_call",
    "llm_span",
    "log_label",
    "log_prediction",
    "shutdown",
    "training_run",
]
