"""The SID UNet's convolutions as fused Triton implicit GEMMs on tensor cores (NHWC).

Two ops, each with a plain-PyTorch reference, on weights re-laid out once by
``prepare_conv3x3`` / ``prepare_upconv2x2``:

``conv3x3(x, weights, *, skip=None, pool=False)``
    3x3 convolution, stride 1, zero padding 1, then bias and LeakyReLU(0.2), in one pass.
    ``skip`` is a second input read as if concatenated after ``x`` along the channels
    (the decoder's ``cat([up, skip])`` is never materialised). ``pool=True`` also returns
    the 2x2 max-pooled result, written from the same tile (the encoder's ``conv*_2`` +
    ``max_pool2d``). The first layer's few input channels (4 / 8 / 12) are padded to the
    tensor cores' K of 16 inside the kernel (masked loads, zero weight rows).
``upconv2x2(x, weights)``
    2x2 transposed convolution with stride 2 (the decoder's up-sampling) as a GEMM per
    output phase (dy, dx) with a strided store, bias fused.

GEMM view of ``conv3x3``: M = output pixels of a ``TILE_H x TILE_W`` spatial tile (a
program's rows), N = output channels, K = 9 taps x input channels, walked tap by tap
and channel block by channel block: each K step loads a ``[BLOCK_M, BLOCK_K]`` slice of
the input shifted by the tap (zeros outside the image) and the matching ``[BLOCK_K,
BLOCK_N]`` slice of the weights, and accumulates ``tl.dot`` in fp32. Inside a tile the
rows are ordered by 2x2 window (4 consecutive rows = one pooling window), so the pooled
output is a reshape and a max of the accumulator.

Layouts and dtypes: activations are ``[B, C, H, W]`` tensors in channels_last memory
(NHWC: channel stride 1), fp16 or bf16, the output in the input's dtype; accumulation
and the epilogue (bias, activation, pooling) in fp32, rounded once at the store (cuDNN
rounds the convolution, then the bias add, then the activation). Weights are re-laid out
once by ``prepare_conv3x3`` / ``prepare_upconv2x2`` into K-major GEMM matrices in the
activations' dtype; biases stay fp32.

Block sizes, warps and pipeline stages come from ``triton.autotune`` on the user's GPU,
per layer shape, cached on disk (``cache_results``) so that a second process starts
without re-tuning; the engine tunes before any CUDA-graph capture (the graph's warm-up
runs). Configurations with M = 64 or 128 rows per warpgroup map to Hopper's ``wgmma``
(SASS ``HGMMA``) and to Ampere's ``mma``. Under the Triton interpreter (CPU tests) one
configuration runs, chosen by ``_interpreter_config`` or given by the caller.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextvars
import inspect
import os
import warnings
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import check_tensor, triton_interpreter_enabled, use_triton
from ._tuning import _quick_bench

NEGATIVE_SLOPE = 0.2  # LeakyReLU of the SID UNet
_DTYPES = (torch.float16, torch.bfloat16)
# The tensor cores' smallest K: narrower inputs (the first layer's 4 / 8 / 12 channels)
# are padded to it with masked loads and zero weight rows.
MIN_K = 16
# Largest per-image offset the kernels compute in int32 (the batch offset is int64).
MAX_IMAGE_ELEMENTS = 2**31 - 1


# Autotune results are cached on disk (Triton's cache dir) where Triton can, so a second
# process starts without re-tuning; each candidate is timed for ~30 ms (kernels._tuning).
_AUTOTUNE_PARAMS = inspect.signature(triton.autotune).parameters
_CACHE_TUNING = {k: v for k, v in (("cache_results", True), ("do_bench", _quick_bench)) if k in _AUTOTUNE_PARAMS}


# --------------------------------------------------------------------------- configs
def _conv_configs() -> list[triton.Config]:
    """Tiles for Hopper (``wgmma``: 64 rows per warpgroup) and Ampere (``mma``), by output
    width: 128 (levels 3-5), 64 (level 2) and 32 (level 1, the first layer's K of 16)."""
    out = []
    for tile_h, tile_w, bn, bk, warps, stages in (
        (8, 16, 128, 64, 8, 3),
        (8, 16, 128, 32, 8, 4),
        (16, 16, 128, 32, 8, 3),
        (8, 16, 64, 64, 4, 3),
        (8, 16, 64, 32, 8, 4),
        (8, 8, 64, 64, 4, 3),
        (8, 16, 64, 16, 4, 4),
        (8, 16, 32, 32, 4, 4),
        (8, 16, 32, 16, 4, 4),
    ):
        out.append(triton.Config({"TILE_H": tile_h, "TILE_W": tile_w, "BLOCK_N": bn, "BLOCK_K": bk},
                                 num_warps=warps, num_stages=stages))
    return out


def _upconv_configs() -> list[triton.Config]:
    out = []
    for bm, bn, bk, warps, stages in ((128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 4, 3),
                                      (64, 64, 64, 4, 3), (128, 32, 32, 4, 4), (64, 32, 32, 4, 4)):
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return out


def _block_n(cout: int) -> int:
    """The output block that fits a layer: its width rounded up to 32, 64 or 128 (a
    narrower block wastes no columns; a wider layer loops over blocks of 128)."""
    return min(128, max(32, triton.next_power_of_2(cout)))


def _fits_k(block_k: int, channels: int) -> bool:
    """K blocks between 32 (16 for the first layer's few channels) and the channels."""
    widest = max(MIN_K, triton.next_power_of_2(channels))
    return min(32, widest) <= block_k <= widest


def _prune_conv(configs, named_args, **kwargs):
    """Only the configurations whose blocks fit the layer: few per layer, so the first
    frame compiles and tunes quickly."""
    k = max(named_args["C1"], named_args["C2"] or 0)
    bn = _block_n(named_args["COUT"])
    keep = [c for c in configs if c.kwargs["BLOCK_N"] == bn and _fits_k(c.kwargs["BLOCK_K"], k)]
    return keep or configs[-1:]


def _prune_upconv(configs, named_args, **kwargs):
    bn = _block_n(named_args["COUT"])
    keep = [c for c in configs if c.kwargs["BLOCK_N"] == bn and _fits_k(c.kwargs["BLOCK_K"], named_args["CIN"])]
    return keep or configs[-1:]


# --------------------------------------------------------------------------- kernels
# Sizes are not specialised on (== 1, multiple of 16): one compiled kernel per
# configuration serves every level and frame size (strides still are: aligned loads).
_SIZES = ["B", "H", "W", "C1", "C2", "CIN", "COUT"]


@triton.jit
def _accumulate_taps(acc, x_ptr, x_base, sxh, sxw, C, row0, CT, w_ptr, COUT_P, y, x, H, W, rn, n_mask,
                     BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """acc += (3x3 taps of input ``x``, channels [0, C)) @ weight rows ``tap * CT + row0 + c``.

    y, x: [BLOCK_M] output pixel coordinates; rn: [BLOCK_N] output channels.
    """
    rk = tl.arange(0, BLOCK_K)
    k_chunks = tl.cdiv(C, BLOCK_K)
    for kk in range(0, 9 * k_chunks):
        tap = kk // k_chunks
        c = (kk - tap * k_chunks) * BLOCK_K + rk
        yy = y + (tap // 3 - 1)
        xx = x + (tap % 3 - 1)
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        a_ptrs = x_ptr + x_base + (yy * sxh + xx * sxw)[:, None] + c[None, :]
        w_ptrs = w_ptr + (tap * CT + row0 + c)[:, None] * COUT_P + rn[None, :]
        if EVEN_K:
            a = tl.load(a_ptrs, mask=inside[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=n_mask[None, :], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=inside[:, None] & (c[None, :] < C), other=0.0)
            w = tl.load(w_ptrs, mask=(c[:, None] < C) & n_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    return acc


@triton.autotune(configs=_conv_configs(), key=["H", "W", "C1", "C2", "COUT", "B"],
                 prune_configs_by={"early_config_prune": _prune_conv}, **_CACHE_TUNING)
@triton.heuristics({"EVEN_K": lambda a: a["C1"] % a["BLOCK_K"] == 0 and a["C2"] % a["BLOCK_K"] == 0})
@triton.jit(do_not_specialize=_SIZES)
def _conv3x3_kernel(
    x1_ptr, s1_b, s1_h, s1_w,
    x2_ptr, s2_b, s2_h, s2_w,
    w_ptr, bias_ptr,
    y_ptr, sy_b, sy_h, sy_w,
    p_ptr, sp_b, sp_h, sp_w,
    B, H, W, C1, C2, COUT, COUT_P,
    HAS_SKIP: tl.constexpr, POOL: tl.constexpr, NEG_SLOPE: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    HALF_W: tl.constexpr = TILE_W // 2
    pid_m = tl.program_id(0)
    tiles_w = tl.cdiv(W, TILE_W)
    ty = pid_m // tiles_w
    tx = pid_m - ty * tiles_w
    b = tl.program_id(2).to(tl.int64)
    # Row m of the tile: window q = m // 4 (row-major over the tile's 2x2 windows),
    # position m % 4 inside it (dy, dx), so the pooled output is a max over 4 rows.
    m = tl.arange(0, BLOCK_M)
    q = m // 4
    y = ty * TILE_H + 2 * (q // HALF_W) + (m % 4) // 2
    x = tx * TILE_W + 2 * (q % HALF_W) + m % 2
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < COUT

    CT = C1 + C2  # weight rows per tap
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _accumulate_taps(acc, x1_ptr, b * s1_b, s1_h, s1_w, C1, 0, CT, w_ptr, COUT_P, y, x, H, W, rn, n_mask,
                           BLOCK_K, EVEN_K)
    if HAS_SKIP:
        acc = _accumulate_taps(acc, x2_ptr, b * s2_b, s2_h, s2_w, C2, C1, CT, w_ptr, COUT_P, y, x, H, W, rn, n_mask,
                               BLOCK_K, EVEN_K)

    acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0)[None, :]
    acc = tl.where(acc >= 0.0, acc, acc * NEG_SLOPE)
    out = acc.to(y_ptr.dtype.element_ty)
    inside = (y < H) & (x < W)
    tl.store(y_ptr + b * sy_b + (y * sy_h + x * sy_w)[:, None] + rn[None, :], out, mask=inside[:, None] & n_mask[None, :])
    if POOL:
        # max of the rounded values = rounded max (rounding is monotone): as max_pool2d of the stored output.
        pooled = tl.max(tl.reshape(acc, (BLOCK_M // 4, 4, BLOCK_N)), axis=1)
        wq = tl.arange(0, BLOCK_M // 4)
        py = ty * (TILE_H // 2) + wq // HALF_W
        px = tx * HALF_W + wq % HALF_W
        p_inside = (py < H // 2) & (px < W // 2)
        tl.store(p_ptr + b * sp_b + (py * sp_h + px * sp_w)[:, None] + rn[None, :], pooled.to(p_ptr.dtype.element_ty),
                 mask=p_inside[:, None] & n_mask[None, :])


@triton.autotune(configs=_upconv_configs(), key=["H", "W", "CIN", "COUT", "B"],
                 prune_configs_by={"early_config_prune": _prune_upconv}, **_CACHE_TUNING)
@triton.jit(do_not_specialize=_SIZES)
def _upconv2x2_kernel(
    x_ptr, sx_b, sx_h, sx_w,
    w_ptr, bias_ptr,
    y_ptr, sy_b, sy_h, sy_w,
    B, H, W, CIN, COUT, COUT_P,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Output phase (dy, dx) = program_id(1) % 4: y[2i + dy, 2j + dx] = x[i, j] @ W[dy, dx] + bias."""
    pid_n = tl.program_id(1) // 4
    phase = tl.program_id(1) % 4
    dy = phase // 2
    dx = phase % 2
    b = tl.program_id(2).to(tl.int64)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < H * W
    i = m // W
    j = m % W
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < COUT
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_row = x_ptr + b * sx_b + (i * sx_h + j * sx_w)[:, None]
    for k0 in range(0, CIN, BLOCK_K):
        c = k0 + rk
        a = tl.load(a_row + c[None, :], mask=m_mask[:, None] & (c[None, :] < CIN), other=0.0)
        w = tl.load(w_ptr + (phase * CIN + c)[:, None] * COUT_P + rn[None, :], mask=(c[:, None] < CIN) & n_mask[None, :],
                    other=0.0)
        acc = tl.dot(a, w, acc)
    acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0)[None, :]
    oy = 2 * i + dy
    ox = 2 * j + dx
    tl.store(y_ptr + b * sy_b + (oy * sy_h + ox * sy_w)[:, None] + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


# --------------------------------------------------------------------------- weights
class ConvWeights(NamedTuple):
    """A convolution's weights re-laid out for the kernels (``prepare_conv3x3`` / ``prepare_upconv2x2``).

    matrix: ``[taps * (C1 + C2), COUT_P]`` K-major GEMM matrix in the activations' dtype,
        row ``tap * (C1 + C2) + c`` (taps row-major over (ky, kx) or (dy, dx)), columns
        zero-padded to ``COUT_P`` (a multiple of 16: aligned rows).
    bias: float32 ``[COUT]``.
    in_channels: (C1, C2): channels of the first input and of the skip (0 without).
    out_channels: COUT.
    weight, bias_original: as given (the references use them).
    """

    matrix: torch.Tensor
    bias: torch.Tensor
    in_channels: tuple[int, int]
    out_channels: int
    weight: torch.Tensor
    bias_original: torch.Tensor


def _padded(n: int) -> int:
    return -(-n // MIN_K) * MIN_K


def prepare_conv3x3(weight: torch.Tensor, bias: torch.Tensor, *, skip_channels: int = 0,
                    dtype: torch.dtype = torch.float16) -> ConvWeights:
    """Re-lay out a ``nn.Conv2d(C1 + C2, COUT, 3, padding=1)``'s weight ``[COUT, C1 + C2, 3, 3]``
    and bias ``[COUT]`` for ``conv3x3`` (once, at model load); ``skip_channels`` = C2."""
    check_tensor("weight", weight, ndims=(4,))
    cout, cin, kh, kw = weight.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"conv3x3 needs a 3x3 kernel, got weight shape {tuple(weight.shape)}")
    _check_bias(bias, cout)
    if not 0 <= skip_channels < cin:
        raise ValueError(f"skip_channels must lie in [0, {cin}) for {cin} input channels, got {skip_channels}")
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float16 or bfloat16, got {dtype}")
    cout_p = _padded(cout)
    m = weight.detach().permute(2, 3, 1, 0).reshape(9 * cin, cout)  # row = tap * cin + c
    matrix = torch.zeros(9 * cin, cout_p, dtype=dtype, device=weight.device)
    matrix[:, :cout] = m.to(dtype)
    return ConvWeights(matrix.contiguous(), bias.detach().to(torch.float32).contiguous(),
                       (cin - skip_channels, skip_channels), cout, weight.detach(), bias.detach())


def prepare_upconv2x2(weight: torch.Tensor, bias: torch.Tensor, *, dtype: torch.dtype = torch.float16) -> ConvWeights:
    """Re-lay out a ``nn.ConvTranspose2d(CIN, COUT, 2, stride=2)``'s weight ``[CIN, COUT, 2, 2]``
    and bias ``[COUT]`` for ``upconv2x2``."""
    check_tensor("weight", weight, ndims=(4,))
    cin, cout, kh, kw = weight.shape
    if (kh, kw) != (2, 2):
        raise ValueError(f"upconv2x2 needs a 2x2 kernel, got weight shape {tuple(weight.shape)}")
    _check_bias(bias, cout)
    if dtype not in _DTYPES:
        raise TypeError(f"dtype must be float16 or bfloat16, got {dtype}")
    cout_p = _padded(cout)
    m = weight.detach().permute(2, 3, 0, 1).reshape(4 * cin, cout)  # row = (dy * 2 + dx) * cin + c
    matrix = torch.zeros(4 * cin, cout_p, dtype=dtype, device=weight.device)
    matrix[:, :cout] = m.to(dtype)
    return ConvWeights(matrix.contiguous(), bias.detach().to(torch.float32).contiguous(), (cin, 0), cout,
                       weight.detach(), bias.detach())


def _check_bias(bias, cout: int) -> None:
    check_tensor("bias", bias, ndims=(1,))
    if bias.shape[0] != cout:
        raise ValueError(f"bias must have {cout} values (one per output channel), got shape {tuple(bias.shape)}")


# --------------------------------------------------------------------------- launchers
def _check_activation(name: str, t, channels: int | None = None) -> None:
    check_tensor(name, t, dtypes=_DTYPES + (torch.float32,), ndims=(4,))
    if channels is not None and t.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(t.shape)}")
    _check_image_size(name, t.shape[1], t.shape[2], t.shape[3])


def _check_image_size(name: str, c: int, h: int, w: int) -> None:
    """The kernels index within one image in int32."""
    if c * h * w > MAX_IMAGE_ELEMENTS:
        raise ValueError(f"{name}: one image of {c}x{h}x{w} has more than 2**31 - 1 elements; process it in tiles")


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """The tensor in channels_last memory (channel stride 1), copied only if it is not."""
    return t if t.stride(1) == 1 else t.contiguous(memory_format=torch.channels_last)


def _empty_nhwc(b, c, h, w, like: torch.Tensor) -> torch.Tensor:
    return torch.empty((b, c, h, w), dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


_RECORDING: contextvars.ContextVar = contextvars.ContextVar("conv_recorded_launches", default=None)


@contextmanager
def recorded_launches():
    """Inside, ``conv3x3`` / ``upconv2x2`` record their launches (for ``precompile``)
    instead of running them: their outputs are allocated but never written."""
    launches: list = []
    token = _RECORDING.set(launches)
    try:
        yield launches
    finally:
        _RECORDING.reset(token)


def precompile(launches, max_workers: int | None = None) -> int:
    """Compile, in parallel threads, every configuration the autotuner will try for the
    recorded ``launches`` (CUDA), so that autotuning then only times them: without it the
    first frame compiles some 30 kernels one after the other. Returns how many
    (launch, configuration) compilations were requested; a failure only warns (the
    autotuner compiles what is missing itself)."""
    jobs = []
    for kernel, args in launches:
        named = dict(zip(kernel.arg_names, args))
        prune = _prune_conv if kernel is _conv3x3_kernel else _prune_upconv
        jobs += [(kernel, args, cfg) for cfg in prune(kernel.configs, named)]
    async_mode = getattr(triton, "AsyncCompileMode", None)  # Triton >= 3.4; else one after the other
    try:
        with cf.ThreadPoolExecutor(max_workers or os.cpu_count() or 1) as pool:
            with async_mode(pool) if async_mode is not None else nullcontext():
                for kernel, args, cfg in jobs:
                    kernel.fn.warmup(*args, grid=(1,), **cfg.kwargs, num_warps=cfg.num_warps,
                                     num_stages=cfg.num_stages)
    except Exception as e:  # noqa: BLE001 - an optimisation only
        warnings.warn(f"parallel precompilation of the convolution kernels failed ({type(e).__name__}: {e}); "
                      "the autotuner compiles them one by one", RuntimeWarning)
    return len(jobs)


def _launch(kernel, grid, args, config: triton.Config | None):
    """Autotuned launch; under the interpreter, or with an explicit ``config``, one config."""
    recording = _RECORDING.get()
    if recording is not None:
        recording.append((kernel, args))
        return
    if config is None and not triton_interpreter_enabled():
        kernel[grid](*args)
        return
    config = config or _interpreter_config(kernel, args)
    kernel.fn[grid](*args, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _interpreter_config(kernel, args) -> triton.Config:
    """The first configuration the autotuner would keep for these arguments."""
    named = dict(zip(kernel.arg_names, args))
    prune = _prune_conv if kernel is _conv3x3_kernel else _prune_upconv
    return prune(kernel.configs, named)[0]


def conv3x3(x: torch.Tensor, weights: ConvWeights, *, skip: torch.Tensor | None = None, pool: bool = False,
            backend: str = "auto", config: triton.Config | None = None):
    """Fused 3x3 convolution + bias + LeakyReLU(0.2) (+ 2x2 max pooling).

    Args:
        x: ``[B, C1, H, W]`` fp16 / bf16 activations (channels_last memory preferred:
            other layouts are copied); fp32 on the reference backend only.
        weights: from ``prepare_conv3x3`` (dtype of ``x``; ``skip_channels`` = C2).
        skip: ``[B, C2, H, W]`` second input, concatenated after ``x`` (decoder), or None.
        pool: also return the 2x2 max-pooled output (H and W must be even).
        backend: "auto" (Triton on CUDA, reference on CPU), "triton" or "torch".
        config: a ``triton.Config`` to use instead of autotuning (tests, AOT).

    Returns:
        ``y`` ``[B, COUT, H, W]`` in x's dtype and channels_last memory; with ``pool``
        the pair ``(y, pooled [B, COUT, H/2, W/2])``.
    """
    if not isinstance(weights, ConvWeights):
        raise TypeError(f"weights must come from prepare_conv3x3, got {type(weights).__name__}")
    c1, c2 = weights.in_channels
    _check_activation("x", x, c1)
    if (skip is None) != (c2 == 0):
        raise ValueError(f"weights were prepared for {c2} skip channels but skip is "
                         f"{'missing' if skip is None else 'given'}")
    if skip is not None:
        _check_activation("skip", skip, c2)
        if skip.shape[0] != x.shape[0] or skip.shape[2:] != x.shape[2:] or skip.dtype != x.dtype:
            raise ValueError(f"skip {tuple(skip.shape)} {skip.dtype} must match x {tuple(x.shape)} {x.dtype} "
                             "in batch, size and dtype")
        if skip.device != x.device:
            raise ValueError(f"skip is on {skip.device} but x is on {x.device}")
    B, _, H, W = x.shape
    _check_image_size("the output", weights.out_channels, H, W)
    if pool and (H % 2 or W % 2):
        raise ValueError(f"pool=True needs an even height and width, got {H}x{W}")
    if weights.matrix.device != x.device:
        raise ValueError(f"weights are on {weights.matrix.device} but x is on {x.device}")
    if not use_triton(x.device, backend):
        return conv3x3_reference(x, weights, skip=skip, pool=pool)
    if x.dtype != weights.matrix.dtype:
        raise TypeError(f"x is {x.dtype} but the weights were prepared as {weights.matrix.dtype}")
    x = _nhwc(x)
    skip_t = _nhwc(skip) if skip is not None else x  # any valid pointer when unused
    y = _empty_nhwc(B, weights.out_channels, H, W, x)
    p = _empty_nhwc(B, weights.out_channels, H // 2, W // 2, x) if pool else y
    cout_p = weights.matrix.shape[1]

    def grid(meta):
        tiles = triton.cdiv(H, meta["TILE_H"]) * triton.cdiv(W, meta["TILE_W"])
        return tiles, triton.cdiv(weights.out_channels, meta["BLOCK_N"]), B

    args = (x, x.stride(0), x.stride(2), x.stride(3),
            skip_t, skip_t.stride(0), skip_t.stride(2), skip_t.stride(3),
            weights.matrix, weights.bias,
            y, y.stride(0), y.stride(2), y.stride(3),
            p, p.stride(0), p.stride(2), p.stride(3),
            B, H, W, c1, c2, weights.out_channels, cout_p,
            skip is not None, bool(pool), NEGATIVE_SLOPE)
    _launch(_conv3x3_kernel, grid, args, config)
    return (y, p) if pool else y


def upconv2x2(x: torch.Tensor, weights: ConvWeights, *, backend: str = "auto",
              config: triton.Config | None = None) -> torch.Tensor:
    """2x2 stride-2 transposed convolution + bias: ``[B, CIN, H, W]`` -> ``[B, COUT, 2H, 2W]``
    (dtypes, layouts and ``backend`` / ``config`` as for ``conv3x3``; weights from
    ``prepare_upconv2x2``)."""
    if not isinstance(weights, ConvWeights):
        raise TypeError(f"weights must come from prepare_upconv2x2, got {type(weights).__name__}")
    cin = weights.in_channels[0]
    _check_activation("x", x, cin)
    if weights.matrix.device != x.device:
        raise ValueError(f"weights are on {weights.matrix.device} but x is on {x.device}")
    if not use_triton(x.device, backend):
        return upconv2x2_reference(x, weights)
    if x.dtype != weights.matrix.dtype:
        raise TypeError(f"x is {x.dtype} but the weights were prepared as {weights.matrix.dtype}")
    x = _nhwc(x)
    B, _, H, W = x.shape
    _check_image_size("the output", weights.out_channels, 2 * H, 2 * W)
    y = _empty_nhwc(B, weights.out_channels, 2 * H, 2 * W, x)

    def grid(meta):
        return triton.cdiv(H * W, meta["BLOCK_M"]), 4 * triton.cdiv(weights.out_channels, meta["BLOCK_N"]), B

    args = (x, x.stride(0), x.stride(2), x.stride(3), weights.matrix, weights.bias,
            y, y.stride(0), y.stride(2), y.stride(3), B, H, W, cin, weights.out_channels, weights.matrix.shape[1])
    _launch(_upconv2x2_kernel, grid, args, config)
    return y


# --------------------------------------------------------------------------- references
def _kernel_weight(weights: ConvWeights, x: torch.Tensor) -> torch.Tensor:
    """The weight as the kernel multiplies it: rounded to the activations' dtype."""
    return weights.weight.to(x.dtype).float()


def conv3x3_reference(x, weights: ConvWeights, *, skip=None, pool: bool = False):
    """Plain PyTorch: ``leaky_relu(conv2d(cat([x, skip]), W, b), 0.2)`` (+ ``max_pool2d(., 2)``),
    computed in fp32 from the weights rounded to x's dtype (as the kernel has them), and
    rounded once to x's dtype, in channels_last memory."""
    inp = x if skip is None else torch.cat([x, skip], 1)
    y = F.conv2d(inp.float(), _kernel_weight(weights, x), weights.bias_original.float(), padding=1)
    y = F.leaky_relu(y, NEGATIVE_SLOPE)
    out = y.to(x.dtype).contiguous(memory_format=torch.channels_last)
    if not pool:
        return out
    return out, F.max_pool2d(y, 2).to(x.dtype).contiguous(memory_format=torch.channels_last)


def upconv2x2_reference(x, weights: ConvWeights) -> torch.Tensor:
    """Plain PyTorch ``conv_transpose2d(x, W, b, stride=2)`` in fp32 (weights rounded to x's
    dtype), rounded once to x's dtype."""
    y = F.conv_transpose2d(x.float(), _kernel_weight(weights, x), weights.bias_original.float(), stride=2)
    return y.to(x.dtype).contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- AOT
def aot_specs():
    """Every autotune configuration of every variant (plain, pooled, with skip), fp16, as
    ``kernels.aot`` compiles them for sm_80 / sm_90 (spills and HGMMA are checked)."""
    from .aot import AotSpec

    conv_sig = {
        "x1_ptr": "*fp16", "s1_b": "i32", "s1_h": "i32", "s1_w": "i32",
        "x2_ptr": "*fp16", "s2_b": "i32", "s2_h": "i32", "s2_w": "i32",
        "w_ptr": "*fp16", "bias_ptr": "*fp32",
        "y_ptr": "*fp16", "sy_b": "i32", "sy_h": "i32", "sy_w": "i32",
        "p_ptr": "*fp16", "sp_b": "i32", "sp_h": "i32", "sp_w": "i32",
        "B": "i32", "H": "i32", "W": "i32", "C1": "i32", "C2": "i32", "COUT": "i32", "COUT_P": "i32",
        "HAS_SKIP": "constexpr", "POOL": "constexpr", "NEG_SLOPE": "constexpr",
        "TILE_H": "constexpr", "TILE_W": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr",
        "EVEN_K": "constexpr",
    }
    aligned = ("x1_ptr", "x2_ptr", "w_ptr", "bias_ptr", "y_ptr", "p_ptr", "s1_b", "s1_h", "s1_w", "s2_b", "s2_h",
               "s2_w", "sy_b", "sy_h", "sy_w", "sp_b", "sp_h", "sp_w", "COUT_P")
    specs = []
    for i, cfg in enumerate(_conv3x3_kernel.configs):
        for variant, skip, pool in (("plain", False, False), ("pool", False, True), ("skip", True, False)):
            constexprs = {"HAS_SKIP": skip, "POOL": pool, "NEG_SLOPE": NEGATIVE_SLOPE, "EVEN_K": True, **cfg.kwargs}
            specs.append(AotSpec(f"conv3x3_{variant}_cfg{i}", _conv3x3_kernel.fn, conv_sig, constexprs, cfg.num_warps,
                                 divisible_by_16=aligned, num_stages=cfg.num_stages, tensor_cores=True))
    # The first layer (4 / 8 / 12 input channels): K padded inside the kernel (EVEN_K False).
    first = [c for c in _conv3x3_kernel.configs if c.kwargs["BLOCK_K"] == MIN_K]
    for i, cfg in enumerate(first):
        constexprs = {"HAS_SKIP": False, "POOL": False, "NEG_SLOPE": NEGATIVE_SLOPE, "EVEN_K": False, **cfg.kwargs}
        specs.append(AotSpec(f"conv3x3_first_cfg{i}", _conv3x3_kernel.fn, conv_sig, constexprs, cfg.num_warps,
                             divisible_by_16=tuple(a for a in aligned if not a.startswith("s1_")),
                             num_stages=cfg.num_stages, tensor_cores=True))
    up_sig = {"x_ptr": "*fp16", "sx_b": "i32", "sx_h": "i32", "sx_w": "i32", "w_ptr": "*fp16", "bias_ptr": "*fp32",
              "y_ptr": "*fp16", "sy_b": "i32", "sy_h": "i32", "sy_w": "i32", "B": "i32", "H": "i32", "W": "i32",
              "CIN": "i32", "COUT": "i32", "COUT_P": "i32",
              "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
    up_aligned = ("x_ptr", "w_ptr", "bias_ptr", "y_ptr", "sx_b", "sx_h", "sx_w", "sy_b", "sy_h", "sy_w", "COUT_P")
    for i, cfg in enumerate(_upconv2x2_kernel.configs):
        specs.append(AotSpec(f"upconv2x2_cfg{i}", _upconv2x2_kernel.fn, up_sig, dict(cfg.kwargs), cfg.num_warps,
                             divisible_by_16=up_aligned, num_stages=cfg.num_stages, tensor_cores=True))
    return specs
