"""PyTorch training runs as OpenTelemetry spans, metrics and log events.

Two ways to use it:

- manual: `with training_run(model, optimizer, name=..., params=...) as run:` and, after each
  `optimizer.step()`, `run.step(loss=loss, batch_size=len(x))`; epochs with `with run.epoch():`.
- automatic: `training_run(..., dataloader=loader, auto=True)` or `autolog(model, optimizer,
  dataloader=loader)` observe an unmodified loop: each `optimizer.step()` ends a step (a post-step
  hook), each pass over the data loader is an epoch, batches give the batch size and the data-wait
  time. The loss is known only when the loop reports it with `run.log_loss(loss)`, anywhere in the
  iteration (before or after `optimizer.step()`).

Per step only integers are added up (`time.perf_counter_ns`); spans, metric points, the learning rate
and the gradient norm are taken on sampled steps, parameter and gradient histograms on their own
schedule. `sample_every` and `distributions_every` are the densest spacing: the run times its own
periodic work and spaces it out further whenever it would take more than `overhead_budget` of the
training time (tiny, fast steps), so the overhead holds on any model (see `TrainingSettings`). Names
and units: `docs/semconv.md`.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context

from mallard.instrumentation.tensors import (
    batch_size_of,
    device_attributes,
    gradient_norm,
    model_attributes,
    model_device,
    require_torch,
)
from mallard.instrumentation.training_loader import observe_loader, restore_loader
from mallard.instrumentation.training_signals import RunSignals, StepRecord

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# the defaults of `TrainingSettings`, and so of `training_run()` and `autolog()`
SAMPLE_EVERY: Final = 10
DISTRIBUTIONS_EVERY: Final = 500
DISTRIBUTION_BINS: Final = 32
OVERHEAD_BUDGET: Final = 0.005  # 0.5 % of the training time for the periodic work


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingSettings:
    """How much a training run records, and what it may cost."""

    sample_every: int = SAMPLE_EVERY  # a step span and metric points every N steps at most (1: every step)
    distributions_every: int = DISTRIBUTIONS_EVERY  # histograms every N steps at most (0: never)
    distribution_bins: int = DISTRIBUTION_BINS  # buckets per histogram
    # The share of the training time that the sampled steps and the histogram passes may take (half
    # each); when their measured cost would exceed it, they are spaced further apart. None: the
    # spacing is exactly `sample_every` and `distributions_every` whatever it costs.
    overhead_budget: float | None = OVERHEAD_BUDGET

    def validate(self) -> None:
        if self.sample_every < 1:
            raise ValueError(f"sample_every is at least 1, got {self.sample_every}")
        if self.distributions_every < 0:
            raise ValueError(f"distributions_every is 0 (off) or more, got {self.distributions_every}")
        if self.distribution_bins < 1:
            raise ValueError(f"distribution_bins is at least 1, got {self.distribution_bins}")
        budget = self.overhead_budget
        if budget is not None and not 0 < budget < 1:
            raise ValueError(f"overhead_budget is a share of the time, in (0, 1), or None; got {budget}")


class Spacing:
    """Every how many steps one kind of periodic telemetry runs: every `every` steps at the densest
    (0: never), further apart when its measured cost would take more than `share` of the training
    time: after each run, the interval becomes the cost (a moving average) over `share` times the mean
    step time, in steps."""

    __slots__ = ("cost_ns", "every", "interval", "runs", "share", "since")

    def __init__(self, every: int, share: float | None) -> None:
        self.every, self.share = every, share
        self.interval = max(every, 1)
        self.since = 0  # steps ended since it last ran
        self.runs = 0
        self.cost_ns = 0.0

    def due_next(self) -> bool:
        """Whether it runs at the end of the step in progress."""
        return self.every > 0 and self.since + 1 >= self.interval

    def tick(self) -> bool:
        """Counts an ended step; True when it runs at this one."""
        self.since += 1
        if self.every > 0 and self.since >= self.interval:
            self.since = 0
            return True
        return False

    def spent(self, cost_ns: int, mean_step_ns: float) -> None:
        """Its cost this time; spaces the next runs to keep within the share."""
        self.runs += 1
        self.cost_ns = cost_ns if self.runs == 1 else 0.75 * self.cost_ns + 0.25 * cost_ns
        if self.share is not None and mean_step_ns > 0:
            self.interval = max(self.every, math.ceil(self.cost_ns / (self.share * mean_step_ns)))


class TrainingRun:
    """One training run: a run span, epoch spans, sampled step spans, metrics and events.

    Start it with `start()` or `with`; end it with `end()` (the `with` block does both). Methods called
    by the training loop never raise because of telemetry: a failure to record is logged once."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        name: str | None = None,
        params: Mapping[str, object] | None = None,
        dataloader: object | None = None,
        auto: bool = False,
        settings: TrainingSettings | None = None,
    ) -> None:
        require_torch()
        self.settings = settings or TrainingSettings()
        self.settings.validate()
        if auto and optimizer is None:
            raise ValueError("the automatic mode counts optimizer.step() calls: pass the optimizer")
        self.model, self.optimizer, self.auto = model, optimizer, auto
        self.run_id = uuid.uuid4().hex
        self.name = name or type(model).__name__
        self.device = model_device(model)
        self._params = dict(params or {})
        self._dataloader = dataloader
        self.observes_loader = dataloader is not None
        self._signals: RunSignals | None = None
        self._hooks: list[Any] = []
        self._token: object | None = None
        self._ended = False
        # totals
        self.steps = self.samples = self.epochs = self.nonfinite_losses = 0
        self.last_loss: float | None = None
        # the step in progress (hot path: plain integers; the observed loader adds to the last two)
        self._step_start = 0
        self.wait_ns = 0  # time in the data loader's __next__ during this step
        self.pending_samples = 0  # batch sizes seen by the loader (or forward) during this step
        self._pending_loss: object | None = None
        self._unfinished: StepRecord | None = None  # automatic mode: ended, loss still to come
        self._sampled_lr: float | None = None
        self._sampled_grad_norm: float | None = None
        share = None if self.settings.overhead_budget is None else self.settings.overhead_budget / 2
        self._sampling = Spacing(self.settings.sample_every, share)
        self._histograms = Spacing(self.settings.distributions_every, share)
        self._sample_cost_ns = 0  # the sampled step's reads before optimizer.step()
        self.telemetry_ns = 0  # time in the periodic telemetry (no step's time)
        self._nonfinite_streak = False
        self.step_ns = self.wait_ns_total = 0  # time in steps, and waiting for data within them
        self._w_samples = self._w_ns = 0  # since the last sampled step: for its throughput
        # the open epoch
        self._manual_epochs = False
        self._epoch_open = False
        self._epoch_steps = self._epoch_samples = self._epoch_losses = 0
        self._epoch_loss_sum = 0.0

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> TrainingRun:
        """Starts the run span and installs the hooks; returns the run."""
        if self._signals is not None:
            raise RuntimeError("this training run was started already")
        attributes: dict[str, Any] = {
            "ml.run.id": self.run_id,
            "ml.run.name": self.name,
            "ml.training.mode": "automatic" if self.auto else "manual",
            "ml.training.sample_every": self.settings.sample_every,
            "ml.training.distributions_every": self.settings.distributions_every,
            **(
                {}
                if self.settings.overhead_budget is None
                else {"ml.training.overhead_budget": self.settings.overhead_budget}
            ),
            **model_attributes(self.model),
            **device_attributes(self.device),
        }
        if self.optimizer is not None:
            attributes["ml.optimizer.name"] = type(self.optimizer).__name__
        attributes.update({f"ml.param.{key}": _attribute_value(v) for key, v in self._params.items()})
        self._signals = RunSignals(self, attributes)
        self._install_hooks()
        self._step_start = time.perf_counter_ns()
        return self

    def end(self, error: BaseException | None = None) -> None:
        """Ends the open epoch and the run span (an error status with the exception when `error` is
        given), flushes the counters and removes the hooks. Idempotent."""
        if self._ended or self._signals is None:
            return
        self._ended = True
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._dataloader is not None:
            restore_loader(self._dataloader)
        self.finish_pending()
        self._close_epoch()
        self._signals.end_run(
            {
                "ml.training.steps": self.steps,
                "ml.training.samples": self.samples,
                "ml.training.epochs": self.epochs,
                "ml.training.nonfinite_losses": self.nonfinite_losses,
                "ml.training.sampled_steps": self.sampled_steps,
                "ml.training.distribution_passes": self.distribution_passes,
                "ml.training.telemetry.time": self.telemetry_ns / 1e9,
                **({} if self.last_loss is None else {"ml.training.loss": self.last_loss}),
            },
            error,
        )

    def __enter__(self) -> TrainingRun:
        if self._signals is None:
            self.start()
        assert self._signals is not None
        self._token = context.attach(self._signals.run_context)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        self.end(error)

    @property
    def sampled_steps(self) -> int:
        """Steps sampled so far (a span, metric points, the learning rate and the gradient norm)."""
        return self._sampling.runs

    @property
    def distribution_passes(self) -> int:
        """Parameter and gradient histogram passes so far."""
        return self._histograms.runs

    # what the loop reports -------------------------------------------------------------------

    def step(self, *, loss: object = None, batch_size: int | None = None) -> None:
        """Manual mode: ends a training step (call it once per `optimizer.step()`, after it). `loss` is
        a tensor or a number; `batch_size` the samples in the step (default: the batches the observed
        data loader gave since the previous step)."""
        if self.auto:
            raise RuntimeError(
                "in the automatic mode optimizer.step() ends a step; report the loss with log_loss()"
            )
        if loss is not None:
            self._pending_loss = loss
        self._end_step(batch_size)
        self.finish_pending()

    def log_loss(self, loss: object) -> None:
        """Reports the loss of the current step (a tensor or a number). Reading a tensor's value is a
        device sync on a GPU, so there it is read on sampled steps only; on the CPU on every step."""
        self._pending_loss = loss

    @contextmanager
    def epoch(self, index: int | None = None) -> Iterator[None]:
        """An epoch span around the block (`index` defaults to the number of epochs so far). Once
        used, the data loader's passes no longer open epochs by themselves."""
        self._manual_epochs = True
        self._open_epoch(index)
        try:
            yield
        finally:
            self.finish_pending()
            self._close_epoch()

    def checkpoint(self, path: str | os.PathLike[str], **attributes: str | bool | int | float) -> None:
        """Records a checkpoint written to `path`: an event on the run span and an INFO log record
        (`ml.training.checkpoint`), with the step, the epoch, the file size when it exists, and
        `attributes` as `ml.checkpoint.<key>`."""
        if self._signals is None:
            raise RuntimeError("start the training run first")
        event: dict[str, Any] = {"ml.checkpoint.path": os.fspath(path), "ml.step": self.steps}
        if self._epoch_open:
            event["ml.epoch"] = self.epochs - 1
        if os.path.isfile(path):
            event["ml.checkpoint.size"] = os.path.getsize(path)
        event.update({f"ml.checkpoint.{key}": value for key, value in attributes.items()})
        self._guarded(self._signals.checkpoint, event)

    # hooks -------------------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        if self.optimizer is not None:
            self._hooks.append(self.optimizer.register_step_pre_hook(self._before_optimizer_step))
            if self.auto:
                self._hooks.append(self.optimizer.register_step_post_hook(self._after_optimizer_step))
        if self._dataloader is not None:
            observe_loader(self._dataloader, self)
        elif self.auto:
            self._hooks.append(self.model.register_forward_pre_hook(self._before_forward))

    def _before_optimizer_step(self, optimizer: object, args: object, kwargs: object) -> None:
        self.finish_pending()
        if not self._sampling.due_next():
            return
        assert self.optimizer is not None
        began = time.perf_counter_ns()
        self._sampled_lr = float(self.optimizer.param_groups[0]["lr"])
        self._sampled_grad_norm = self._guarded(gradient_norm, self.model.parameters())
        spent = time.perf_counter_ns() - began
        self._sample_cost_ns += spent
        self._step_start += spent

    def _after_optimizer_step(self, optimizer: object, args: object, kwargs: object) -> None:
        self._end_step(None)

    def _before_forward(self, module: object, args: tuple[object, ...]) -> None:
        self.finish_pending()
        if self.model.training and require_torch().is_grad_enabled():
            self.pending_samples += batch_size_of(args) or 0

    def loader_started(self) -> None:
        """An observed data loader began a pass (an epoch, unless `epoch()` is used)."""
        self.finish_pending()
        if not self._manual_epochs:
            self._open_epoch(None)
        self._step_start = time.perf_counter_ns()
        self.wait_ns = self.pending_samples = 0

    def loader_exhausted(self) -> None:
        """The observed data loader's pass ended."""
        self.finish_pending()
        if not self._manual_epochs:
            self._close_epoch()

    # steps -------------------------------------------------------------------------------------

    def _end_step(self, batch_size: int | None) -> None:
        """Counts a step (hot path: integers only, plus the histograms when due)."""
        now = time.perf_counter_ns()
        self.finish_pending()
        self.steps += 1
        samples = self.pending_samples if batch_size is None else batch_size
        duration, wait = now - self._step_start, self.wait_ns
        self.pending_samples = self.wait_ns = 0
        self.samples += samples
        self.step_ns += duration
        self.wait_ns_total += wait
        self._w_samples += samples
        self._w_ns += duration
        self._epoch_steps += 1
        self._epoch_samples += samples
        self._unfinished = StepRecord(self.steps, now, duration, wait, samples, sampled=self._sampling.tick())
        if self._histograms.tick() and self._signals is not None:
            began = time.perf_counter_ns()
            self._guarded(
                self._signals.distributions, self.model, self.steps, self.settings.distribution_bins
            )
            spent = time.perf_counter_ns() - began
            self.telemetry_ns += spent
            self._histograms.spent(spent, self.step_ns / self.steps)
        self._step_start = time.perf_counter_ns()

    def finish_pending(self) -> None:
        """Completes the ended step with its loss: the non-finite check, and the step span and metric
        points when the step is sampled (or its loss is the first non-finite one of a streak)."""
        record = self._unfinished
        if record is None:
            return
        self._unfinished = None
        loss, self._pending_loss = self._pending_loss, None
        sampled = record.sampled
        try:
            value = _loss_value(loss, sampled)
        except Exception:  # not a number nor a one-element tensor: told once, never raised here
            value = self._guarded(_loss_value, loss, sampled)
        alarm = False
        if value is not None:
            self.last_loss = value
            if math.isfinite(value):
                self._nonfinite_streak = False
                self._epoch_loss_sum += value
                self._epoch_losses += 1
            else:
                self.nonfinite_losses += 1
                alarm, self._nonfinite_streak = not self._nonfinite_streak, True
        if not (sampled or alarm) or self._signals is None:
            return
        began = time.perf_counter_ns()
        record.loss = value
        record.epoch = self.epochs - 1 if self._epoch_open else None
        if sampled:
            if self.optimizer is None:  # no pre-step hook: the gradients are still there now
                self._sampled_grad_norm = self._guarded(gradient_norm, self.model.parameters())
            record.learning_rate, record.grad_norm = self._sampled_lr, self._sampled_grad_norm
            self._sampled_lr = self._sampled_grad_norm = None
            record.window = (self._w_samples, self._w_ns)
            self._w_samples = self._w_ns = 0
        self._guarded(self._signals.step, record, sampled, alarm, self._dataloader is not None)
        spent = time.perf_counter_ns() - began
        self._step_start += spent  # the telemetry's time is no step's
        self.telemetry_ns += spent
        if sampled:
            self.telemetry_ns += self._sample_cost_ns
            self._sampling.spent(spent + self._sample_cost_ns, self.step_ns / self.steps)
            self._sample_cost_ns = 0

    # epochs ------------------------------------------------------------------------------------

    def _open_epoch(self, index: int | None) -> None:
        self._close_epoch()
        if self._signals is None:
            raise RuntimeError("start the training run first")
        self._epoch_open = True
        self._epoch_steps = self._epoch_samples = self._epoch_losses = 0
        self._epoch_loss_sum = 0.0
        self._guarded(self._signals.open_epoch, self.epochs if index is None else index)
        self.epochs += 1
        self._step_start = time.perf_counter_ns()

    def _close_epoch(self) -> None:
        if not self._epoch_open or self._signals is None:
            return
        self._epoch_open = False
        attributes: dict[str, Any] = {
            "ml.epoch.steps": self._epoch_steps,
            "ml.epoch.samples": self._epoch_samples,
        }
        if self._epoch_losses:
            attributes["ml.training.loss.mean"] = self._epoch_loss_sum / self._epoch_losses
        self._guarded(self._signals.close_epoch, attributes)

    def _guarded(self, call: Any, *args: Any) -> Any:
        """Runs a telemetry call; a failure is logged (the first one with its traceback), never raised
        into the training loop."""
        try:
            return call(*args)
        except Exception:
            assert self._signals is not None
            self._signals.failures += 1
            if self._signals.failures == 1:
                logger.exception("training telemetry failed; the training goes on without it")
            return None


