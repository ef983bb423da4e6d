"""One step of the exposure diffusion (SPEC §4), fused: blend, Poisson photons, next input.

From the backbone output of step i, the state ``A_i`` and the origin ``A_T`` one pass
computes the estimate
    ``Y_i = clip(x0, 0, 1) * M + clip(R + A_i, 0, 1) * (1 - M)``, ``M = sigmoid(m)``
(adaptive residual head, 9 channels ``[m, x0 (4), R (4)]``) or ``Y_i = clip(out, 0, 1)``
(plain head, 4 channels) and, unless it is the last step, the next state
    default (reference code): ``mu = (rho_next - 1) * s * clip(Y_i, 0, 1) / (r K)``,
                              ``A_next = (clip(A_T, 0, 1) + P r K / s) / rho_next``;
    ``accumulate=True`` (paper): ``mu = (rho_next - rho) * s * clip(Y_i, 0, 1) / (r K)``,
                              ``A_next = (A_i rho + P r K / s) / rho_next``;
with ``P ~ Poisson(mu)`` (``stochastic=False``: ``P = mu``), written straight into the next
network input ``[A_next, A_next rho_next / (r K) if with_photon, A_T if concat_origin]``.
``clip(Y_i, 0, 1)`` equals ``Y_i`` (a convex blend of clipped values) up to rounding; it
only guarantees ``mu >= 0``.

All photon maths runs in fp32 (counts reach ~2e5, beyond fp16). The Poisson counter of
element ``(b, c, y, x)`` is its index within its sample, ``(c * h + y) * w + x``, on stream
``STREAM_POISSON``, keyed by sample b's int64 Philox key (``seed`` [B]) or the batch's
(``seed`` [1]), so the noise depends neither on block sizes nor on the memory layouts of
the tensors nor on the sample's position in the batch.

Kernel layout (issue 11): a program takes a tile of BLOCK_H rows x BLOCK_W columns of one
sample, all 4 planes (grid: column tiles, row tiles, samples), so rows and columns come
from the program ids without divisions; offsets within a sample are int32 (the launcher
refuses tensors whose samples span 2**31 elements or more), per-sample factors are
computed once per program, and the sigmoid and reciprocals use the MUFU approximations of
``_fastmath`` (relative errors below 6e-7, far inside the reference tolerance).

Gradients (training, SPEC §4): the draw is straight-through, ``P_ste = mu + (P - mu)
.detach()``, so the backward pass is that of the deterministic mode whatever the draw.
``exposure_step`` returns gradients w.r.t. ``net_out``, ``state`` and also the true
gradient w.r.t. ``origin`` (through ``clip(A_T)`` in the default form and the origin
channel); a second fused kernel computes all three in one pass. Clip kinks follow
``torch.clamp``: the gradient passes where ``0 <= v <= 1`` (boundaries included).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import (
    DEFAULT_DN_SCALE, ValueChecks, check_grid_and_offsets, check_same_device, check_sample_spans, check_tensor,
    per_sample, philox_seed, use_triton,
)
from ._cpu_sampling import poisson_draws
from ._fastmath import fast_rcp, fast_sigmoid
from ._philox import STREAM_POISSON
from ._tuning import autotuned, autotuning_enabled, record_launch
from .numbers import real
from .poisson import poisson_sample

# Tile: BLOCK_H rows x BLOCK_W columns of one sample, all 4 planes (4 * BLOCK_H * BLOCK_W
# elements); the backward kernel takes one tile per program, with NUM_WARPS warps; BLOCK is
# its pixel count.
BLOCK_H = 4
BLOCK_W = 32
BLOCK = BLOCK_H * BLOCK_W
NUM_WARPS = 8
# The forward kernel takes TILES tiles side by side per program, each a plane at a time: the
# Poisson sampler's rejection loops run as long as the slowest of one plane's BLOCK_H x
# BLOCK_W elements needs (one per thread with 32 per warp wastes least), while the per-sample
# set-up is paid once for 4 x TILES such groups. Configurations (tile, warps) that
# triton.autotune tries on the user's GPU; the draws are the same under every one.
FWD_CONFIGS = (
    ({"BLOCK_H": 1, "BLOCK_W": 32, "TILES": 1}, 1), ({"BLOCK_H": 1, "BLOCK_W": 32, "TILES": 2}, 1),
    ({"BLOCK_H": 1, "BLOCK_W": 32, "TILES": 4}, 1), ({"BLOCK_H": 1, "BLOCK_W": 64, "TILES": 2}, 1),
    ({"BLOCK_H": 1, "BLOCK_W": 128, "TILES": 1}, 4), ({"BLOCK_H": 1, "BLOCK_W": 128, "TILES": 2}, 4),
)
# The forward configuration where nothing is tuned (the interpreter).
FWD_DEFAULT = ({"BLOCK_H": 4, "BLOCK_W": 32, "TILES": 1}, 4)
# Tests: a (meta, num_warps) pair forcing one forward configuration; None: autotuned
# on a GPU, FWD_DEFAULT under the interpreter.
LAUNCH_CONFIG = None

_IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_REF_DTYPES = _IN_DTYPES + (torch.float64,)  # float64: reference backend only (gradcheck)
_MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last)


@triton.jit
def _clip01(v):
    return tl.minimum(tl.maximum(v, 0.0), 1.0)


@triton.jit
def _pixels(h, w, tile, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TILES: tl.constexpr):
    """Tile ``tile`` (0 .. TILES - 1) of this program: BLOCK_H x BLOCK_W pixels of sample b
    (BLOCK = BLOCK_H * BLOCK_W, row-major). Grid: (column tiles / TILES, row tiles, samples).

    Returns (b, y, x, pmask): sample index (int32 scalar), row / column [BLOCK] (int32, no
    division: BLOCK_W is a power of two) and the pixels' mask.
    """
    b = tl.program_id(2)
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    y = tl.program_id(1) * BLOCK_H + p // BLOCK_W
    x = (tl.program_id(0) * TILES + tile) * BLOCK_W + p % BLOCK_W
    return b, y, x, (y < h) & (x < w)


@triton.jit
def _tile(h, w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """``_pixels`` of a one-tile program and all 4 planes: (b, y, x, pmask, plane [4, 1],
    mask [4, BLOCK])."""
    b, y, x, pmask = _pixels(h, w, 0, BLOCK_H, BLOCK_W, 1)
    plane = tl.arange(0, 4)[:, None]
    return b, y, x, pmask, plane, pmask[None, :] & (plane < 4)


@triton.jit
def _at(ptr, b, s_b, s_c, s_h, s_w, plane, y, x):
    """Pointers ``[4, BLOCK]`` to planes ``plane`` ([4, 1]) at pixels (y, x) of sample b: a
    64-bit sample base once per program, int32 offsets within the sample."""
    return (ptr + b.to(tl.int64) * s_b) + (plane * s_c + (y * s_h + x * s_w)[None, :])


@triton.jit
def _inside01(v):
    """torch.clamp's gradient mask: 1 where 0 <= v <= 1, else 0 (float32)."""
    return ((v >= 0.0) & (v <= 1.0)).to(tl.float32)


