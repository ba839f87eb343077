"""Observing a data loader without changing the loop: `iter(loader)` marks an epoch, and each batch's
fetch time (data wait) and batch size go to the training run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mallard.instrumentation.tensors import batch_size_of

if TYPE_CHECKING:
    from mallard.instrumentation.training import TrainingRun


class _ObservedIterator:
    """The iterator of an observed data loader: times `__next__` and counts the batch sizes."""

    __slots__ = ("_inner", "_run")

    def __init__(self, run: TrainingRun, inner: Iterator[object]) -> None:
        self._run, self._inner = run, inner
        run.loader_started()

    def __iter__(self) -> _ObservedIterator:
        return self

    def __next__(self) -> object:
        run = self._run
        run.finish_pending()
        start = time.perf_counter_ns()
        try:
            batch = next(self._inner)
        except StopIteration:
            run.loader_exhausted()
            raise
        run.wait_ns += time.perf_counter_ns() - start
        run.pending_samples += batch_size_of(batch) or 0
        return batch

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def observe_loader(loader: object, run: TrainingRun) -> None:
    """Makes `iter(loader)` return an `_ObservedIterator`: the loader's class becomes a subclass that
    overrides `__iter__` (special methods are looked up on the type); `restore_loader` undoes it."""
    base = type(loader)
    if getattr(base, "_mallard_observed", False):
        raise ValueError("this data loader is observed by another training run already")

    def __iter__(self: object) -> _ObservedIterator:
        return _ObservedIterator(run, base.__iter__(self))  # type: ignore[attr-defined]

    observed = type(base.__name__, (base,), {"__iter__": __iter__, "_mallard_observed": True})
    observed.__module__, observed.__qualname__ = base.__module__, base.__qualname__
    loader.__class__ = observed


def restore_loader(loader: object) -> None:
    cls = type(loader)
    if getattr(cls, "_mallard_observed", False):
        loader.__class__ = cls.__bases__[0]
