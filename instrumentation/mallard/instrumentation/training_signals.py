"""What a training run emits: its spans, metric instruments and log events (`RunSignals`), through
OpenTelemetry's global providers (the ones `configure()` sets up)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import _logs, context, metrics, trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, Status, StatusCode

from mallard.instrumentation.tensors import cuda_memory, cuda_utilization, value_histogram

if TYPE_CHECKING:
    import torch

    from mallard.instrumentation.training import TrainingRun

# seconds: 50 µs to 60 s
DURATION_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
GPU_MEMORY: Final = {
    "ml.gpu.memory.allocated": "GPU memory held by tensors (torch.cuda.memory_allocated)",
    "ml.gpu.memory.reserved": "GPU memory held by torch's caching allocator (torch.cuda.memory_reserved)",
    "ml.gpu.memory.max_allocated": "Peak GPU memory held by tensors (torch.cuda.max_memory_allocated)",
}
GAUGES: Final = (
    ("ml.training.loss", "1", "Training loss"),
    ("ml.training.learning_rate", "1", "Learning rate (parameter group 0)"),
    ("ml.training.grad_norm", "1", "Total L2 norm of the gradients"),
    ("ml.training.throughput", "{sample}/s", "Training samples per second"),
)
SEVERITY_TEXT: Final = {SeverityNumber.INFO: "INFO", SeverityNumber.WARN: "WARNING"}  # as Python logging


class StepRecord:
    """One ended step: what the run counted, and what a sampled step adds."""

    __slots__ = (
        "duration_ns",
        "end_ns",
        "epoch",
        "grad_norm",
        "learning_rate",
        "loss",
        "samples",
        "step",
        "wait_ns",
        "window",
    )

    def __init__(self, step: int, end_ns: int, duration_ns: int, wait_ns: int, samples: int) -> None:
        self.step, self.end_ns, self.duration_ns = step, end_ns, duration_ns
        self.wait_ns, self.samples = wait_ns, samples
        self.loss: float | None = None
        self.epoch: int | None = None
        self.learning_rate: float | None = None
        self.grad_norm: float | None = None
        self.window: tuple[int, int] | None = None  # samples, ns since the previous sampled step


class RunSignals:
    """The run span (started here), the open epoch span, the instruments, the log events."""

    def __init__(self, scope: str, run: TrainingRun, attributes: dict[str, Any]) -> None:
        self.failures = 0  # telemetry calls that raised (logged by the run)
        self._tracer = trace.get_tracer(scope)
        self._logger = _logs.get_logger(scope)
        self.run_span = self._tracer.start_span("ml.training.run", attributes=attributes)
        self.run_context = trace.set_span_in_context(self.run_span)
        self._epoch_span: Span | None = None
        self._epoch_context = self.run_context
        self._base = {"ml.run.id": run.run_id, "ml.run.name": run.name}
        self._cuda: torch.device | None = run.device if run.device.type == "cuda" else None
        self._gpu_base = {**self._base, "hw.id": str(attributes["ml.device"]), "hw.type": "gpu"}
        self.ended = False
        self.last: dict[str, float] = {}  # gauge name -> value at the last sampled step
        meter = metrics.get_meter(scope, attributes={"ml.run.id": run.run_id})  # a meter per run
        self.step_duration = meter.create_histogram(
            "ml.training.step.duration",
            unit="s",
            description="Duration of the sampled training steps",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        # read at each collection (nothing per step): the run's totals and the last sampled values
        for name, unit, description, read in (
            ("ml.training.steps", "{step}", "Training steps", lambda: run.steps),
            ("ml.training.samples", "{sample}", "Training samples processed", lambda: run.samples),
            ("ml.training.step.time", "s", "Time spent in training steps", lambda: run.step_ns / 1e9),
        ):
            meter.create_observable_counter(name, [self._observer(read)], unit, description)
        if run.observes_loader:
            meter.create_observable_counter(
                "ml.training.data_wait.time",
                [self._observer(lambda: run.wait_ns_total / 1e9)],
                "s",
                "Time spent waiting for the data loader",
            )
        for name, unit, description in GAUGES:
            meter.create_observable_gauge(
                name, [self._observer(partial(self.last.get, name))], unit, description
            )
        if self._cuda is not None:
            cuda = self._cuda
            for name, description in GPU_MEMORY.items():
                meter.create_observable_gauge(
                    name,
                    [self._observer(partial(_memory, cuda, name), self._gpu_base)],
                    "By",
                    description,
                )
            meter.create_observable_gauge(
                "hw.gpu.utilization",
                [self._observer(lambda: cuda_utilization(cuda), self._gpu_base)],
                "1",
                "GPU utilisation (0..1), from NVML",
            )

    def _observer(
        self, read: Callable[[], float | None], attributes: dict[str, str] | None = None
    ) -> Callable[[CallbackOptions], list[Observation]]:
        """A callback reporting `read()` (nothing when None) until the collection after the run ended."""
        labels = attributes or self._base
        finished = False

        def observe(options: CallbackOptions) -> list[Observation]:
            nonlocal finished
            if finished:
                return []
            finished = self.ended
            value = read()
            return [] if value is None else [Observation(value, labels)]

        return observe

    # spans -------------------------------------------------------------------------------------

    def open_epoch(self, index: int) -> None:
        self._epoch_span = self._tracer.start_span(
            "ml.training.epoch", context=self.run_context, attributes={**self._base, "ml.epoch": index}
        )
        self._epoch_context = trace.set_span_in_context(self._epoch_span)

    def close_epoch(self, attributes: dict[str, Any]) -> None:
        if self._epoch_span is not None:
            self._epoch_span.set_attributes(attributes)
            self._epoch_span.end()
        self._epoch_span, self._epoch_context = None, self.run_context

    def end_run(self, attributes: dict[str, Any], error: BaseException | None) -> None:
        self.run_span.set_attributes({**attributes, "ml.telemetry.failures": self.failures})
        if error is not None:
            self.run_span.record_exception(error)
            self.run_span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
        self.run_span.end()
        self.ended = True

    def step(self, record: StepRecord, sampled: bool, alarm: bool, waits: bool) -> None:
        """The step span (created after the fact, with the step's own start and end), the metric points
        of a sampled step, and the non-finite-loss event."""
        end_wall = time.time_ns() - (time.perf_counter_ns() - record.end_ns)
        attributes: dict[str, Any] = {**self._base, "ml.step": record.step}
        if record.epoch is not None:
            attributes["ml.epoch"] = record.epoch
        seconds = record.duration_ns / 1e9
        attributes["ml.training.step.duration"] = seconds
        attributes["ml.training.batch_size"] = record.samples
        if record.samples and record.duration_ns:
            attributes["ml.training.throughput"] = record.samples / seconds
        if waits:
            attributes["ml.training.data_wait.duration"] = record.wait_ns / 1e9
            attributes["ml.training.compute.duration"] = (record.duration_ns - record.wait_ns) / 1e9
        for key, value in (
            ("ml.training.loss", record.loss),
            ("ml.training.learning_rate", record.learning_rate),
            ("ml.training.grad_norm", record.grad_norm),
        ):
            if value is not None:
                attributes[key] = value
        gpu = cuda_memory(self._cuda) if self._cuda is not None and sampled else {}
        attributes.update(gpu)
        span = self._tracer.start_span(
            "ml.training.step",
            context=self._epoch_context,
            attributes=attributes,
            start_time=end_wall - record.duration_ns,
        )
        if alarm:
            self._nonfinite(span, record)
        span.end(end_time=end_wall)
        if sampled:
            self._record_step_metrics(record, attributes)

    def _record_step_metrics(self, record: StepRecord, attributes: dict[str, Any]) -> None:
        self.step_duration.record(record.duration_ns / 1e9, self._base)
        window = record.window
        if window is not None and window[0] and window[1]:
            self.last["ml.training.throughput"] = window[0] / (window[1] / 1e9)
        for name in ("ml.training.loss", "ml.training.learning_rate", "ml.training.grad_norm"):
            if name in attributes:
                self.last[name] = attributes[name]

    def _nonfinite(self, span: Span, record: StepRecord) -> None:
        attributes: dict[str, Any] = {**self._base, "ml.step": record.step, "ml.training.loss": record.loss}
        if record.epoch is not None:
            attributes["ml.epoch"] = record.epoch
        span.add_event("ml.training.nonfinite_loss", attributes)
        span.set_status(Status(StatusCode.ERROR, f"non-finite loss {record.loss}"))
        self._emit(
            "ml.training.nonfinite_loss",
            f"non-finite loss {record.loss} at step {record.step}",
            attributes,
            SeverityNumber.WARN,
            trace.set_span_in_context(span),
        )

    # metrics and events ------------------------------------------------------------------------

    def distributions(self, model: torch.nn.Module, step: int, bins: int) -> None:
        """One `ml.training.distribution` log record per parameter tensor and per gradient."""
        where = self._epoch_context
        for name, parameter in model.named_parameters():
            for kind, tensor in (("parameter", parameter), ("gradient", parameter.grad)):
                if tensor is None:
                    continue
                attributes = {
                    **self._base,
                    "ml.step": step,
                    "ml.parameter.name": name,
                    "ml.distribution.kind": kind,
                    **value_histogram(tensor, bins),
                }
                self._emit(
                    "ml.training.distribution", f"{kind} {name}", attributes, SeverityNumber.INFO, where
                )

    def checkpoint(self, attributes: dict[str, Any]) -> None:
        attributes = {**self._base, **attributes}
        self.run_span.add_event("ml.training.checkpoint", attributes)
        body = f"checkpoint {attributes['ml.checkpoint.path']} at step {attributes['ml.step']}"
        self._emit("ml.training.checkpoint", body, attributes, SeverityNumber.INFO, self.run_context)

    def _emit(
        self,
        event: str,
        body: str,
        attributes: dict[str, Any],
        severity: SeverityNumber,
        where: context.Context,
    ) -> None:
        self._logger.emit(
            LogRecord(
                timestamp=time.time_ns(),
                context=where,
                severity_text=SEVERITY_TEXT[severity],
                severity_number=severity,
                body=body,
                attributes=attributes,
                event_name=event,
            )
        )


def _memory(device: torch.device, name: str) -> float:
    return cuda_memory(device)[name]