@triton.jit
def _exposure_fwd_kernel(
    net_ptr, sn_b, sn_c, sn_h, sn_w,
    state_ptr, ss_b, ss_c, ss_h, ss_w,
    origin_ptr, so_b, so_c, so_h, so_w,
    ratio_ptr, gain_ptr, rho_ptr, rho_next_ptr, seed_ptr, seed_stride,
    est_ptr, se_b, se_c, se_h, se_w,
    next_ptr, sx_b, sx_c, sx_h, sx_w,
    h, w, dn_scale,
    HEAD9: tl.constexpr, HAS_NEXT: tl.constexpr, STOCHASTIC: tl.constexpr, ACCUMULATE: tl.constexpr,
    WITH_PHOTON: tl.constexpr, CONCAT_ORIGIN: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    TILES: tl.constexpr,
):
    b = tl.program_id(2)
    net = net_ptr + b.to(tl.int64) * sn_b
    mu_scale, base_weight, photon_value, photon_channel, seed = _step_factors(
        b, ratio_ptr, gain_ptr, rho_ptr, rho_next_ptr, seed_ptr, seed_stride, dn_scale,
        HAS_NEXT, STOCHASTIC, ACCUMULATE)
    for t in range(TILES):
        # (tiles wholly right of the frame are skipped)
        if (tl.program_id(0) * TILES + t) * BLOCK_W < w:
            _, y, x, pmask = _pixels(h, w, t, BLOCK_H, BLOCK_W, TILES)
            pix = y * sn_h + x * sn_w
            if HEAD9:
                m = fast_sigmoid(tl.load(net + pix, mask=pmask, other=0.0).to(tl.float32))
            else:
                m = tl.zeros([BLOCK_H * BLOCK_W], tl.float32)  # unused
            # One plane at a time: the Poisson sampler's loops then run over BLOCK elements
            # (one per thread on one warp of BLOCK = 32), while per-pixel work is shared.
            for c in range(4):
                if HEAD9:
                    x0 = tl.load(net + ((1 + c) * sn_c + pix), mask=pmask, other=0.0).to(tl.float32)
                    res = tl.load(net + ((5 + c) * sn_c + pix), mask=pmask, other=0.0).to(tl.float32)
                else:
                    x0 = tl.load(net + (c * sn_c + pix), mask=pmask, other=0.0).to(tl.float32)
                    res = x0  # unused
                _finish_plane(c, m, x0, res, b, y, x, pmask,
                              state_ptr, ss_b, ss_c, ss_h, ss_w, origin_ptr, so_b, so_c, so_h, so_w,
                              est_ptr, se_b, se_c, se_h, se_w, next_ptr, sx_b, sx_c, sx_h, sx_w, h, w,
                              mu_scale, base_weight, photon_value, photon_channel, seed,
                              HEAD9, HAS_NEXT, STOCHASTIC, ACCUMULATE, WITH_PHOTON, CONCAT_ORIGIN)


@triton.jit
def _step_factors(b, ratio_ptr, gain_ptr, rho_ptr, rho_next_ptr, seed_ptr, seed_stride, dn_scale,
                  HAS_NEXT: tl.constexpr, STOCHASTIC: tl.constexpr, ACCUMULATE: tl.constexpr):
    """Per-sample values of the step, once per program (fp32 scalars): ``mu = clip(Y) *
    mu_scale``, ``A_next = base * base_weight + P * photon_value`` (base: clip(A_T), or A_i
    when accumulating), photon channel ``A_next * photon_channel``; and the Philox key
    (one per sample, seed_stride 1, or one for the batch, 0)."""
    mu_scale = 0.0
    base_weight = 0.0
    photon_value = 0.0
    photon_channel = 0.0
    seed = tl.load(seed_ptr)
    if HAS_NEXT:
        rk = tl.load(ratio_ptr + b) * tl.load(gain_ptr + b)
        rho_next = tl.load(rho_next_ptr + b)
        inv_rk = fast_rcp(rk)
        inv_rho_next = fast_rcp(rho_next)
        if ACCUMULATE:
            rho = tl.load(rho_ptr + b)
            mu_scale = (rho_next - rho) * dn_scale * inv_rk
            base_weight = rho * inv_rho_next
        else:
            mu_scale = (rho_next - 1.0) * dn_scale * inv_rk
            base_weight = inv_rho_next
        photon_value = rk * fast_rcp(dn_scale * rho_next)
        photon_channel = rho_next * inv_rk
        if STOCHASTIC:
            seed = tl.load(seed_ptr + b * seed_stride)
    return mu_scale, base_weight, photon_value, photon_channel, seed


