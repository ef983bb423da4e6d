"""Shared plumbing of the fused ops: backend dispatch, seeds and input checks.

Every public op takes ``backend="auto"``: CUDA tensors run the Triton kernel, CPU
tensors run the plain-PyTorch reference. ``backend="triton"`` forces the kernel, which
on a CPU tensor needs the Triton interpreter (``TRITON_INTERPRET=1`` set before
``kernels`` is imported); ``backend="torch"`` forces the reference on any device.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
from typing import Callable, Iterable, Sequence

import torch

from .numbers import is_number, scalar

BACKENDS = ("auto", "triton", "torch")

# Normalised value -> DN scale of the public reference code (16383 - 800). SPEC §2.
DEFAULT_DN_SCALE = 15583.0


# Whether ops check the values of their per-sample parameters (a ContextVar, so the
# switch is per thread / per task: one thread capturing a CUDA graph does not turn the
# checks off for another).
_VALUE_CHECKS = contextvars.ContextVar("exposure_diffusion_value_checks", default=True)


def value_checks_enabled() -> bool:
    """False inside ``value_checks_disabled()`` (in this thread / context)."""
    return _VALUE_CHECKS.get()


@contextlib.contextmanager
def value_checks_disabled():
    """Skip the data-dependent checks of per-sample parameters (finite, > 0, ...).

    Those checks read tensor values back to the host, which synchronises the device
    and is illegal while a CUDA graph is being captured. The engine and the trainer
    validate once, then run their loops inside this context. Shape, dtype and device
    checks still run, and so do checks of plain Python numbers (no device read).
    """
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def host_read_bool(flag: torch.Tensor) -> bool:
    """Read one boolean back from the device: the only host sync of a value check.

    Kept as one function so tests can count the synchronisations an op makes.
    """
    return bool(flag)


class ValueChecks:
    """The data-dependent checks of one op call, read back to the host in one go.

    ``require(ok, message)`` records a boolean tensor (or a function computing it) that
    must be all true and a function building the error message (it may read values: it
    only runs on failure).
    ``run()`` reduces every recorded condition on the device and reads a single flag,
    so an op costs one host synchronisation on CUDA instead of one per check, and none
    inside ``value_checks_disabled()``. On failure the first failing check, in the
    order recorded, raises ``ValueError``.
    """

    def __init__(self) -> None:
        self._items: list[tuple[torch.Tensor, Callable[[], str]]] = []

    def require(self, ok: torch.Tensor | Callable[[], torch.Tensor], message: Callable[[], str]) -> None:
        """Record a condition: a boolean tensor, or a function computing it. A function is
        not even called inside ``value_checks_disabled()`` (no kernel launched for it,
        nothing recorded into a CUDA graph being captured)."""
        if not value_checks_enabled():
            return
        ok = ok() if callable(ok) else ok
        if ok.numel():
            self._items.append((ok, message))

    def run(self) -> None:
        items, self._items = self._items, []
        if not items or not value_checks_enabled():
            return
        flags = torch.stack([ok.all() for ok, _ in items])
        if host_read_bool(flags.all()):
            return
        for ok, message in items:
            if not bool(ok.all()):
                raise ValueError(message())


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


def generator_device(generator: torch.Generator) -> torch.device:
    """The device a generator draws on (one function, so a CPU-only test can stand a CPU
    generator in for a CUDA one: ``tests/device_mix.py``)."""
    return generator.device


def device_generator(device, key: int) -> torch.Generator:
    """A new ``torch.Generator`` on ``device`` seeded with ``key`` (see ``generator_device``)."""
    return torch.Generator(device=device).manual_seed(int(key))


def same_device(a: torch.device, b: torch.device) -> bool:
    """True when ``a`` and ``b`` name one device ("cuda" and "cuda:<current>" are one)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index == b.index or a.type == "cpu":
        return True
    index = lambda d: d.index if d.index is not None else torch.cuda.current_device()  # noqa: E731
    return index(a) == index(b)


