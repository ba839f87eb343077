"""What a training run emits: its spans and log events (`RunSignals`), and the metric instruments,
which all the runs of a process share (`Instruments`: made once, their callbacks read every open
run), through OpenTelemetry's global providers (the ones `configure()` sets up)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

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
SCOPE: Final = "mallard.instrumentation.training"
ENDED_KEPT: Final = 256  # ended runs waiting for their last collection (none comes without an SDK)


class Counts(Protocol):
    """What the counters read: a `TrainingRun` while it is open, its `Totals` once ended."""

    @property
    def steps(self) -> int: ...
    @property
    def samples(self) -> int: ...
    @property
    def step_ns(self) -> int: ...
    @property
    def wait_ns_total(self) -> int: ...
    @property
    def observes_loader(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Totals:
    """An ended run's counts (the run itself, and its model, are not kept for the last collection)."""

    steps: int
    samples: int
    step_ns: int
    wait_ns_total: int
    observes_loader: bool


class StepRecord:
    """One ended step: what the run counted, and what a sampled step adds."""

    __slots__ = (
        "duration_ns",
        "end_ns",
        "epoch",
        "grad_norm",
        "learning_rate",
        "loss",
        "sampled",
        "samples",
        "step",
        "wait_ns",
        "window",
    )

    def __init__(
        self, step: int, end_ns: int, duration_ns: int, wait_ns: int, samples: int, *, sampled: bool
    ) -> None:
        self.step, self.end_ns, self.duration_ns = step, end_ns, duration_ns
        self.wait_ns, self.samples, self.sampled = wait_ns, samples, sampled
        self.loss: float | None = None
        self.epoch: int | None = None
        self.learning_rate: float | None = None
        self.grad_norm: float | None = None
        self.window: tuple[int, int] | None = None  # samples, ns since the previous sampled step


class Instruments:
    """The training metric instruments, one set per process: a sweep that starts hundreds of runs
    makes no new instrument, and a collection reads each open run once per series. Counters and
    gauges are observable (nothing per step): their callbacks read the registered runs; a run that
    ended is reported at one more collection, then dropped."""

    _made: Instruments | None = None
    _making = threading.Lock()

    @classmethod
    def get(cls) -> Instruments:
        with cls._making:
            if cls._made is None:
                cls._made = cls()
            return cls._made

    def __init__(self) -> None:
        self._runs: list[RunSignals] = []
        self._lock = threading.Lock()
        meter = metrics.get_meter(SCOPE)
        self.step_duration = meter.create_histogram(
            "ml.training.step.duration",
            unit="s",
            description="Duration of the sampled training steps",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        Read = Callable[[RunSignals], float | None]
        counters: tuple[tuple[str, str, str, Read], ...] = (
            ("ml.training.steps", "{step}", "Training steps", _steps),
            ("ml.training.samples", "{sample}", "Training samples processed", _samples),
            ("ml.training.step.time", "s", "Time spent in training steps", _step_time),
            ("ml.training.data_wait.time", "s", "Time spent waiting for the data loader", _data_wait),
        )
        gauges: list[tuple[str, str, str, Read, bool]]
        gauges = [(name, unit, description, _last(name), False) for name, unit, description in GAUGES]
        gauges += [(name, "By", text, _gpu_memory(name), True) for name, text in GPU_MEMORY.items()]
        gauges.append(("hw.gpu.utilization", "1", "GPU utilisation (0..1), from NVML", _gpu_use, True))
        self.callbacks = len(counters) + len(gauges)
        for index, (name, unit, description, read) in enumerate(counters):
            meter.create_observable_counter(name, [self._callback(index, read)], unit, description)
        for index, (name, unit, description, read, gpu) in enumerate(gauges, len(counters)):
            callback = self._callback(index, read, gpu=gpu)
            meter.create_observable_gauge(name, [callback], unit, description)

    def register(self, run: RunSignals) -> None:
        with self._lock:
            ended = [other for other in self._runs if other.ended]
            for stale in ended[: max(0, len(ended) - ENDED_KEPT)]:
                self._runs.remove(stale)
            self._runs.append(run)

    def _callback(
        self, index: int, read: Callable[[RunSignals], float | None], *, gpu: bool = False
    ) -> Callable[[CallbackOptions], list[Observation]]:
        """Callback `index`: `read(run)` for each registered run (for its GPU, with `gpu`; None
        reports nothing). An ended run is reported once more; when every callback has done so, the
        run is dropped."""

        def observe(options: CallbackOptions) -> list[Observation]:
            with self._lock:
                runs = list(self._runs)
            found = []
            for run in runs:
                if run.ended:
                    if index in run.final_reports:
                        continue
                    run.final_reports.add(index)
                    if len(run.final_reports) == self.callbacks:
                        self._forget(run)
                if gpu and run.cuda is None:
                    continue
                value = read(run)
                if value is not None:
                    found.append(Observation(value, run.gpu_labels if gpu else run.labels))
            return found

        return observe

    def _forget(self, run: RunSignals) -> None:
        with self._lock:
            if run in self._runs:
                self._runs.remove(run)


def _steps(run: RunSignals) -> float | None:
    return run.counts.steps


def _samples(run: RunSignals) -> float | None:
    return run.counts.samples


def _step_time(run: RunSignals) -> float | None:
    return run.counts.step_ns / 1e9


def _data_wait(run: RunSignals) -> float | None:
    return run.counts.wait_ns_total / 1e9 if run.counts.observes_loader else None


def _last(name: str) -> Callable[[RunSignals], float | None]:
    return lambda run: run.last.get(name)


def _gpu_memory(name: str) -> Callable[[RunSignals], float | None]:
    return lambda run: None if run.cuda is None else cuda_memory(run.cuda)[name]


def _gpu_use(run: RunSignals) -> float | None:
    return None if run.cuda is None else cuda_utilization(run.cuda)


class RunSignals:
    """The run span (started here), the open epoch span, the log events; the run's series in the
    shared `Instruments`."""

    def __init__(self, run: TrainingRun, attributes: dict[str, Any]) -> None:
        self.failures = 0  # telemetry calls that raised (logged by the run)
        self.counts: Counts = run
        self._tracer = trace.get_tracer(SCOPE)
        self._logger = _logs.get_logger(SCOPE)
        self.run_span = self._tracer.start_span("ml.training.run", attributes=attributes)
        self.run_context = trace.set_span_in_context(self.run_span)
        self._epoch_span: Span | None = None
        self._epoch_context = self.run_context
        self._base = {"ml.run.id": run.run_id, "ml.run.name": run.name}
        self.labels = self._base
        self.cuda: torch.device | None = run.device if run.device.type == "cuda" else None
        self.gpu_labels = {**self._base, "hw.id": str(attributes["ml.device"]), "hw.type": "gpu"}
        self.ended = False
        self.final_reports: set[int] = set()  # the `Instruments` callbacks that reported it ended
        self.last: dict[str, float] = {}  # gauge name -> value at the last sampled step
        self._instruments = Instruments.get()
        self._instruments.register(self)

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
        run = self.counts
        self.counts = Totals(run.steps, run.samples, run.step_ns, run.wait_ns_total, run.observes_loader)
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
        gpu = cuda_memory(self.cuda) if self.cuda is not None and sampled else {}
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
        self._instruments.step_duration.record(record.duration_ns / 1e9, self._base)
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