@triton.jit
def _plane_step(c, m, x0, res, st, org, y, x, h, w, mu_scale, base_weight, photon_value, seed,
                HEAD9: tl.constexpr, HAS_NEXT: tl.constexpr, STOCHASTIC: tl.constexpr, ACCUMULATE: tl.constexpr):
    """The arithmetic of plane ``c`` of a tile (fp32 [BLOCK] in, fp32 [BLOCK] out): the
    estimate from the head's outputs (mask ``m`` = sigmoid of the logit, ``x0``, ``res``; a
    plain head's estimate in ``x0``) and the state ``st``, then, unless it is the last step,
    the next state from the Poisson photons and the state or the origin ``org`` (fp32).
    ``st`` / ``org`` are only read where the step needs them. Returns (est, a_next); a_next is
    est when there is no next step. Shared by ``_exposure_fwd_kernel`` and the fused head
    kernel of ``kernels.head_step``, so both draw the same photons from the same head output."""
    if HEAD9:
        est = _clip01(x0) * m + _clip01(res + st) * (1.0 - m)
    else:
        est = _clip01(x0)
    a_next = est
    if HAS_NEXT:
        mu = _clip01(est) * mu_scale
        if STOCHASTIC:
            # The counter is the element's index within its sample, so a sample's draws do
            # not depend on its position in the batch: with a shared key, frame b of a batch
            # is drawn exactly as the same frame alone.
            photons = poisson_sample(mu, seed, c * (h * w) + (y * w + x), STREAM_POISSON)
        else:
            photons = mu
        if ACCUMULATE:
            a_next = st * base_weight + photons * photon_value
        else:
            a_next = _clip01(org) * base_weight + photons * photon_value
    return est, a_next


@triton.jit
def _finish_plane(
    c, m, x0, res, b, y, x, pmask,
    state_ptr, ss_b, ss_c, ss_h, ss_w,
    origin_ptr, so_b, so_c, so_h, so_w,
    est_ptr, se_b, se_c, se_h, se_w,
    next_ptr, sx_b, sx_c, sx_h, sx_w,
    h, w, mu_scale, base_weight, photon_value, photon_channel, seed,
    HEAD9: tl.constexpr, HAS_NEXT: tl.constexpr, STOCHASTIC: tl.constexpr, ACCUMULATE: tl.constexpr,
    WITH_PHOTON: tl.constexpr, CONCAT_ORIGIN: tl.constexpr,
):
    """Plane ``c`` of a tile, from the head's outputs to the stored estimate and next input
    (``_plane_step`` between a load and a store per plane). ``b``: sample (int32 scalar);
    ``y``, ``x``, ``pmask``: the pixels ([BLOCK]); the rest from ``_step_factors``."""
    b64 = b.to(tl.int64)
    need_state: tl.constexpr = HEAD9 or (HAS_NEXT and ACCUMULATE)
    need_origin: tl.constexpr = HAS_NEXT and (CONCAT_ORIGIN or not ACCUMULATE)
    st = tl.zeros_like(x0)
    org = tl.zeros_like(x0)
    if need_state:
        st = tl.load((state_ptr + b64 * ss_b) + (c * ss_c + y * ss_h + x * ss_w), mask=pmask, other=0.0).to(tl.float32)
    if need_origin:
        org = tl.load((origin_ptr + b64 * so_b) + (c * so_c + y * so_h + x * so_w), mask=pmask, other=0.0).to(tl.float32)
    est, a_next = _plane_step(c, m, x0, res, st, org, y, x, h, w, mu_scale, base_weight, photon_value, seed,
                              HEAD9, HAS_NEXT, STOCHASTIC, ACCUMULATE)
    tl.store((est_ptr + b64 * se_b) + (c * se_c + y * se_h + x * se_w), est, mask=pmask)
    if HAS_NEXT:
        out = (next_ptr + b64 * sx_b) + (c * sx_c + y * sx_h + x * sx_w)
        tl.store(out, a_next.to(next_ptr.dtype.element_ty), mask=pmask)
        if WITH_PHOTON:
            tl.store(out + 4 * sx_c, (a_next * photon_channel).to(next_ptr.dtype.element_ty), mask=pmask)
        if CONCAT_ORIGIN:
            first: tl.constexpr = 8 if WITH_PHOTON else 4
            tl.store(out + first * sx_c, org.to(next_ptr.dtype.element_ty), mask=pmask)


# Tuned per frame shape, dtypes and the options that change the kernel's work.
_exposure_fwd_tuned = autotuned(
    _exposure_fwd_kernel, FWD_CONFIGS,
    key=["h", "w", "HEAD9", "HAS_NEXT", "STOCHASTIC", "ACCUMULATE", "WITH_PHOTON", "CONCAT_ORIGIN"],
)