def draw_key(generator: torch.Generator | None, device=None) -> int:
    """One 62-bit key drawn from ``generator`` (advancing it; None: torch's default
    generator of ``device``) as a Python int: a host read of one number when the
    generator lives on a GPU."""
    dev = generator_device(generator) if generator is not None else torch.device(device or "cpu")
    return int(torch.randint(0, 2**62, (1,), generator=generator, dtype=torch.int64, device=dev))


def generator_for(generator: torch.Generator | None, device) -> torch.Generator | None:
    """The generator that samples on ``device`` for a caller's ``generator``.

    The promise of every public op: ``generator=`` may live on any device (a CPU
    ``torch.Generator``, what ``torch.manual_seed`` users pass, with CUDA data is the usual
    case). torch's samplers only take a generator of the device they draw on, so a
    generator on another device only gives a 62-bit key (advancing it once), which seeds a
    fresh generator on ``device``; a generator already on ``device`` (and None: torch's
    default generator of ``device``) is used as it is. Either way the same generator state
    gives the same draws on a given device, and the draws happen on the data's device.
    """
    if generator is None or same_device(generator_device(generator), device):
        return generator
    return device_generator(device, draw_key(generator))


def philox_seed(generator: torch.Generator | None, device: torch.device, count: int = 1) -> torch.Tensor:
    """Draw fresh 62-bit Philox keys from ``generator`` (default: torch's global one).

    Returned as an int64 tensor of shape [count] on ``device``: kernels read the keys
    from memory, so a CUDA graph can replay with new keys written into the same tensor.
    The draw advances the generator, so ``torch.manual_seed`` makes runs repeatable.
    Without a generator the keys are drawn by the default generator of ``device`` itself
    (no host round trip on CUDA); a CPU generator's keys are copied through pinned memory
    without blocking the host.
    """
    if generator is None:
        return torch.randint(0, 2**62, (count,), device=device, dtype=torch.int64)
    gen_device = generator_device(generator)
    if gen_device.type != "cpu":
        # CUDA generators cannot produce int64 on the CPU; draw on their own device.
        seed = torch.randint(0, 2**62, (count,), generator=generator, device=gen_device, dtype=torch.int64)
        return seed.to(device)
    seed = torch.randint(0, 2**62, (count,), generator=generator, dtype=torch.int64)
    return to_device(seed, device, non_blocking=True)


def to_device(t: torch.Tensor, device, *, non_blocking: bool = False) -> torch.Tensor:
    """``t.to(device)``; a CPU -> CUDA copy with ``non_blocking`` goes through pinned memory.

    A copy from ordinary (pageable) host memory waits for the device's queue, i.e. it
    synchronises; from pinned memory it is truly asynchronous. The caching host
    allocator keeps the pinned buffer alive until the copy has run.
    """
    device = torch.device(device)
    if non_blocking and t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
    checks: ValueChecks | None = None,
) -> torch.Tensor:
    """Broadcast a per-sample parameter to a contiguous float32 tensor of shape [batch].

    ``value`` may be a number (Python, numpy scalar or 0-d array: ``kernels.numbers``), a
    sequence of them, or a tensor of shape [], [1] or [batch]. A tensor must already be on ``device`` (no silent CPU/CUDA copies).
    Numbers and sequences are checked on the host at once (finite, and the bound
    asked for). A tensor's values are checked through ``checks`` when given (read
    back together with the op's other checks by ``checks.run()``), else at once.
    """
    if positive:
        lower, strict, bound = 0.0, True, "> 0"
    elif nonnegative:
        lower, strict, bound = 0.0, False, ">= 0"
    elif min_value is not None:
        lower, strict, bound = float(min_value), False, f">= {min_value}"
    else:
        lower, strict, bound = None, False, None
    if isinstance(value, torch.Tensor):
        # the count before the device: a bad input gets the same message on every device
        if value.numel() not in (1, batch):
            raise ValueError(f"{name} has {value.numel()} values but the batch has {batch} samples")
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but the data is on {device}")
        t = value.detach().to(torch.float32).reshape(-1)
        host_values = None
    elif is_number(value):
        host_values = [float(scalar(name, value))]
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if not all(is_number(v) for v in value):
            raise TypeError(f"{name} must hold numbers, got {value!r}")
        host_values = [float(scalar(name, v)) for v in value]
    else:
        raise TypeError(f"{name} must be a number, a sequence or a tensor, got {type(value).__name__}")
    if host_values is not None:
        finite = all(math.isfinite(v) for v in host_values)
        if not finite or (lower is not None and not all(v > lower if strict else v >= lower for v in host_values)):
            raise ValueError(_value_message(name, bound, host_values))
        t = torch.tensor(host_values, dtype=torch.float32, device=device)
    if t.numel() == 1:
        t = t.expand(batch)
    elif t.numel() != batch:
        raise ValueError(f"{name} has {t.numel()} values but the batch has {batch} samples")
    t = t.contiguous()
    if host_values is None:
        run_now = checks is None
        checks = ValueChecks() if checks is None else checks

        def ok() -> torch.Tensor:
            finite = torch.isfinite(t)
            return finite if lower is None else finite & ((t > lower) if strict else (t >= lower))

        checks.require(ok, lambda: _value_message(name, bound, t.tolist()))
        if run_now:
            checks.run()
    return t


