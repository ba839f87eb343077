"""What a training run emits: its spans, metric instruments and log events (`RunSignals`), through
OpenTelemetry's global providers (the ones `configure()` sets up)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import _logs, context, metrics, trace
from opentelemetry._logs import LogRecord, SeverityNumber
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
SEVERITY_TEXT: Final = {SeverityNumber.INFO: "INFO", SeverityNumber.WARN: "WARNING"}  # as Python logging
GPU_UTILIZATION_INTERVAL_NS: Final = 1_000_000_000  # NVML is slow to ask: at most once a second


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
        self.window: tuple[int, int, int, int] | None = None  # steps, samples, ns, wait ns


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
        self._next_utilization_ns = 0
        meter = metrics.get_meter(scope)
        self.steps = meter.create_counter("ml.training.steps", unit="{step}", description="Training steps")
        self.samples = meter.create_counter(
            "ml.training.samples", unit="{sample}", description="Training samples processed"
        )
        self.step_time = meter.create_counter(
            "ml.training.step.time", unit="s", description="Time spent in training steps"
        )
        self.wait_time = meter.create_counter(
            "ml.training.data_wait.time", unit="s", description="Time spent waiting for the data loader"
        )
        self.step_duration = meter.create_histogram(
            "ml.training.step.duration",
            unit="s",
            description="Duration of the sampled training steps",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.wait_duration = meter.create_histogram(
            "ml.training.data_wait.duration",
            unit="s",
            description="Data-loader wait of the sampled training steps",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.loss = meter.create_gauge("ml.training.loss", unit="1", description="Training loss")
        self.learning_rate = meter.create_gauge(
            "ml.training.learning_rate", unit="1", description="Learning rate (parameter group 0)"
        )
        self.grad_norm = meter.create_gauge(
            "ml.training.grad_norm", unit="1", description="Total L2 norm of the gradients"
        )
        self.throughput = meter.create_gauge(
            "ml.training.throughput", unit="{sample}/s", description="Training samples per second"
        )
        if self._cuda is not None:
            self.gpu_memory = {
                key: meter.create_gauge(key, unit="By", description=description)
                for key, description in GPU_MEMORY.items()
            }
            self.gpu_utilization = meter.create_gauge(
                "hw.gpu.utilization", unit="1", description="GPU utilisation (0..1)"
            )

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
            self._record_step_metrics(record, attributes, gpu, waits)

    def _record_step_metrics(
        self, record: StepRecord, attributes: dict[str, Any], gpu: dict[str, int], waits: bool
    ) -> None:
        base = self._base
        self.step_duration.record(record.duration_ns / 1e9, base)
        if waits:
            self.wait_duration.record(record.wait_ns / 1e9, base)
        window = record.window
        if window is not None and window[1] and window[2]:
            self.throughput.set(window[1] / (window[2] / 1e9), base)
        for key, gauge in (
            ("ml.training.loss", self.loss),
            ("ml.training.learning_rate", self.learning_rate),
            ("ml.training.grad_norm", self.grad_norm),
        ):
            if key in attributes:
                gauge.set(attributes[key], base)
        if self._cuda is not None:
            for key, value in gpu.items():
                self.gpu_memory[key].set(value, self._gpu_base)
            now = time.monotonic_ns()
            if now >= self._next_utilization_ns:
                self._next_utilization_ns = now + GPU_UTILIZATION_INTERVAL_NS
                utilization = cuda_utilization(self._cuda)
                if utilization is not None:
                    self.gpu_utilization.set(utilization, self._gpu_base)

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

    def add_counts(self, window: tuple[int, int, int, int], waits: bool) -> None:
        steps, samples, step_ns, wait_ns = window
        self.steps.add(steps, self._base)
        if samples:
            self.samples.add(samples, self._base)
        self.step_time.add(step_ns / 1e9, self._base)
        if waits:
            self.wait_time.add(wait_ns / 1e9, self._base)

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