@triton.jit
def _exposure_bwd_kernel(
    net_ptr, sn_b, sn_c, sn_h, sn_w,
    state_ptr, ss_b, ss_c, ss_h, ss_w,
    origin_ptr, so_b, so_c, so_h, so_w,
    ratio_ptr, gain_ptr, rho_ptr, rho_next_ptr,
    gest_ptr, sge_b, sge_c, sge_h, sge_w,
    gnext_ptr, sgx_b, sgx_c, sgx_h, sgx_w,
    gnet_ptr, sdn_b, sdn_c, sdn_h, sdn_w,
    gstate_ptr, sds_b, sds_c, sds_h, sds_w,
    gorigin_ptr, sdo_b, sdo_c, sdo_h, sdo_w,
    h, w,
    HEAD9: tl.constexpr, HAS_NEXT: tl.constexpr, ACCUMULATE: tl.constexpr,
    WITH_PHOTON: tl.constexpr, CONCAT_ORIGIN: tl.constexpr,
    HAS_GEST: tl.constexpr, HAS_GNEXT: tl.constexpr, NEED_GSTATE: tl.constexpr, NEED_GORIGIN: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # Same tiling as the forward kernel; recomputes the blend from the saved inputs.
    b, y, x, pmask, plane, mask2 = _tile(h, w, BLOCK_H, BLOCK_W)
    BLOCK: tl.constexpr = BLOCK_H * BLOCK_W

    if HAS_GEST:
        g_est = tl.load(_at(gest_ptr, b, sge_b, sge_c, sge_h, sge_w, plane, y, x), mask=mask2, other=0.0).to(tl.float32)
    else:
        g_est = tl.zeros([4, BLOCK], tl.float32)
    g_state = tl.zeros([4, BLOCK], tl.float32)
    g_origin = tl.zeros([4, BLOCK], tl.float32)

    if HEAD9:
        st = tl.load(_at(state_ptr, b, ss_b, ss_c, ss_h, ss_w, plane, y, x), mask=mask2, other=0.0).to(tl.float32)
        net = _at(net_ptr, b, sn_b, 0, sn_h, sn_w, 0, y, x)
        logit = tl.load(net, mask=pmask[None, :], other=0.0).to(tl.float32)
        x0 = tl.load(net + (1 + plane) * sn_c, mask=mask2, other=0.0).to(tl.float32)
        res = tl.load(net + (5 + plane) * sn_c, mask=mask2, other=0.0).to(tl.float32)
        m = tl.sigmoid(logit)
        a = _clip01(x0)
        c = _clip01(res + st)
        est = a * m + c * (1.0 - m)
    else:
        out = tl.load(_at(net_ptr, b, sn_b, sn_c, sn_h, sn_w, plane, y, x), mask=mask2, other=0.0).to(tl.float32)
        est = _clip01(out)

    g_y = g_est
    if HAS_NEXT:
        if HAS_GNEXT:
            rk = tl.load(ratio_ptr + b) * tl.load(gain_ptr + b)
            rho_next = tl.load(rho_next_ptr + b)
            gx = _at(gnext_ptr, b, sgx_b, sgx_c, sgx_h, sgx_w, plane, y, x)
            g_a = tl.load(gx, mask=mask2, other=0.0).to(tl.float32)
            if WITH_PHOTON:
                g_a += tl.load(gx + 4 * sgx_c, mask=mask2, other=0.0).to(tl.float32) * (rho_next / rk)
            # dA_next/dY = (photon multiples added) / rho_next: s and r K cancel.
            if ACCUMULATE:
                rho = tl.load(rho_ptr + b)
                g_y += g_a * ((rho_next - rho) / rho_next) * _inside01(est)
                g_state += g_a * (rho / rho_next)
            else:
                g_y += g_a * ((rho_next - 1.0) / rho_next) * _inside01(est)
                if NEED_GORIGIN:
                    org = tl.load(_at(origin_ptr, b, so_b, so_c, so_h, so_w, plane, y, x), mask=mask2, other=0.0).to(tl.float32)
                    g_origin += g_a / rho_next * _inside01(org)
            if CONCAT_ORIGIN:
                if NEED_GORIGIN:
                    first: tl.constexpr = 8 if WITH_PHOTON else 4
                    g_origin += tl.load(gx + first * sgx_c, mask=mask2, other=0.0).to(tl.float32)

    gn = _at(gnet_ptr, b, sdn_b, 0, sdn_h, sdn_w, 0, y, x)
    if HEAD9:
        # m is a [1, BLOCK] row: the mask logit's gradient sums over the 4 planes.
        g_logit = tl.sum(g_y * (a - c), axis=0)[None, :] * m * (1.0 - m)
        tl.store(gn, g_logit.to(gnet_ptr.dtype.element_ty), mask=pmask[None, :])
        tl.store(gn + (1 + plane) * sdn_c, (g_y * m * _inside01(x0)).to(gnet_ptr.dtype.element_ty), mask=mask2)
        g_res = g_y * (1.0 - m) * _inside01(res + st)
        tl.store(gn + (5 + plane) * sdn_c, g_res.to(gnet_ptr.dtype.element_ty), mask=mask2)
        g_state += g_res
    else:
        tl.store(gn + plane * sdn_c, (g_y * _inside01(out)).to(gnet_ptr.dtype.element_ty), mask=mask2)
    if NEED_GSTATE:
        tl.store(_at(gstate_ptr, b, sds_b, sds_c, sds_h, sds_w, plane, y, x), g_state.to(gstate_ptr.dtype.element_ty), mask=mask2)
    if NEED_GORIGIN:
        tl.store(_at(gorigin_ptr, b, sdo_b, sdo_c, sdo_h, sdo_w, plane, y, x), g_origin.to(gorigin_ptr.dtype.element_ty), mask=mask2)


class _Config(NamedTuple):
    head9: bool
    has_next: bool
    stochastic: bool
    accumulate: bool
    with_photon: bool
    concat_origin: bool
    dn_scale: float

    @property
    def next_channels(self) -> int:
        return 4 * (1 + self.with_photon + self.concat_origin)

    @property
    def uses_state(self) -> bool:
        return self.head9 or (self.has_next and self.accumulate)

    @property
    def uses_origin(self) -> bool:
        return self.has_next and (self.concat_origin or not self.accumulate)


class _Params(NamedTuple):
    ratio: torch.Tensor
    K: torch.Tensor
    rho: torch.Tensor
    rho_next: torch.Tensor | None


def _prepare(net_out, state, origin, ratio, K, rho, rho_next, stochastic, accumulate, with_photon,
             concat_origin, dn_scale, out_dtype, out_memory_format, seed, generator, out, dtypes):
    """Validate everything; return (config, per-sample params, dtype of the next input)."""
    check_tensor("net_out", net_out, dtypes=dtypes, ndims=(4,))
    check_tensor("state", state, dtypes=dtypes, ndims=(4,))
    check_tensor("origin", origin, dtypes=dtypes, ndims=(4,))
    B, C, h, w = net_out.shape
    if C not in (4, 9):
        raise ValueError(
            f"net_out must have 9 channels (adaptive residual head: mask logit, x0, R) or 4 (plain head), "
            f"got shape {tuple(net_out.shape)}")
    for name, t in (("state", state), ("origin", origin)):
        if tuple(t.shape) != (B, 4, h, w):
            raise ValueError(f"{name} must have shape {(B, 4, h, w)} to match net_out {tuple(net_out.shape)}, got {tuple(t.shape)}")
    device = check_same_device(net_out=net_out, state=state, origin=origin)  # after shapes: same message on any device
    check_grid_and_offsets(B, h, w, 12)  # the next input has up to 12 channels
    dn_scale = real("dn_scale", dn_scale, low=0, low_open=True)
    if out_memory_format not in _MEMORY_FORMATS:
        raise ValueError(f"out_memory_format must be torch.contiguous_format or torch.channels_last, got {out_memory_format}")
    if out_dtype is not None and out_dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"out_dtype must be one of ({names}), got {out_dtype}")
    checks = ValueChecks()
    params = _Params(
        per_sample("ratio", ratio, B, device, positive=True, checks=checks),
        per_sample("K", K, B, device, positive=True, checks=checks),
        per_sample("rho", rho, B, device, min_value=1.0, checks=checks),
        None if rho_next is None else per_sample("rho_next", rho_next, B, device, checks=checks),
    )
    if params.rho_next is not None:
        checks.require(lambda: params.rho_next > params.rho, lambda: (
            f"rho_next must be > rho for every sample, got rho={params.rho.tolist()}, rho_next={params.rho_next.tolist()}"))
    checks.run()  # one host read per call (none inside value_checks_disabled)
    if seed is not None:
        check_tensor("seed", seed, dtypes=(torch.int64,))
        if seed.dim() != 1 or seed.numel() not in (1, B):
            raise ValueError(f"seed must hold one int64 Philox key for the batch (shape [1]) or one per sample "
                             f"(shape [{B}]), got shape {tuple(seed.shape)}")
        if seed.device != device:
            raise ValueError(f"seed is on {seed.device} but the data is on {device}")
        if generator is not None:
            raise ValueError("pass either generator= or seed=, not both")
    cfg = _Config(C == 9, rho_next is not None, bool(stochastic), bool(accumulate), bool(with_photon), bool(concat_origin), float(dn_scale))
    if out_dtype is None:
        out_dtype = net_out.dtype if net_out.dtype in (torch.float16, torch.float64) else torch.float32
    if out is not None:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (net_out, state, origin)):
            raise ValueError("out= buffers cannot be used when gradients are required")
        out_dtype = _check_out(out, cfg, (B, h, w), device, dtypes)
    return cfg, params, out_dtype


