"""Shared plumbing of the fused ops: backend dispatch, seeds and input checks.

Every public op takes ``backend="auto"``: CUDA tensors run the Triton kernel, CPU
tensors run the plain-PyTorch reference. ``backend="triton"`` forces the kernel, which
on a CPU tensor needs the Triton interpreter (``TRITON_INTERPRET=1`` set before
``kernels`` is imported); ``backend="torch"`` forces the reference on any device.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Sequence

import torch

BACKENDS = ("auto", "triton", "torch")

# Normalised value -> DN scale of the public reference code (16383 - 800). SPEC §2.
DEFAULT_DN_SCALE = 15583.0


_value_checks_enabled = True


@contextlib.contextmanager
def value_checks_disabled():
    """Skip the data-dependent checks of per-sample parameters (finite, > 0, ...).

    Those checks read tensor values back to the host, which synchronises the device
    and is illegal while a CUDA graph is being captured. The engine validates once,
    then captures inside this context. Shape, dtype and device checks still run.
    """
    global _value_checks_enabled
    previous, _value_checks_enabled = _value_checks_enabled, False
    try:
        yield
    finally:
        _value_checks_enabled = previous


def triton_interpreter_enabled() -> bool:
    """True when Triton was told to interpret kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def use_triton(device: torch.device, backend: str) -> bool:
    """Decide whether an op on ``device`` runs its Triton kernel (True) or reference (False).

    Raises ValueError for an unknown backend and RuntimeError when the Triton path is
    forced on a CPU tensor without the interpreter.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda"
    if device.type == "cuda":
        return True
    if device.type == "cpu" and triton_interpreter_enabled():
        return True
    raise RuntimeError(
        f"backend='triton' on a {device.type} tensor needs a CUDA device, or the Triton "
        "interpreter enabled with TRITON_INTERPRET=1 before `kernels` is imported"
    )


def philox_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Draw a fresh 62-bit Philox key from ``generator`` (default: torch's global one).

    Returned as an int64 tensor of shape [1] on ``device``: kernels read the key from
    memory, so a CUDA graph can replay with a new key written into the same tensor.
    The draw advances the generator, so ``torch.manual_seed`` makes runs repeatable.
    Without a generator the key is drawn by the default generator of ``device`` itself
    (no host round trip on CUDA); a CPU generator's key is copied through pinned memory
    without blocking the host.
    """
    if generator is None:
        return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64)
    if generator.device.type != "cpu":
        # CUDA generators cannot produce int64 on the CPU; draw on their own device.
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device, dtype=torch.int64)
        return seed.to(device)
    seed = torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64)
    if device.type == "cuda":
        return seed.pin_memory().to(device, non_blocking=True)
    return seed.to(device)


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Iterable[torch.dtype] | None = None,
    ndims: Iterable[int] | None = None,
) -> torch.Tensor:
    """Refuse anything that is not a tensor of an accepted dtype and rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if ndims is not None:
        ndims = tuple(ndims)
        if t.dim() not in ndims:
            raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {tuple(t.shape)}")
    return t


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device (no CPU/CUDA mixes); returns that device."""
    items = [(n, t) for n, t in tensors.items() if isinstance(t, torch.Tensor)]
    device = items[0][1].device
    for n, t in items[1:]:
        if t.device != device:
            desc = ", ".join(f"{k} on {v.device}" for k, v in items)
            raise ValueError(f"all tensors must be on one device, got {desc}")
    return device


def per_sample(
    name: str,
    value,
    batch: int,
    device: torch.device,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    min_value: float | None = None,
) -> torch.Tensor:
    """Broadcast a per-sample parameter to a contiguous float32 tensor of shape [batch].

    ``value`` may be a Python number, a sequence, or a tensor of shape [], [1] or
    [batch]. A tensor must already be on ``device`` (no silent CPU/CUDA copies).
    """
    if isinstance(value, torch.Tensor):
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but the data is on {device}")
        t = value.detach().to(torch.float32).reshape(-1)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.tensor([float(value)], dtype=torch.float32, device=device)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        t = torch.tensor([float(v) for v in value], dtype=torch.float32, device=device)
    else:
        raise TypeError(f"{name} must be a number, a sequence or a tensor, got {type(value).__name__}")
    if t.numel() == 1:
        t = t.expand(batch)
    elif t.numel() != batch:
        raise ValueError(f"{name} has {t.numel()} values but the batch has {batch} samples")
    if not _value_checks_enabled:
        return t.contiguous()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    if positive and not (t > 0).all():
        raise ValueError(f"{name} must be > 0, got {t.tolist()}")
    if nonnegative and not (t >= 0).all():
        raise ValueError(f"{name} must be >= 0, got {t.tolist()}")
    if min_value is not None and not (t >= min_value).all():
        raise ValueError(f"{name} must be >= {min_value}, got {t.tolist()}")
    return t.contiguous()


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