def _value_message(name: str, bound: str | None, values: list[float]) -> str:
    if not all(math.isfinite(v) for v in values):
        return f"{name} must be finite, got {values}"
    return f"{name} must be {bound}, got {values}"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# The per-sample kernels (exposure step, head step, noise synthesis) address within a sample
# with int32 offsets and Philox indices, and take samples and row tiles as grid dimensions 2
# and 1 (at most 65535 each).
MAX_GRID_YZ = 65535
MAX_SAMPLE_ELEMENTS = 2**31


def check_grid_and_offsets(B: int, h: int, w: int, per_pixel: int, where: str = "") -> None:
    """Refuse sizes a per-sample kernel cannot address: more than ``MAX_GRID_YZ`` samples or
    packed rows (grid dimensions), or ``per_pixel * h * w`` elements per sample (the most any
    of its tensors holds per sample) at or above ``MAX_SAMPLE_ELEMENTS`` (int32 offsets).
    where: appended to the messages (e.g. " on the Triton path")."""
    if B > MAX_GRID_YZ:
        raise ValueError(f"batch size must be <= {MAX_GRID_YZ}{where}, got {B}")
    if h > MAX_GRID_YZ:
        raise ValueError(f"h (packed rows) must be <= {MAX_GRID_YZ}{where}, got {h}")
    if per_pixel * h * w >= MAX_SAMPLE_ELEMENTS:
        raise ValueError(f"{per_pixel} * h * w must be < 2**31{where} (int32 offsets within a sample), "
                         f"got h={h}, w={w}")


def sample_span(shape: Sequence[int], stride: Sequence[int] | None = None) -> int:
    """Elements one sample (index 0 of dimension 0) of a view spans in memory: 1 + its largest
    offset. ``stride`` None: the contiguous tensor of ``shape`` still to be allocated."""
    if stride is None:
        return math.prod(shape[1:])
    return 1 + sum((n - 1) * abs(st) for n, st in zip(shape[1:], stride[1:]) if n > 0)


def check_sample_spans(**views) -> None:
    """Refuse views whose samples span ``MAX_SAMPLE_ELEMENTS`` or more elements (int32 offsets).

    views: name -> tensor, or the shape (tuple) of a contiguous output still to be allocated;
    None and empty views are skipped. Size checks before this leave only unusually strided
    views or many-channel outputs."""
    for name, view in views.items():
        if view is None:
            continue
        shape, stride = (tuple(view.shape), view.stride()) if isinstance(view, torch.Tensor) else (tuple(view), None)
        if math.prod(shape) == 0:
            continue
        span = sample_span(shape, stride)
        if span >= MAX_SAMPLE_ELEMENTS:
            layout = f"shape {shape}, strides {stride}" if stride is not None else f"contiguous, shape {shape}"
            raise ValueError(f"{name}: one sample spans {span} elements in memory ({layout}); the Triton kernel "
                             f"addresses a sample with int32 offsets (< 2**31 elements)")