def _check_out(out, cfg, bhw, device, dtypes):
    B, h, w = bhw
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError("out must be a pair (estimate, next_input) of tensors (next_input None at the last step)")
    est, nxt = out
    check_tensor("out[0] (estimate)", est, dtypes=(torch.float32, torch.float64)[:1 + (torch.float64 in dtypes)], ndims=(4,))
    if tuple(est.shape) != (B, 4, h, w):
        raise ValueError(f"out[0] (estimate) must have shape {(B, 4, h, w)}, got {tuple(est.shape)}")
    if est.device != device:
        raise ValueError(f"out[0] (estimate) is on {est.device} but the data is on {device}")
    if not cfg.has_next:
        if nxt is not None:
            raise ValueError("out[1] must be None at the last step (rho_next=None): no next input is made")
        return None
    check_tensor("out[1] (next_input)", nxt, dtypes=dtypes, ndims=(4,))
    if tuple(nxt.shape) != (B, cfg.next_channels, h, w):
        raise ValueError(
            f"out[1] (next_input) must have shape {(B, cfg.next_channels, h, w)} "
            f"(4 state + 4 if with_photon + 4 if concat_origin channels), got {tuple(nxt.shape)}")
    if nxt.device != device:
        raise ValueError(f"out[1] (next_input) is on {nxt.device} but the data is on {device}")
    return nxt.dtype


def grid_of(h: int, w: int, B: int):
    """The launch grid of a (BLOCK_H, BLOCK_W, TILES) tiling: (column tiles / TILES, row tiles, samples)."""
    return lambda meta: (triton.cdiv(w, meta["BLOCK_W"] * meta.get("TILES", 1)), triton.cdiv(h, meta["BLOCK_H"]), B)


def _launch_forward(net_out, state, origin, cfg, params, seed, est, nxt):
    B, _, h, w = net_out.shape
    if h * w == 0 or B == 0:
        return
    nx = nxt if nxt is not None else est
    check_sample_spans(net_out=net_out, state=state, origin=origin, estimate=est, next_input=nxt)
    has_next = cfg.has_next
    if seed is None:  # never read: STOCHASTIC is off or there is no next step
        seed = torch.zeros(1, dtype=torch.int64, device=net_out.device)
    args = (
        net_out, *net_out.stride(), state, *state.stride(), origin, *origin.stride(),
        params.ratio, params.K, params.rho, params.rho_next if has_next else params.rho, seed, int(seed.numel() > 1),
        est, *est.stride(), nx, *nx.stride(),
        h, w, cfg.dn_scale,
    )
    flags = dict(HEAD9=cfg.head9, HAS_NEXT=has_next, STOCHASTIC=cfg.stochastic and has_next, ACCUMULATE=cfg.accumulate,
                 WITH_PHOTON=cfg.with_photon, CONCAT_ORIGIN=cfg.concat_origin)
    grid = grid_of(h, w, B)
    if LAUNCH_CONFIG is None and record_launch(_exposure_fwd_tuned, args, flags):
        return
    if LAUNCH_CONFIG is None and autotuning_enabled():
        _exposure_fwd_tuned[grid](*args, **flags)
        return
    meta, warps = LAUNCH_CONFIG if LAUNCH_CONFIG is not None else FWD_DEFAULT
    _exposure_fwd_kernel[grid(meta)](*args, **flags, **meta, num_warps=warps)


def _grad_buffer(t: torch.Tensor) -> torch.Tensor:
    # Same layout as the input when it is dense (channels_last stays channels_last).
    return torch.empty_like(t)


