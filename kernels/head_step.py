"""The backbone's final 1x1 convolution fused into the exposure step (SPEC §4-5).

``head_exposure_step(features, head, state, origin, ...)`` is ``exposure_step(conv1x1(
features), state, origin, ...)`` in one pass: each program loads the last decoder
features of its pixels (``[BLOCK, C]``, NHWC), multiplies them by the head's weights on
the tensor cores (``[C, 16]``, the 9 or 4 output channels padded to 16; fp32
accumulation), adds the bias, and hands the mask logit, ``x0`` and ``R`` (or a plain
head's estimate) to the exposure step's own tail (``kernels.exposure._finish_plane``):
the blend, the Poisson photons and the next network input, plane by plane. The head's 9
channels never go to memory.

Same arguments, randomness (keys, counters: a fused step draws what the unfused step
draws from the same head output) and outputs as ``kernels.exposure.exposure_step``;
inference only (no autograd: training runs the backbone's own head). The reference is
``exposure_step_reference`` of the plain-PyTorch 1x1 convolution.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import DEFAULT_DN_SCALE, check_sample_spans, check_tensor, philox_seed, use_triton
from ._tuning import autotuned, autotuning_enabled, record_launch
from ._fastmath import fast_sigmoid
from .exposure import (_IN_DTYPES, _allocate, _pixels, _plane_step, _prepare, _step_factors, exposure_step_reference,
                       grid_of)

HEAD_COLUMNS = 16  # the head's 9 (or 4) output channels, padded to the tensor cores' N
BLOCK_C = 16  # feature channels per K step
# Launch configurations (BLOCK pixels, warps) autotune tries, as for kernels.exposure:
# one-warp programs keep the Poisson sampler's rejection loops short (the head's GEMM then
# runs on Ampere-style mma); 4 warps with 64 / 128 pixels give Hopper's wgmma its 64 rows
# per warpgroup (the tail's per-plane vectors: one element per thread at 32 pixels a warp).
# The draws are the same under every one. tl.dot needs at least 16 rows.
CONFIGS = (({"BLOCK": 32}, 1), ({"BLOCK": 64}, 4), ({"BLOCK": 128}, 4))
# The configuration used where nothing is tuned (the interpreter) and compiled ahead of time.
BLOCK, NUM_WARPS = 64, 4
# Tests: a (meta, num_warps) pair forcing one configuration; None: autotuned on a GPU,
# (BLOCK, NUM_WARPS) under the interpreter.
LAUNCH_CONFIG = None


@triton.jit
def _column(acc_t, cols, j):
    """Column ``j`` of the ``[BLOCK, 16]`` head output as a ``[BLOCK]`` vector (exact: a
    masked sum with one non-zero term). acc_t: the output transposed, ``[16, BLOCK]``."""
    return tl.sum(tl.where(cols[:, None] == j, acc_t, 0.0), axis=0)


@triton.jit
def _pick(tile, lanes, j):
    """Column ``j`` of a ``[BLOCK, n]`` tile as a ``[BLOCK]`` vector (an exact masked sum;
    each thread holds its pixel's whole row, so no data moves between threads)."""
    return tl.sum(tl.where(lanes[None, :] == j, tile, 0.0), axis=1)


@triton.jit
def _head_step_kernel(
    feat_ptr, sf_b, sf_h, sf_w, C,
    hw_ptr, hb_ptr,
    state_ptr, ss_b, ss_c, ss_h, ss_w,
    origin_ptr, so_b, so_c, so_h, so_w,
    ratio_ptr, gain_ptr, rho_ptr, rho_next_ptr, seed_ptr, seed_stride,
    est_ptr, se_b, se_c, se_h, se_w,
    next_ptr, sx_b, sx_c, sx_h, sx_w,
    h, w, dn_scale,
    HEAD9: tl.constexpr, HAS_NEXT: tl.constexpr, STOCHASTIC: tl.constexpr, ACCUMULATE: tl.constexpr,
    WITH_PHOTON: tl.constexpr, CONCAT_ORIGIN: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
    IEEE: tl.constexpr, PIXEL_STRIDE: tl.constexpr,
):
    # A row segment of BLOCK pixels (the GEMM's M), all 4 planes; grid (column tiles, rows, samples).
    b, y, x, pmask = _pixels(h, w, 0, 1, BLOCK, 1)
    b64 = b.to(tl.int64)
    rc = tl.arange(0, BLOCK_C)
    cols = tl.arange(0, 16)
    feat = (feat_ptr + b64 * sf_b) + (y * sf_h + x * sf_w)[:, None]
    acc = tl.zeros((BLOCK, 16), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + rc
        f = tl.load(feat + c[None, :], mask=pmask[:, None] & (c[None, :] < C), other=0.0)
        wt = tl.load(hw_ptr + c[:, None] * 16 + cols[None, :], mask=(c < C)[:, None], other=0.0)
        if IEEE:  # fp32 features (tests, CPU): no TF32 rounding
            acc = tl.dot(f, wt, acc, input_precision="ieee")
        else:
            acc = tl.dot(f, wt, acc)
    acc += tl.load(hb_ptr + cols)[None, :]
    acc_t = tl.trans(acc)  # [16, BLOCK]
    if HEAD9:
        m = fast_sigmoid(_column(acc_t, cols, 0))
    else:
        m = tl.zeros([BLOCK], tl.float32)  # unused
    mu_scale, base_weight, photon_value, photon_channel, seed = _step_factors(
        b, ratio_ptr, gain_ptr, rho_ptr, rho_next_ptr, seed_ptr, seed_stride, dn_scale,
        HAS_NEXT, STOCHASTIC, ACCUMULATE)

    # The epilogue reads and writes whole pixels: the state / origin planes of a pixel as one
    # vector, the estimate's 4 planes and the next input's 4 / 8 / 12 channels gathered over
    # the plane loop and stored once (16-byte stores: a pixel's 8 fp16 channels, 4 fp32
    # pixels of a plane), instead of one 2-byte store per channel and plane.
    planes = tl.arange(0, 4)
    NEXT_C: tl.constexpr = 4 + 4 * WITH_PHOTON + 4 * CONCAT_ORIGIN
    NEXT_LANES: tl.constexpr = 16 if NEXT_C == 12 else NEXT_C
    ch = tl.arange(0, NEXT_LANES)
    need_state: tl.constexpr = HEAD9 or (HAS_NEXT and ACCUMULATE)
    need_origin: tl.constexpr = HAS_NEXT and (CONCAT_ORIGIN or not ACCUMULATE)
    zero = tl.zeros([BLOCK], tl.float32)
    if PIXEL_STRIDE > 0:  # NHWC views sharing the pixel stride (shared_pixel_stride): provably aligned
        state_px = (y * w + x) * PIXEL_STRIDE
        origin_px = state_px
        next_px = state_px
    else:
        state_px = y * ss_h + x * ss_w
        origin_px = y * so_h + x * so_w
        next_px = y * sx_h + x * sx_w
    if need_state:
        state4 = tl.load((state_ptr + b64 * ss_b) + (state_px[:, None] + (planes * ss_c)[None, :]),
                         mask=pmask[:, None], other=0.0).to(tl.float32)
    if need_origin:
        origin4 = tl.load((origin_ptr + b64 * so_b) + (origin_px[:, None] + (planes * so_c)[None, :]),
                          mask=pmask[:, None], other=0.0).to(tl.float32)
    est4 = tl.zeros([BLOCK, 4], tl.float32)
    nxt = tl.zeros([BLOCK, NEXT_LANES], tl.float32)
    for c in range(4):
        if HEAD9:
            x0 = _column(acc_t, cols, 1 + c)
            res = _column(acc_t, cols, 5 + c)
        else:
            x0 = _column(acc_t, cols, c)
            res = x0  # unused
        st = zero
        org = zero
        if need_state:
            st = _pick(state4, planes, c)
        if need_origin:
            org = _pick(origin4, planes, c)
        est, a_next = _plane_step(c, m, x0, res, st, org, y, x, h, w, mu_scale, base_weight, photon_value, seed,
                                  HEAD9, HAS_NEXT, STOCHASTIC, ACCUMULATE)
        est4 = tl.where(planes[None, :] == c, est[:, None], est4)
        if HAS_NEXT:
            nxt = tl.where(ch[None, :] == c, a_next[:, None], nxt)
            if WITH_PHOTON:
                nxt = tl.where(ch[None, :] == 4 + c, (a_next * photon_channel)[:, None], nxt)
            if CONCAT_ORIGIN:
                first: tl.constexpr = 8 if WITH_PHOTON else 4
                nxt = tl.where(ch[None, :] == first + c, org[:, None], nxt)
    tl.store((est_ptr + b64 * se_b) + ((y * se_h + x * se_w)[:, None] + (planes * se_c)[None, :]), est4,
             mask=pmask[:, None])
    if HAS_NEXT:
        tl.store((next_ptr + b64 * sx_b) + (next_px[:, None] + (ch * sx_c)[None, :]),
                 nxt.to(next_ptr.dtype.element_ty), mask=pmask[:, None] & (ch < NEXT_C)[None, :])


_head_step_tuned = autotuned(
    _head_step_kernel, CONFIGS,
    key=["h", "w", "C", "HEAD9", "HAS_NEXT", "STOCHASTIC", "ACCUMULATE", "WITH_PHOTON", "CONCAT_ORIGIN"],
)


class HeadWeights(NamedTuple):
    """A 1x1 head re-laid out by ``prepare_head``: ``matrix`` ``[C_pad, 16]`` (row = input
    channel, zero rows / columns of padding) in the features' dtype, ``bias`` float32 [16];
    ``weight`` / ``bias_original`` as given (for the reference)."""

    matrix: torch.Tensor
    bias: torch.Tensor
    in_channels: int
    out_channels: int
    weight: torch.Tensor
    bias_original: torch.Tensor


def prepare_head(weight: torch.Tensor, bias: torch.Tensor, *, dtype: torch.dtype = torch.float16) -> HeadWeights:
    """Re-lay out a ``nn.Conv2d(C, 9 or 4, 1)``'s weight ``[COUT, C, 1, 1]`` and bias (once)."""
    check_tensor("weight", weight, ndims=(4,))
    cout, cin, kh, kw = weight.shape
    if (kh, kw) != (1, 1) or cout not in (4, 9):
        raise ValueError(f"the head must be a 1x1 convolution to 9 (adaptive residual head) or 4 channels, got weight "
                         f"shape {tuple(weight.shape)}")
    check_tensor("bias", bias, ndims=(1,))
    if bias.shape[0] != cout:
        raise ValueError(f"bias must have {cout} values, got shape {tuple(bias.shape)}")
    if dtype not in _IN_DTYPES:
        raise TypeError(f"dtype must be one of float16, bfloat16, float32, got {dtype}")
    rows = -(-cin // BLOCK_C) * BLOCK_C
    matrix = torch.zeros(rows, HEAD_COLUMNS, dtype=dtype, device=weight.device)
    matrix[:cin, :cout] = weight.detach()[:, :, 0, 0].t().to(dtype)
    b = torch.zeros(HEAD_COLUMNS, dtype=torch.float32, device=weight.device)
    b[:cout] = bias.detach().float()
    return HeadWeights(matrix, b, cin, cout, weight.detach(), bias.detach())


def head_output_reference(features: torch.Tensor, head: HeadWeights) -> torch.Tensor:
    """The head's 1x1 convolution in plain PyTorch, fp32, weights rounded to the features'
    dtype (as the kernel has them): ``[B, 9 or 4, h, w]`` float32."""
    weight = head.weight.to(features.dtype).float()
    return F.conv2d(features.float(), weight, head.bias_original.float())


def head_exposure_step(features: torch.Tensor, head: HeadWeights, state: torch.Tensor, origin: torch.Tensor, *,
                       ratio, K, rho, rho_next=None, stochastic: bool = True, generator=None, seed=None,
                       accumulate: bool = False, with_photon: bool = False, concat_origin: bool = False,
                       dn_scale: float = DEFAULT_DN_SCALE, out_dtype=None,
                       out_memory_format=torch.contiguous_format, backend: str = "auto"):
    """``exposure_step(conv1x1(features, head), state, origin, ...)`` in one fused pass.

    Args:
        features: ``[B, C, h, w]`` the backbone's last features (fp16 / bf16 / fp32,
            channels_last memory read in place; other layouts are copied).
        head: ``prepare_head`` of the backbone's final 1x1 convolution (dtype of
            ``features``).
        everything else: as ``kernels.exposure.exposure_step`` (no ``out=``).

    Returns:
        ``(estimate float32 [B, 4, h, w], next input or None)`` as ``exposure_step``.
    """
    check_tensor("features", features, dtypes=_IN_DTYPES, ndims=(4,))
    if not isinstance(head, HeadWeights):
        raise TypeError(f"head must come from prepare_head, got {type(head).__name__}")
    B, C, h, w = features.shape
    if C != head.in_channels:
        raise ValueError(f"features must have {head.in_channels} channels (the head's input), got shape "
                         f"{tuple(features.shape)}")
    if head.matrix.device != features.device:
        raise ValueError(f"head is on {head.matrix.device} but features are on {features.device}")
    if not use_triton(features.device, backend):
        return exposure_step_reference(
            head_output_reference(features, head), state, origin, ratio=ratio, K=K, rho=rho, rho_next=rho_next,
            stochastic=stochastic, generator=generator, seed=seed, accumulate=accumulate, with_photon=with_photon,
            concat_origin=concat_origin, dn_scale=dn_scale, out_dtype=out_dtype, out_memory_format=out_memory_format)
    if head.matrix.dtype != features.dtype:
        raise TypeError(f"features are {features.dtype} but the head was prepared as {head.matrix.dtype}")
    # The step's own checks, on a zero-stride stand-in of the head output (no memory).
    stand_in = features.new_zeros(1).expand(B, head.out_channels, h, w)
    cfg, params, out_dtype = _prepare(stand_in, state, origin, ratio, K, rho, rho_next, stochastic, accumulate,
                                      with_photon, concat_origin, dn_scale, out_dtype, out_memory_format,
                                      seed, generator, None, _IN_DTYPES)
    if cfg.has_next and cfg.stochastic and seed is None:
        seed = philox_seed(generator, features.device, count=B)
    est, nxt = _allocate(stand_in, cfg, out_dtype, out_memory_format)
    if B * h * w == 0:
        return est, nxt
    if features.stride(1) != 1:
        features = features.contiguous(memory_format=torch.channels_last)
    if seed is None:  # never read
        seed = torch.zeros(1, dtype=torch.int64, device=features.device)
    nx = nxt if nxt is not None else est
    check_sample_spans(features=features, state=state, origin=origin)
    args = (features, features.stride(0), features.stride(2), features.stride(3), C, head.matrix, head.bias,
            state, *state.stride(), origin, *origin.stride(),
            params.ratio, params.K, params.rho, params.rho_next if cfg.has_next else params.rho, seed,
            int(seed.numel() > 1), est, *est.stride(), nx, *nx.stride(), h, w, cfg.dn_scale)
    flags = dict(HEAD9=cfg.head9, HAS_NEXT=cfg.has_next, STOCHASTIC=cfg.stochastic and cfg.has_next,
                 ACCUMULATE=cfg.accumulate, WITH_PHOTON=cfg.with_photon, CONCAT_ORIGIN=cfg.concat_origin,
                 BLOCK_C=BLOCK_C, IEEE=features.dtype == torch.float32,
                 PIXEL_STRIDE=shared_pixel_stride(state, origin, nxt))
    row_segments = grid_of(h, w, B)
    grid = lambda meta: row_segments({"BLOCK_H": 1, "BLOCK_W": meta["BLOCK"]})  # noqa: E731
    if LAUNCH_CONFIG is None and record_launch(_head_step_tuned, args, flags):
        return est, nxt
    if LAUNCH_CONFIG is None and autotuning_enabled():
        _head_step_tuned[grid](*args, **flags)
        return est, nxt
    meta, warps = LAUNCH_CONFIG if LAUNCH_CONFIG is not None else ({"BLOCK": BLOCK}, NUM_WARPS)
    _head_step_kernel[grid(meta)](*args, **flags, **meta, num_warps=warps)
    return est, nxt


def shared_pixel_stride(state: torch.Tensor, origin: torch.Tensor, nxt: torch.Tensor | None) -> int:
    """The pixel stride P (elements) when the state, the origin and the next input all lie in
    channels_last memory with channel stride 1, pixel stride P and row stride w P (the engine's
    loop: views of P-channel NHWC inputs); 0 otherwise. As a constexpr it lets Triton prove a
    pixel's channels aligned, so they move as one vector (16 bytes for P = 8 fp16 channels)."""
    tensors = [t for t in (state, origin, nxt) if t is not None]
    p = tensors[-1].stride(3)
    w = tensors[-1].shape[3]
    dense = all(t.stride(1) == 1 and t.stride(3) == p and t.stride(2) == p * w for t in tensors)
    return int(p) if dense and 1 <= p <= 16 else 0


def aot_specs():
    """The specialisations the engine's fused path launches (``engine.inference.loop`` with
    ``FusedUNet``): a frame padded to multiples of 16; features ``[B, 32, h, w]``, the state and
    the origin ``[:, :4]`` views of the ``NC``-channel network input (4, 8 or 12 channels, fp16
    channels_last, so their channel stride is 1: a constexpr, as the JIT makes every 1); the
    estimate float32 contiguous (pixel stride 1); the next input fp16 channels_last. Every
    configuration autotune may pick for the shipped model in both photon modes (means:
    ``STOCHASTIC`` False; draws) and its last step, plus the other input layouts and bf16."""
    from .aot import AotSpec

    def spec(name, ty, block=BLOCK, warps=NUM_WARPS, **flags):
        const = dict(HEAD9=True, HAS_NEXT=True, STOCHASTIC=True, ACCUMULATE=False, WITH_PHOTON=True,
                     CONCAT_ORIGIN=False, BLOCK=block, BLOCK_C=BLOCK_C, IEEE=False)
        const.update(flags)
        channels = 4 + 4 * const["WITH_PHOTON"] + 4 * const["CONCAT_ORIGIN"]
        const["PIXEL_STRIDE"] = channels
        # Strides of 1 are constexprs, as the JIT makes every 1. Without a next step the
        # launcher passes the estimate again as the (unused) next input. The loop hands every
        # step its per-sample parameters as 16-byte-aligned rows (one compile for all steps).
        last = not const["HAS_NEXT"]
        unit = {"ss_c": 1, "so_c": 1, "se_w": 1, ("sx_w" if last else "sx_c"): 1}
        sig = {"feat_ptr": f"*{ty}", "sf_b": "i32", "sf_h": "i32", "sf_w": "i32", "C": "i32", "hw_ptr": f"*{ty}",
               "hb_ptr": "*fp32", "state_ptr": f"*{ty}", "ss_b": "i32", "ss_c": "i32", "ss_h": "i32", "ss_w": "i32",
               "origin_ptr": f"*{ty}", "so_b": "i32", "so_c": "i32", "so_h": "i32", "so_w": "i32",
               "ratio_ptr": "*fp32", "gain_ptr": "*fp32", "rho_ptr": "*fp32", "rho_next_ptr": "*fp32",
               "seed_ptr": "*i64", "seed_stride": "i32", "est_ptr": "*fp32", "se_b": "i32", "se_c": "i32",
               "se_h": "i32", "se_w": "i32", "next_ptr": "*fp32" if last else f"*{ty}", "sx_b": "i32", "sx_c": "i32",
               "sx_h": "i32", "sx_w": "i32", "h": "i32", "w": "i32", "dn_scale": "fp32"}
        sig.update({k: "constexpr" for k in (*const, *unit)})
        aligned = ["feat_ptr", "sf_b", "sf_h", "sf_w", "C", "hw_ptr", "hb_ptr", "state_ptr", "ss_b", "ss_h",
                   "origin_ptr", "so_b", "so_h", "ratio_ptr", "gain_ptr", "rho_ptr", "rho_next_ptr", "seed_ptr",
                   "seed_stride", "est_ptr", "se_b",
                   "se_c", "se_h", "next_ptr", "sx_b", "sx_h", "h", "w"] + (["sx_c"] if last else [])
        if channels % 16 == 0:  # a pixel's channels: the pixel stride
            aligned += ["ss_w", "so_w"] + ([] if last else ["sx_w"])
        # wgmma needs 64 rows per warpgroup of 4 warps; smaller programs use mma
        mma = "wgmma" if warps >= 4 and block >= 16 * warps else "mma"
        return AotSpec(f"head_step_{name}_{block}x{warps}", _head_step_kernel, sig, {**const, **unit}, warps,
                       divisible_by_16=tuple(aligned), tensor_cores=mma)

    specs = []
    for meta, warps in CONFIGS:
        specs += [spec("head9_fp16_photon_draws", "fp16", meta["BLOCK"], warps),
                  spec("head9_fp16_photon_means", "fp16", meta["BLOCK"], warps, STOCHASTIC=False),
                  spec("head9_fp16_photon_last", "fp16", meta["BLOCK"], warps, HAS_NEXT=False, STOCHASTIC=False)]
    for name, layout in (("nophoton", dict(WITH_PHOTON=False)), ("photon_origin", dict(CONCAT_ORIGIN=True))):
        specs += [spec(f"head9_fp16_{name}_means", "fp16", STOCHASTIC=False, **layout),
                  spec(f"head9_fp16_{name}_last", "fp16", HAS_NEXT=False, STOCHASTIC=False, **layout)]
    return specs + [
        spec("head9_bf16_photon_draws", "bf16"),
        spec("head4_fp16_draws", "fp16", 32, 1, HEAD9=False, WITH_PHOTON=False),
    ]
