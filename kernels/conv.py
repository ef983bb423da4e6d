"""The SID UNet's convolutions as fused Triton implicit GEMMs on tensor cores (NHWC).

Two ops, each with a plain-PyTorch reference, on weights re-laid out once by
``prepare_conv3x3`` / ``prepare_upconv2x2``:

``conv3x3(x, weights, *, skip=None, pool=False)``
    3x3 convolution, stride 1, zero padding 1, then bias and LeakyReLU(0.2), in one pass.
    ``skip`` is a second input read as if concatenated after ``x`` along the channels
    (the decoder's ``cat([up, skip])`` is never materialised). ``pool=True`` also returns
    the 2x2 max-pooled result, written from the same tile (the encoder's ``conv*_2`` +
    ``max_pool2d``). Channel counts that are not multiples of 16 (the first layer's 4 / 8 /
    12) run through a kernel whose K is the flat index over taps and channels (two taps of
    8 channels per K block of 16, no zero halves); with a skip input, on the concatenation.
``upconv2x2(x, weights)``
    2x2 transposed convolution with stride 2 (the decoder's up-sampling) as a GEMM per
    output phase (dy, dx) with a strided store, bias fused.

GEMM view of ``conv3x3``: M = output pixels of a ``TILE_H x TILE_W`` spatial tile (a
program's rows), N = output channels, K = 9 taps x input channels, walked channel block
by channel block and tap by tap: each K step loads a ``[BLOCK_M, BLOCK_K]`` slice of
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
per layer shape, kept on disk per GPU model (``kernels._tuning``) so that a second process starts
without re-tuning; the engine tunes before any CUDA-graph capture (the graph's warm-up
runs). Configurations with M = 64 or 128 rows per warpgroup map to Hopper's ``wgmma``
(SASS ``HGMMA``) and to Ampere's ``mma``. Under the Triton interpreter (CPU tests) one
configuration runs, chosen by ``_interpreter_config`` or given by the caller. The kernels,
their configurations and why their compiled loops are fast: ``kernels.conv_kernels``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton

from ._common import check_tensor, triton_interpreter_enabled, use_triton
from ._tuning import launch_options, precompile, precompile_plan, record_launch, recorded_launches  # noqa: F401
from .conv_kernels import COL_PAD, MIN_K, NEGATIVE_SLOPE, ROW_PAD, _conv3x3_kernel, _conv3x3_narrow_kernel, _upconv2x2_kernel

_DTYPES = (torch.float16, torch.bfloat16)
# Largest per-image offset the kernels compute in int32 (the batch offset is int64).
MAX_IMAGE_ELEMENTS = 2**31 - 1


# --------------------------------------------------------------------------- weights
class ConvWeights(NamedTuple):
    """A convolution's weights re-laid out for the kernels (``prepare_conv3x3`` / ``prepare_upconv2x2``).

    matrix: ``[K_P, COUT_P]`` K-major GEMM matrix in the activations' dtype, row
        ``tap * (C1 + C2) + c`` (taps row-major over (ky, kx) or (dy, dx)); zero rows pad
        K = taps * (C1 + C2) to ``K_P`` (a multiple of 64) and zero columns pad COUT to
        ``COUT_P`` (a multiple of 256), the kernels' largest blocks: weight tiles are loaded
        whole, without masks, as 16-byte vectors.
    bias: float32 ``[COUT_P]`` (zero past COUT).
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


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _gemm_weights(m: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` ``[K, COUT]`` -> the zero-padded ``[K_P, COUT_P]`` matrix and ``[COUT_P]`` fp32 bias."""
    k, cout = m.shape
    matrix = torch.zeros(_round_up(k, ROW_PAD), _round_up(cout, COL_PAD), dtype=dtype, device=m.device)
    matrix[:k, :cout] = m.to(dtype)
    padded_bias = torch.zeros(matrix.shape[1], dtype=torch.float32, device=m.device)
    padded_bias[:cout] = bias.detach().float()
    return matrix, padded_bias


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
    m = weight.detach().permute(2, 3, 1, 0).reshape(9 * cin, cout)  # row = tap * cin + c
    matrix, padded_bias = _gemm_weights(m, bias, dtype)
    return ConvWeights(matrix, padded_bias, (cin - skip_channels, skip_channels), cout, weight.detach(), bias.detach())


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
    m = weight.detach().permute(2, 3, 0, 1).reshape(4 * cin, cout)  # row = (dy * 2 + dx) * cin + c
    matrix, padded_bias = _gemm_weights(m, bias, dtype)
    return ConvWeights(matrix, padded_bias, (cin, 0), cout, weight.detach(), bias.detach())


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


def _launch(kernel, grid, args, config: triton.Config | None):
    """Autotuned launch (recorded instead inside ``kernels._tuning.recorded_launches``); under
    the interpreter, or with an explicit ``config``, one configuration."""
    if record_launch(kernel, args, {}):
        return
    if config is None and not triton_interpreter_enabled():
        kernel[grid](*args)
        return
    config = config or _interpreter_config(kernel, args)
    kernel.fn[grid](*args, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _interpreter_config(kernel, args) -> triton.Config:
    """The first configuration the autotuner would keep for these arguments."""
    return kernel.early_config_prune(kernel.configs, dict(zip(kernel.arg_names, args)))[0]


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
    if c1 % MIN_K or c2 % MIN_K:
        # Channel counts the general kernel cannot tile without masks on K (the first layer's
        # 4 / 8 / 12): the flat-K kernel on one dense input (concatenated if there is a skip).
        inp = x if skip is None else torch.cat([x, skip], 1)
        return _conv3x3_narrow(inp.contiguous(memory_format=torch.channels_last), weights, pool, config)
    x = _nhwc(x)
    skip_t = _nhwc(skip) if skip is not None else x  # any valid pointer when unused
    y = _empty_nhwc(B, weights.out_channels, H, W, x)
    p = _empty_nhwc(B, weights.out_channels, H // 2, W // 2, x) if pool else y
    args = (x, x.stride(0), x.stride(2), x.stride(3),
            skip_t, skip_t.stride(0), skip_t.stride(2), skip_t.stride(3),
            weights.matrix, weights.bias,
            y, y.stride(0), y.stride(2), y.stride(3),
            p, p.stride(0), p.stride(2), p.stride(3),
            B, H, W, c1, c2, weights.out_channels, weights.matrix.shape[1],
            skip is not None, bool(pool), NEGATIVE_SLOPE)
    _launch(_conv3x3_kernel, _tile_grid(H, W, B, weights.out_channels), args, config)
    return (y, p) if pool else y


def _tile_grid(H: int, W: int, B: int, cout: int):
    def grid(meta):
        tiles = triton.cdiv(H, meta["TILE_H"]) * triton.cdiv(W, meta["TILE_W"])
        return tiles, triton.cdiv(cout, meta["BLOCK_N"]), B

    return grid


def _conv3x3_narrow(x: torch.Tensor, weights: ConvWeights, pool: bool, config):
    """``conv3x3`` of a dense NHWC ``x`` through the flat-K kernel (any channel count)."""
    B, C, H, W = x.shape
    y = _empty_nhwc(B, weights.out_channels, H, W, x)
    p = _empty_nhwc(B, weights.out_channels, H // 2, W // 2, x) if pool else y
    args = (x, weights.matrix, weights.bias,
            y, y.stride(0), y.stride(2), y.stride(3),
            p, p.stride(0), p.stride(2), p.stride(3),
            B, H, W, weights.out_channels, weights.matrix.shape[1],
            C, bool(pool), NEGATIVE_SLOPE)
    _launch(_conv3x3_narrow_kernel, _tile_grid(H, W, B, weights.out_channels), args, config)
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