class _ExposureStepFunction(torch.autograd.Function):
    """Triton forward + fused Triton backward; straight-through Poisson draw."""

    @staticmethod
    def forward(ctx, net_out, state, origin, cfg, params, seed, out_dtype, out_memory_format):
        est, nxt = _allocate(net_out, cfg, out_dtype, out_memory_format)
        _launch_forward(net_out, state, origin, cfg, params, seed, est, nxt)
        ctx.save_for_backward(net_out, state, origin)
        ctx.cfg, ctx.params = cfg, params
        ctx.set_materialize_grads(False)
        return est, nxt

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_est, g_next):
        net_out, state, origin = ctx.saved_tensors
        cfg, params = ctx.cfg, ctx.params
        need_net, need_state, need_origin = ctx.needs_input_grad[:3]
        need_state = need_state and cfg.uses_state
        need_origin = need_origin and cfg.uses_origin
        has_gnext = g_next is not None and cfg.has_next
        if g_est is None and not has_gnext:
            return (None,) * 8
        g_net = _grad_buffer(net_out)
        g_state = _grad_buffer(state) if need_state else g_net
        g_origin = _grad_buffer(origin) if need_origin else g_net
        ge = g_est if g_est is not None else net_out
        gx = g_next if has_gnext else net_out
        B, _, h, w = net_out.shape
        if B * h * w:
            check_sample_spans(g_estimate=g_est, g_next=g_next)
            _exposure_bwd_kernel[grid_of(h, w, B)({"BLOCK_H": BLOCK_H, "BLOCK_W": BLOCK_W})](
                net_out, *net_out.stride(), state, *state.stride(), origin, *origin.stride(),
                params.ratio, params.K, params.rho, params.rho_next if cfg.has_next else params.rho,
                ge, *ge.stride(), gx, *gx.stride(),
                g_net, *g_net.stride(), g_state, *g_state.stride(), g_origin, *g_origin.stride(),
                h, w,
                HEAD9=cfg.head9, HAS_NEXT=cfg.has_next, ACCUMULATE=cfg.accumulate,
                WITH_PHOTON=cfg.with_photon, CONCAT_ORIGIN=cfg.concat_origin,
                HAS_GEST=g_est is not None, HAS_GNEXT=has_gnext, NEED_GSTATE=need_state, NEED_GORIGIN=need_origin,
                BLOCK_H=BLOCK_H, BLOCK_W=BLOCK_W, num_warps=NUM_WARPS,
            )
        return (g_net if need_net else None, g_state if need_state else None,
                g_origin if need_origin else None, None, None, None, None, None)


def _allocate(net_out, cfg, out_dtype, out_memory_format):
    B, _, h, w = net_out.shape
    est = torch.empty((B, 4, h, w), dtype=torch.float32, device=net_out.device)
    nxt = None
    if cfg.has_next:
        nxt = torch.empty((B, cfg.next_channels, h, w), dtype=out_dtype, device=net_out.device, memory_format=out_memory_format)
    return est, nxt


def exposure_step(
    net_out: torch.Tensor,
    state: torch.Tensor,
    origin: torch.Tensor,
    *,
    ratio,
    K,
    rho,
    rho_next=None,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
    seed: torch.Tensor | None = None,
    accumulate: bool = False,
    with_photon: bool = False,
    concat_origin: bool = False,
    dn_scale: float = DEFAULT_DN_SCALE,
    out_dtype: torch.dtype | None = None,
    out_memory_format: torch.memory_format = torch.contiguous_format,
    out: tuple | None = None,
    backend: str = "auto",
):
    """One exposure-diffusion step (SPEC §4): estimate ``Y_i`` and the next network input.

    Args:
        net_out: backbone output ``[B, 9, h, w]`` (adaptive residual head: mask logit,
            x0 (4), R (4)) or ``[B, 4, h, w]`` (plain head); float16/bfloat16/float32,
            any strides (channels_last is read in place, never copied). Normalised units.
            The reference backend also takes float64 (for gradcheck).
        state: ``A_i`` ``[B, 4, h, w]``, normalised and amplified; any float dtype/strides.
        origin: ``A_T`` ``[B, 4, h, w]`` (the first state), likewise.
        ratio, K, rho, rho_next: per-sample exposure ratio r (> 0), gain K in DN per
            photo-electron (> 0), exposure multiples rho_i (>= 1) and rho_{i+1} (> rho_i):
            numbers, sequences or float tensors ``[B]`` on the data's device.
            ``rho_next=None`` marks the last step: no next input, nothing drawn.
        stochastic: draw ``P ~ Poisson(mu)``; False uses ``P = mu`` (deterministic).
        generator: torch.Generator giving one Philox key per sample (default: torch's
            global one), so the samples of a batch draw independent noise.
        seed: instead of ``generator``, an int64 tensor on the data's device (as
            ``kernels._common.philox_seed`` makes): ``[B]``, one key per sample, or ``[1]``,
            one key for every sample. A sample's draws depend only on its key, its values
            and the step, not on its position in the batch: with a ``[1]`` key a frame in
            a batch gets exactly the draws it gets alone (the engine's batch invariance).
            The kernel reads the key from memory, so a captured CUDA graph replays with
            fresh noise once a new key is written into it; no generator is touched during
            capture.
        accumulate: paper form (add ``rho_next - rho`` exposures of photons onto ``A_i``)
            instead of the reference-code form (``rho_next - 1`` exposures onto ``A_T``).
        with_photon, concat_origin: next-input channels (4, 8 or 12), see NOTES.md; the
            origin channel is ``origin`` as given (the update itself uses clip(A_T, 0, 1)).
        dn_scale: normalised -> DN scale s (SPEC §2).
        out_dtype: dtype of the next input (default: float16 if net_out is float16,
            else float32). out_memory_format: its layout, contiguous or channels_last.
        out: optional preallocated ``(estimate, next_input)`` (``next_input`` None at the
            last step), any strides; then out_dtype/out_memory_format are taken from it.
            Not allowed when gradients are required.
        backend: "auto" (Triton on CUDA, PyTorch on the CPU), "triton" or "torch". The PyTorch
            form is the reference where gradients are required (or float64); otherwise, on
            the CPU, the reference's maths evaluated in bands of rows into the outputs
            (``_exposure_step_banded``: ~1 MB temporaries instead of ~20 frame-sized ones).

    Returns:
        ``(estimate, next_input)``: ``Y_i`` float32 ``[B, 4, h, w]`` contiguous, and
        ``[B, 4|8|12, h, w]`` in out_dtype (None at the last step).

    Gradients: when any input requires grad (and grad mode is on), the straight-through
    gradient (SPEC §4) flows to net_out, state and origin (origin: its true gradient).
    Inside CUDA-graph capture pass per-sample values as device tensors, ``seed=`` as
    the key, and wrap the call in ``kernels._common.value_checks_disabled()``.
    """
    check_tensor("net_out", net_out)  # before dispatch: the same refusal whatever the device and backend
    if not use_triton(net_out.device, backend):
        differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (net_out, state, origin))
        if differentiable or net_out.dtype == torch.float64 or net_out.device.type != "cpu":
            return exposure_step_reference(
                net_out, state, origin, ratio=ratio, K=K, rho=rho, rho_next=rho_next, stochastic=stochastic,
                generator=generator, seed=seed, accumulate=accumulate, with_photon=with_photon,
                concat_origin=concat_origin, dn_scale=dn_scale, out_dtype=out_dtype,
                out_memory_format=out_memory_format, out=out)
        cfg, params, out_dtype = _prepare(net_out, state, origin, ratio, K, rho, rho_next, stochastic, accumulate,
                                          with_photon, concat_origin, dn_scale, out_dtype, out_memory_format,
                                          seed, generator, out, _REF_DTYPES)
        return _exposure_step_banded(net_out, state, origin, cfg, params, out_dtype, out_memory_format,
                                     generator, seed, out)
    cfg, params, out_dtype = _prepare(net_out, state, origin, ratio, K, rho, rho_next, stochastic, accumulate,
                                      with_photon, concat_origin, dn_scale, out_dtype, out_memory_format,
                                      seed, generator, out, _IN_DTYPES)
    if cfg.has_next and cfg.stochastic and seed is None:
        seed = philox_seed(generator, net_out.device, count=net_out.shape[0])  # independent samples
    if torch.is_grad_enabled() and any(t.requires_grad for t in (net_out, state, origin)):
        est, nxt = _ExposureStepFunction.apply(net_out, state, origin, cfg, params, seed, out_dtype, out_memory_format)
        return est, (nxt if cfg.has_next else None)
    est, nxt = out if out is not None else _allocate(net_out, cfg, out_dtype, out_memory_format)
    _launch_forward(net_out, state, origin, cfg, params, seed, est, nxt)
    return est, nxt


