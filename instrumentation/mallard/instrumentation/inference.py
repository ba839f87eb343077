"""PyTorch inference as OpenTelemetry spans and histograms: `instrument_model(model)` wraps the model's
`forward` (hooks do not see exceptions) and records every call's latency and batch size, a span
every `sample_every` calls, and every failing call as an error span and an `error.type` point.
Names and units: `docs/semconv.md`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mallard.instrumentation.tensors import (
    batch_size_of,
    device_attributes,
    model_attributes,
    model_device,
    require_torch,
)
from mallard.instrumentation.training_signals import DURATION_BUCKETS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SCOPE: Final = "mallard.instrumentation.inference"
BATCH_BUCKETS: Final = tuple(float(2**i) for i in range(13))  # 1 to 4096
_MARK: Final = "_mallard_instrumented"


class ModelInstrumentation:
    """The instrumentation of one model; `remove()` restores its own `forward`."""

    def __init__(self, model: torch.nn.Module, *, name: str | None, sample_every: int) -> None:
        if sample_every < 1:
            raise ValueError(f"sample_every is at least 1, got {sample_every}")
        if getattr(model.forward, _MARK, False):
            raise ValueError("this model is instrumented already")
        self.model = model
        self.sample_every = sample_every
        self.calls = 0
        self.failures = 0  # telemetry calls that raised (the first one is logged)
        description = model_attributes(model, name)
        self.name = str(description["ml.model.name"])
        self._span_attributes: dict[str, Any] = description
        self._base = {"ml.model.name": self.name}
        self._tracer = trace.get_tracer(SCOPE)
        meter = metrics.get_meter(SCOPE)
        self._duration = meter.create_histogram(
            "ml.inference.duration",
            unit="s",
            description="Duration of the model's forward calls",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._batch = meter.create_histogram(
            "ml.inference.batch_size",
            unit="{sample}",
            description="Batch size of the model's forward calls",
            explicit_bucket_boundaries_advisory=BATCH_BUCKETS,
        )
        self._own_forward = "forward" in vars(model)  # an instance attribute to put back on remove()
        self._original: Callable[..., Any] = model.forward
        wrapper = self._wrap(self._original)
        setattr(wrapper, _MARK, True)
        model.forward = wrapper

    def remove(self) -> None:
        """Restores the model's `forward`; later calls are not recorded."""
        if not getattr(self.model.forward, _MARK, False):
            return
        if self._own_forward:
            self.model.forward = self._original
        else:
            del self.model.forward

    def _wrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        def instrumented_forward(*args: Any, **kwargs: Any) -> Any:
            start_wall = time.time_ns()
            start = time.perf_counter_ns()
            try:
                output = forward(*args, **kwargs)
            except Exception as error:
                self._record(start, start_wall, args, kwargs, error)
                raise
            self._record(start, start_wall, args, kwargs, None)
            return output

        return instrumented_forward

    def _record(
        self,
        start: int,
        start_wall: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        error: Exception | None,
    ) -> None:
        """The call's points, and its span when sampled or failed; never raises."""
        duration_ns = time.perf_counter_ns() - start
        try:
            self.calls += 1
            batch = batch_size_of(args) or batch_size_of(kwargs)
            labels = self._base if error is None else {**self._base, "error.type": type(error).__qualname__}
            self._duration.record(duration_ns / 1e9, labels)
            if batch is not None:
                self._batch.record(batch, self._base)
            if error is None and self.calls % self.sample_every:
                return
            attributes = {**self._span_attributes, **device_attributes(model_device(self.model))}
            attributes["ml.model.training"] = self.model.training
            if batch is not None:
                attributes["ml.inference.batch_size"] = batch
            span = self._tracer.start_span(
                "ml.inference", kind=SpanKind.INTERNAL, attributes=attributes, start_time=start_wall
            )
            if error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__qualname__}: {error}"))
            span.end(end_time=start_wall + duration_ns)
        except Exception:  # telemetry must not break inference
            self.failures += 1
            if self.failures == 1:
                logger.exception("inference telemetry failed; the model keeps serving without it")


def instrument_model(
    model: torch.nn.Module, *, name: str | None = None, sample_every: int = 1
) -> ModelInstrumentation:
    """Records the model's forward calls: the `ml.inference.duration` and `ml.inference.batch_size`
    histograms on every call, an `ml.inference` span every `sample_every` calls and on every call that
    raises. `name` defaults to the model's class name. Returns the handle whose `remove()` undoes it."""
    require_torch()
    return ModelInstrumentation(model, name=name, sample_every=sample_every)