def training_run(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    name: str | None = None,
    params: Mapping[str, object] | None = None,
    dataloader: object | None = None,
    auto: bool = False,
    sample_every: int = SAMPLE_EVERY,
    distributions_every: int = DISTRIBUTIONS_EVERY,
    distribution_bins: int = DISTRIBUTION_BINS,
    overhead_budget: float | None = OVERHEAD_BUDGET,
) -> TrainingRun:
    """A training run to use as a context manager (`with training_run(...) as run:`); see the module
    docstring for the manual and the automatic mode."""
    settings = TrainingSettings(
        sample_every=sample_every,
        distributions_every=distributions_every,
        distribution_bins=distribution_bins,
        overhead_budget=overhead_budget,
    )
    return TrainingRun(
        model, optimizer, name=name, params=params, dataloader=dataloader, auto=auto, settings=settings
    )


def autolog(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    name: str | None = None,
    params: Mapping[str, object] | None = None,
    dataloader: object | None = None,
    sample_every: int = SAMPLE_EVERY,
    distributions_every: int = DISTRIBUTIONS_EVERY,
    distribution_bins: int = DISTRIBUTION_BINS,
    overhead_budget: float | None = OVERHEAD_BUDGET,
) -> TrainingRun:
    """Starts an automatic-mode training run now; it ends with `run.end()` or at interpreter exit
    (before OpenTelemetry's own exit flush)."""
    run = training_run(
        model,
        optimizer,
        name=name,
        params=params,
        dataloader=dataloader,
        auto=True,
        sample_every=sample_every,
        distributions_every=distributions_every,
        distribution_bins=distribution_bins,
        overhead_budget=overhead_budget,
    ).start()
    atexit.register(run.end)
    return run


def _loss_value(loss: object, sampled: bool) -> float | None:
    """The loss as a float: numbers always; tensors on the CPU always (cheap), elsewhere only on
    sampled steps (`.item()` waits for the device)."""
    if loss is None:
        return None
    if isinstance(loss, int | float):
        return float(loss)
    if sampled or getattr(loss, "is_cpu", True):
        return float(loss.item())  # type: ignore[attr-defined]
    return None


def _attribute_value(value: object) -> str | bool | int | float:
    return value if isinstance(value, str | bool | int | float) else str(value)