def exposure_step_reference(
    net_out, state, origin, *, ratio, K, rho, rho_next=None, stochastic=True, generator=None, seed=None,
    accumulate=False, with_photon=False, concat_origin=False, dn_scale=DEFAULT_DN_SCALE, out_dtype=None,
    out_memory_format=torch.contiguous_format, out=None,
):
    """Plain-PyTorch reference of ``exposure_step`` (same arguments and outputs).

    Differentiable by autograd (straight-through draw). Computes in float32, or in
    float64 when net_out is float64 (then the estimate and default next input are
    float64 too: for gradcheck). Draws with ``torch.poisson`` (in parallel chunks on the
    CPU: ``kernels._cpu_sampling.poisson_draws``): from ``generator`` for the whole batch,
    or, given ``seed``, sample by sample from a generator seeded with its key (a host
    read), so that, as in the kernel, a sample's draws do not depend on its batch
    position; the values differ from Triton's (another sampler).
    """
    cfg, p, out_dtype = _prepare(net_out, state, origin, ratio, K, rho, rho_next, stochastic, accumulate,
                                 with_photon, concat_origin, dn_scale, out_dtype, out_memory_format,
                                 seed, generator, out, _REF_DTYPES)
    cdt = torch.float64 if net_out.dtype == torch.float64 else torch.float32
    col = lambda v: v.to(cdt).view(-1, 1, 1, 1)  # noqa: E731
    a_i = state.to(cdt)
    estimate = _estimate_of(net_out, a_i, cfg, cdt)
    nxt = None
    if cfg.has_next:
        mu = _photon_means(estimate, cfg, p, col)
        if cfg.stochastic:
            draw = _photon_draws(mu.detach(), generator, seed).to(mu.dtype)
            photons = mu + (draw - mu).detach()  # straight-through (SPEC §4 training)
        else:
            photons = mu
        chans = _next_input_channels(a_i, origin, photons, cfg, p, col, cdt)
        nxt = torch.cat(chans, 1).to(out_dtype).contiguous(memory_format=out_memory_format)
    if out is not None:
        with torch.no_grad():
            out[0].copy_(estimate)
            if nxt is not None:
                out[1].copy_(nxt)
        return out[0], out[1]
    return estimate.contiguous(), nxt


# The reference's maths, term by term: shared with the banded CPU form below, so that the
# two evaluate the same float32 expressions.
def _estimate_of(net_out, a_i, cfg, cdt):
    """``Y_i`` from the backbone output and the state ``A_i`` (already in ``cdt``)."""
    if cfg.head9:
        out9 = net_out.to(cdt)
        m = torch.sigmoid(out9[:, :1])
        return out9[:, 1:5].clamp(0, 1) * m + (out9[:, 5:9] + a_i).clamp(0, 1) * (1 - m)
    return net_out.to(cdt).clamp(0, 1)


def _photon_means(estimate, cfg, p, col):
    """``mu``: the Poisson means of the photons added before the next step."""
    s, rk, rho_next_c = cfg.dn_scale, col(p.ratio) * col(p.K), col(p.rho_next)
    added = rho_next_c - col(p.rho) if cfg.accumulate else rho_next_c - 1
    return added * s * estimate.clamp(0, 1) / rk


def _photon_draws(mu, generator, seed):
    """``P ~ Poisson(mu)``: from ``generator`` for the whole batch, or per sample from its
    key (one shared key: batch invariant, as the kernel)."""
    if seed is None:
        return poisson_draws(mu, generator)
    keys = seed.tolist() * (mu.shape[0] if seed.numel() == 1 else 1)
    draws = [poisson_draws(mu[b], torch.Generator(device=mu.device).manual_seed(key)) for b, key in enumerate(keys)]
    return torch.stack(draws) if draws else mu.clone()


def _next_input_channels(a_i, origin, photons, cfg, p, col, cdt):
    """The next network input's channel groups ``[A_next, photon?, origin?]`` in ``cdt``."""
    s, rk, rho_next_c = cfg.dn_scale, col(p.ratio) * col(p.K), col(p.rho_next)
    base = a_i * col(p.rho) if cfg.accumulate else origin.to(cdt).clamp(0, 1)
    a_next = (base + photons * rk / s) / rho_next_c
    chans = [a_next]
    if cfg.with_photon:
        chans.append(a_next * rho_next_c / rk)
    if cfg.concat_origin:
        chans.append(origin.to(cdt))
    return chans


# Pixels per band of the CPU form: each temporary is 4 planes x 64 K floats per sample
# (1 MB), so they stay in the caches instead of ~20 frame-sized tensors (0.5 GB at 12 MP).
CPU_BAND_PIXELS = 1 << 16


