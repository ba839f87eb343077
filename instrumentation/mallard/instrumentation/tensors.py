"""What the PyTorch integrations read from torch objects: the batch size of a batch, a model's
description and device, the total gradient norm, value histograms, CUDA memory.

torch is imported inside the functions (`require_torch()`), never when this module is imported, so
`mallard.instrumentation` imports without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import torch

INSTALL_HINT: Final = 'the PyTorch integration needs torch: pip install "mallard[torch]"'


def require_torch() -> Any:
    """The torch module, or ImportError with the install hint."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return torch


def batch_size_of(batch: object, depth: int = 2) -> int | None:
    """The leading dimension of the first tensor in `batch` (a tensor, or a tuple, list or mapping of
    them, `depth` levels deep); None when there is none."""
    shape = getattr(batch, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) > 0 else None
    if depth <= 0:
        return None
    if isinstance(batch, tuple | list):
        items: Iterable[object] = batch
    elif isinstance(batch, Mapping):
        items = batch.values()
    else:
        return None
    for item in items:
        found = batch_size_of(item, depth - 1)
        if found is not None:
            return found
    return None


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer; the CPU when it has neither."""
    torch = require_torch()
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")  # type: ignore[no-any-return]


def model_attributes(model: torch.nn.Module, name: str | None = None) -> dict[str, str | int]:
    """`ml.model.*` attributes: name (`name` or the class name), class, parameter counts."""
    cls = type(model)
    total = trainable = 0
    for parameter in model.parameters():
        count = parameter.numel()
        total += count
        if parameter.requires_grad:
            trainable += count
    return {
        "ml.model.name": name or cls.__name__,
        "ml.model.class": f"{cls.__module__}.{cls.__qualname__}",
        "ml.model.parameters": total,
        "ml.model.trainable_parameters": trainable,
    }


def device_attributes(device: torch.device) -> dict[str, str | int]:
    """`ml.device.type`, `ml.device` (e.g. `cuda:0`) and `ml.gpu.count` (0 without CUDA)."""
    torch = require_torch()
    gpus = int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    index = device.index
    if device.type == "cuda" and index is None:
        index = int(torch.cuda.current_device())
    return {
        "ml.device.type": device.type,
        "ml.device": device.type if index is None else f"{device.type}:{index}",
        "ml.gpu.count": gpus,
    }


def gradient_norm(parameters: Iterable[torch.nn.Parameter]) -> float | None:
    """The total L2 norm of the parameters' gradients, as `torch.nn.utils.clip_grad_norm_` computes
    it; None when no parameter has a gradient. Reads one number back (a device sync on a GPU)."""
    torch = require_torch()
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return None
    foreach = getattr(torch, "_foreach_norm", None)  # one kernel for all (torch's own clipping uses it)
    norms = foreach(grads) if foreach is not None else [torch.linalg.vector_norm(g) for g in grads]
    try:
        total = torch.linalg.vector_norm(torch.stack(norms))
    except RuntimeError:  # gradients on several devices
        total = torch.linalg.vector_norm(torch.stack([n.cpu() for n in norms]))
    return float(total.item())


def value_histogram(tensor: torch.Tensor, bins: int) -> dict[str, Any]:
    """A histogram of the tensor's values in `bins` equal buckets between its min and max, as
    `ml.distribution.*` attributes: count, min, max, mean and bucket_counts (bucket i holds the values
    in [min + i·w, min + (i+1)·w), the last one max too, w = (max - min) / bins). Non-finite values
    are counted in `nonfinite` and left out. Three passes over the values (min/max, mean, bucket
    index); a fourth only when some value is not finite."""
    torch = require_torch()
    values = tensor.detach().flatten()
    count = values.numel()
    attributes: dict[str, Any] = {"ml.distribution.count": count, "ml.distribution.nonfinite": 0}
    if count == 0:
        return attributes
    low, high = (float(v) for v in torch.aminmax(values))
    if not (math.isfinite(low) and math.isfinite(high)):  # a NaN or an infinity among them
        values = values[torch.isfinite(values)]
        attributes["ml.distribution.nonfinite"] = count - values.numel()
        if values.numel() == 0:
            return attributes
        low, high = (float(v) for v in torch.aminmax(values))
    width = (high - low) / bins
    if width > 0:
        index = values.sub(low).mul_(1 / width).to(torch.int32).clamp_(0, bins - 1)
        counts = [int(c) for c in torch.bincount(index, minlength=bins).tolist()]
    else:
        counts = [values.numel()] + [0] * (bins - 1)
    attributes.update(
        {
            "ml.distribution.min": low,
            "ml.distribution.max": high,
            "ml.distribution.mean": float(values.float().mean().item()),
            "ml.distribution.bucket_counts": counts,
        }
    )
    return attributes


def cuda_memory(device: torch.device) -> dict[str, int]:
    """The caching allocator's byte counts on a CUDA device (no device sync): allocated, reserved and
    the peak allocated since the process started (or since torch's last reset)."""
    torch = require_torch()
    return {
        "ml.gpu.memory.allocated": int(torch.cuda.memory_allocated(device)),
        "ml.gpu.memory.reserved": int(torch.cuda.memory_reserved(device)),
        "ml.gpu.memory.max_allocated": int(torch.cuda.max_memory_allocated(device)),
    }


def cuda_utilization(device: torch.device) -> float | None:
    """The device's utilisation over the last sample period, 0..1 (NVML through torch; None when
    NVML is not available)."""
    torch = require_torch()
    try:
        return float(torch.cuda.utilization(device)) / 100.0
    except Exception:  # pynvml missing or NVML failing: no reading, not an error of the training
        return None