def _exposure_step_banded(net_out, state, origin, cfg, p, out_dtype, out_memory_format, generator, seed, out):
    """The reference's float32 maths (no autograd) evaluated band of rows by band of rows,
    written into the outputs: the CPU inference path. Equal to the reference up to the
    last bit of the sigmoid (vectorised vs scalar tails); the same draws (the means of the
    whole frame are drawn at once, as the reference draws them)."""
    B, _, h, w = net_out.shape
    est, nxt = out if out is not None else _allocate(net_out, cfg, out_dtype, out_memory_format)
    col = lambda v: v.to(torch.float32).view(-1, 1, 1, 1)  # noqa: E731
    rows = max(1, CPU_BAND_PIXELS // max(w, 1))
    bands = [slice(r, min(r + rows, h)) for r in range(0, h, rows)]
    means = torch.empty((B, 4, h, w), dtype=torch.float32) if cfg.has_next and cfg.stochastic else None
    with torch.no_grad():
        for band in bands:
            a_i = state[:, :, band].to(torch.float32)
            estimate = _estimate_of(net_out[:, :, band], a_i, cfg, torch.float32)
            est[:, :, band] = estimate
            if not cfg.has_next:
                continue
            mu = _photon_means(estimate, cfg, p, col)
            if cfg.stochastic:
                means[:, :, band] = mu
            else:
                nxt[:, :, band] = torch.cat(_next_input_channels(a_i, origin[:, :, band], mu, cfg, p, col,
                                                                 torch.float32), 1)
        if means is not None:
            draws = _photon_draws(means, generator, seed)
            for band in bands:
                mu = means[:, :, band]
                photons = mu + (draws[:, :, band] - mu)  # the reference's straight-through sum, value for value
                nxt[:, :, band] = torch.cat(_next_input_channels(state[:, :, band].to(torch.float32),
                                                                 origin[:, :, band], photons, cfg, p, col,
                                                                 torch.float32), 1)
    return est, nxt


def aot_specs():
    from .aot import AotSpec

    def strides(prefix):
        return {f"{prefix}_{d}": "i32" for d in "bchw"}

    def fwd(name, in_ty, out_ty, num_warps=FWD_DEFAULT[1], **flags):
        sig = {"net_ptr": f"*{in_ty}", **strides("sn"), "state_ptr": f"*{in_ty}", **strides("ss"),
               "origin_ptr": f"*{in_ty}", **strides("so"), "ratio_ptr": "*fp32", "gain_ptr": "*fp32",
               "rho_ptr": "*fp32", "rho_next_ptr": "*fp32", "seed_ptr": "*i64", "seed_stride": "i32",
               "est_ptr": "*fp32", **strides("se"), "next_ptr": f"*{out_ty}", **strides("sx"),
               "h": "i32", "w": "i32", "dn_scale": "fp32"}
        const = dict(HEAD9=True, HAS_NEXT=True, STOCHASTIC=True, ACCUMULATE=False, WITH_PHOTON=False,
                     CONCAT_ORIGIN=False, **FWD_DEFAULT[0])
        const.update(flags)
        sig.update({k: "constexpr" for k in const})
        return AotSpec(f"exposure_fwd_{name}", _exposure_fwd_kernel, sig, const, num_warps)

    def bwd(name, in_ty, **flags):
        sig = {"net_ptr": f"*{in_ty}", **strides("sn"), "state_ptr": f"*{in_ty}", **strides("ss"),
               "origin_ptr": f"*{in_ty}", **strides("so"), "ratio_ptr": "*fp32", "gain_ptr": "*fp32",
               "rho_ptr": "*fp32", "rho_next_ptr": "*fp32",
               "gest_ptr": "*fp32", **strides("sge"), "gnext_ptr": f"*{in_ty}", **strides("sgx"),
               "gnet_ptr": f"*{in_ty}", **strides("sdn"), "gstate_ptr": f"*{in_ty}", **strides("sds"),
               "gorigin_ptr": f"*{in_ty}", **strides("sdo"), "h": "i32", "w": "i32"}
        const = dict(HEAD9=True, HAS_NEXT=True, ACCUMULATE=False, WITH_PHOTON=False, CONCAT_ORIGIN=False,
                     HAS_GEST=True, HAS_GNEXT=True, NEED_GSTATE=True, NEED_GORIGIN=False, BLOCK_H=BLOCK_H,
                     BLOCK_W=BLOCK_W)
        const.update(flags)
        sig.update({k: "constexpr" for k in const})
        return AotSpec(f"exposure_bwd_{name}", _exposure_bwd_kernel, sig, const, NUM_WARPS)

    return [
        fwd("head9_fp16", "fp16", "fp16"),
        fwd("head9_fp32", "fp32", "fp32"),
        fwd("head4_fp16", "fp16", "fp16", HEAD9=False),
        fwd("head4_fp32", "fp32", "fp32", HEAD9=False),
        fwd("head9_fp16_photon_origin", "fp16", "fp16", WITH_PHOTON=True, CONCAT_ORIGIN=True),
        fwd("head9_fp16_accumulate", "fp16", "fp16", ACCUMULATE=True),
        fwd("head9_fp16_deterministic", "fp16", "fp16", STOCHASTIC=False),
        fwd("head9_fp16_last", "fp16", "fp32", HAS_NEXT=False, STOCHASTIC=False),
        fwd("head4_fp32_last", "fp32", "fp32", HEAD9=False, HAS_NEXT=False, STOCHASTIC=False),
        # every configuration autotune may pick, on the engine's fp16 step with all channels
        *[fwd(f"head9_fp16_photon_origin[{meta['BLOCK_H']}x{meta['BLOCK_W']}x{meta['TILES']}x{warps}w]", "fp16", "fp16",
              num_warps=warps,
              WITH_PHOTON=True, CONCAT_ORIGIN=True, **meta) for meta, warps in FWD_CONFIGS],
        bwd("head9_fp32", "fp32"),
        bwd("head9_fp16", "fp16"),
        bwd("head9_fp32_photon_origin_grad", "fp32", WITH_PHOTON=True, CONCAT_ORIGIN=True, NEED_GORIGIN=True),
        bwd("head9_fp32_accumulate", "fp32", ACCUMULATE=True),
        bwd("head4_fp32", "fp32", HEAD9=False, NEED_GSTATE=False),
    ]
