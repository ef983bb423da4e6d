"""ELD noise synthesis (SPEC §3) in one fused pass: clean packed patch -> noisy input.

``synthesize_noise(clean, "P+G+r+u", ratio=..., K=..., ...)`` simulates the short
exposure of a clean, normalised, packed image ``x`` ``[B, 4, h, w]`` (planes R, G1, B,
G2) in DN, ``y = x * s / r``, adds the named noise components and returns either the
clipped, amplified network input ``A_T = clip(z * r / s, 0, 1)`` (optionally with its
photon and origin channels, SPEC §4) or, for camera calibration, the noisy raw in DN on
top of a black level.

Components (letters of ``model``, joined by "+", any order):

==  ==========================  ==================================================
P   Poisson shot noise          ``z = K * Poisson(y / K)``
p   its Gaussian approximation  ``z = y + sqrt(max(K * y, 1e-10)) * N(0, 1)``
g   Gaussian read noise         ``z += sigma_g * N(0, 1)``
G   Tukey-lambda read noise     ``z += sigma_TL * TL(lam)``
r   row noise                   ``z += N(0, sigma_r)``, one value per CFA row
u   quantisation noise          ``z += U(-0.5, 0.5)``
==  ==========================  ==================================================

``TL(lam) = (u^lam - (1-u)^lam) / lam``, the logistic ``log(u / (1-u))`` at lam = 0.
Row noise: packed planes 0, 1 (R, G1) come from one CFA row and planes 2, 3 (B, G2)
from the other, so packed row ``y`` of sample ``b`` carries two row values, keyed by
``(b, y, half)`` with ``half = plane // 2``.

Randomness (Triton path): one Philox key per call (``_common.philox_seed``); element
``(b, c, y, x)`` has the counter index ``b * 2**32 + (c * h + y) * w + x`` (sample b in the
high word: ``_philox.sample_index``). Shot noise "P" uses the Poisson sampler's calls on
``STREAM_POISSON``; everything else per element comes from the four words of one call on
``STREAM_GAUSS``: words 0, 1 a Box-Muller pair (the first normal for "p", the second for
"g"), word 2 the Tukey-lambda uniform ("G"), word 3 the quantisation uniform ("u"). Row
noise: one call per (b, packed row y) on ``STREAM_ROW`` (index ``b * 2**32 + y``), its
Box-Muller pair giving half 0 (planes 0, 1) and half 1 (planes 2, 3). So the draws depend
neither on block sizes nor on the input's or output's strides. The reference draws with
torch's own samplers from the same generator: same distributions, different numbers.
(Until session 4 Tukey-lambda and quantisation had calls of their own, the counter was
the flat int64 index and each row half had its own call: the draws changed, not their
distribution.)

Kernel layout (issue 11): a program takes BLOCK_H rows x BLOCK_W columns of all 4 planes
of one sample, a plane at a time (grid: column tiles, row tiles, samples: no divisions),
offsets within a sample are int32 (the launcher refuses larger samples), per-sample
factors and row noise are computed once per program, and the transforms use the MUFU
approximations of ``_fastmath`` (accuracy stated in ``_tukey_lambda`` and
``_philox.box_muller``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._common import (
    DEFAULT_DN_SCALE, ValueChecks, check_grid_and_offsets, check_sample_spans, check_tensor, generator_for,
    per_sample, philox_seed, use_triton,
)
from ._cpu_sampling import poisson_draws, tukey_lambda_draws
from ._fastmath import fast_exp2, fast_log2, fast_rcp
from ._philox import (
    STREAM_GAUSS,
    STREAM_POISSON,
    STREAM_ROW,
    box_muller,
    open_unit,
    open_unit_and_complement,
    philox4,
    sample_index,
)
from ._tuning import autotuned, autotuning_enabled, record_launch
from .noise_model import NoiseModel, NoiseParams, parse_noise_model
from .numbers import real
from .poisson import MAX_MEAN, poisson_sample

# Tile: BLOCK_H packed rows x BLOCK_W columns of all 4 planes of one sample (coalesced along
# w); a program takes TILES tiles side by side, each a plane at a time. The Poisson sampler's
# rejection loops run as long as the slowest of one plane's BLOCK_H x BLOCK_W elements needs
# (one per thread with 32 per warp wastes least); the per-sample set-up and the row noise are
# paid once for 4 x TILES such groups. Configurations (tile, warps) that triton.autotune
# tries on the user's GPU; the draws are the same under every configuration.
CONFIGS = (
    ({"BLOCK_H": 1, "BLOCK_W": 32, "TILES": 1}, 1), ({"BLOCK_H": 1, "BLOCK_W": 32, "TILES": 2}, 1),
    ({"BLOCK_H": 1, "BLOCK_W": 32, "TILES": 4}, 1), ({"BLOCK_H": 1, "BLOCK_W": 64, "TILES": 2}, 1),
    ({"BLOCK_H": 1, "BLOCK_W": 128, "TILES": 1}, 4), ({"BLOCK_H": 1, "BLOCK_W": 128, "TILES": 2}, 4),
)
# The tile where nothing is tuned (the interpreter; an output sharing memory with the
# input, which tuning's repeated launches would overwrite). Read at call time, so tests
# may change them.
BLOCK_H = 1
BLOCK_W = 128
TILES = 1
NUM_WARPS = 4
# Tests: a (meta, num_warps) pair forcing one configuration; None: as above.
LAUNCH_CONFIG = None

OUTPUTS = ("network", "dn")
# --------------------------------------------------------------------------- kernel
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _tukey_lambda(bits, lam, inv_lam):
    """Tukey-lambda(lam) draws from uint32 bits, stable through lam = 0.

    (u^lam - v^lam) / lam = v^lam * L * phi(d), L = ln(u / v), d = lam L, phi(d) = expm1(d) / d,
    with v = 1 - u exact; phi by its series (8 terms, truncation < 2e-8) for |d| < 1/2, else
    v^lam expm1(d) / lam: lam = 0 gives the logistic log(u / v) exactly and small lam loses
    nothing to cancellation. inv_lam: 1 / lam (any value where lam = 0: then |d| < 1/2).

    Fast functions (``_fastmath``: log2 within 2**-22 absolute on [1/2, 2] and 2 ulp elsewhere,
    exp2 2 ulp, reciprocal 2 ulp): near the median the logs' absolute errors move L by at
    most 3.4e-7, less than one step of u's 2**-23 grid (dTL/du >= 4 2**-|lam| there); in the
    tails their relative errors (times |lam log2 v| <= 7 through the power) and expm1's
    (2.5 x 2 ulp at |d| = 1/2) stay near 1e-6 relative, while neighbouring grid values of u
    differ more. Measured over the grid (tests/test_noise.py), with every fast function's
    error at its bound: each draw is the exact transform of a u within 2 steps of its own
    (0.63 with exact functions), so the distribution function moves by < 2.5e-7.
    """
    u, v = open_unit_and_complement(bits)
    lv = fast_log2(v)
    log2_ratio = fast_log2(u) - lv  # log2(u / v)
    ratio_log = log2_ratio * LN2  # L = ln(u / v)
    d = lam * ratio_log
    series = 1.0 + d * (0.5 + d * (0.16666666666666666 + d * (0.041666666666666664 + d * (
        0.008333333333333333 + d * (0.001388888888888889 + d * (0.0001984126984126984 + d * 2.48015873015873e-05))))))
    small = tl.abs(d) < 0.5
    body = tl.where(small, ratio_log * series, (fast_exp2(lam * log2_ratio) - 1.0) * inv_lam)
    return fast_exp2(lam * lv) * body


@triton.jit
def _synthesize_kernel(
    x_ptr, out_ptr, seed_ptr,
    ratio_ptr, k_ptr, sigma_g_ptr, sigma_tl_ptr, lam_ptr, sigma_r_ptr, black_ptr,
    h, w,
    sxb, sxc, sxh, sxw,
    sob, soc, soh, sow,
    dn_scale,
    SHOT: tl.constexpr,  # 0 none, 1 Poisson (P), 2 Gaussian approximation (p)
    READ: tl.constexpr,  # 0 none, 1 Gaussian (g), 2 Tukey-lambda (G)
    ROW: tl.constexpr,
    QUANT: tl.constexpr,
    DN_OUT: tl.constexpr,  # 1: write z + black (DN, fp32); 0: the network input
    WITH_PHOTON: tl.constexpr,
    CONCAT_ORIGIN: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    TILES: tl.constexpr,
):
    # One program: TILES tiles of BLOCK_H rows x BLOCK_W columns of all 4 planes of sample b,
    # a plane at a time ([BLOCK_H, BLOCK_W] blocks: the Poisson sampler's loops run over one
    # plane's elements). Grid: (column tiles / TILES, row tiles, samples).
    b = tl.program_id(2)
    rows = (tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None]
    b64 = b.to(tl.int64)
    x_base = x_ptr + b64 * sxb
    out_base = out_ptr + b64 * sob

    # Per-sample factors and the row noise, once per program.
    ratio = tl.load(ratio_ptr + b)
    gain = tl.load(k_ptr + b)
    seed = tl.load(seed_ptr)
    signal_scale = dn_scale * fast_rcp(ratio)  # normalised -> DN, un-amplified
    photons_per_dn = fast_rcp(gain)
    network_scale = ratio * fast_rcp(dn_scale)
    photon_channel = fast_rcp(ratio * gain)
    if READ == 1:
        sigma_g = tl.load(sigma_g_ptr + b)
    if READ == 2:
        lam = tl.load(lam_ptr + b)
        inv_lam = fast_rcp(tl.where(lam == 0.0, 1.0, lam))
        sigma_tl = tl.load(sigma_tl_ptr + b)
    if ROW:
        # One value per (b, packed row, CFA half): a Box-Muller pair per row (counter index
        # b * 2**32 + y on STREAM_ROW), computed once per row a thread holds; every program
        # along the row draws the same pair.
        r0, r1, _, _ = philox4(seed, sample_index(b, rows), 0, STREAM_ROW)
        row0, row1 = box_muller(r0, r1)
        sigma_r = tl.load(sigma_r_ptr + b)
        row0 = row0 * sigma_r
        row1 = row1 * sigma_r

    for t in range(TILES):
        first_col = (tl.program_id(0) * TILES + t) * BLOCK_W
        if first_col < w:  # (tiles wholly right of the frame are skipped)
            cols = (first_col + tl.arange(0, BLOCK_W))[None, :]
            mask = (rows < h) & (cols < w)
            x_pix = rows * sxh + cols * sxw
            out_pix = rows * soh + cols * sow
            pix = rows * w + cols
            for c in range(4):
                x = tl.load(x_base + (c * sxc + x_pix), mask=mask, other=0.0).to(tl.float32)
                # Philox counter index: sample b in the high word, the element's index within it below.
                index = sample_index(b, c * (h * w) + pix)
                y = x * signal_scale
                if SHOT == 1:
                    z = gain * poisson_sample(y * photons_per_dn, seed, index, STREAM_POISSON)
                else:
                    z = y
                # One call for every other per-element draw: words 0, 1 Box-Muller, 2 Tukey-lambda, 3 quantisation.
                if (SHOT == 2) or (READ != 0) or QUANT:
                    bits0, bits1, bits2, bits3 = philox4(seed, index, 0, STREAM_GAUSS)
                    if (SHOT == 2) or (READ == 1):
                        n_shot, n_read = box_muller(bits0, bits1)
                        if SHOT == 2:
                            z = y + tl.sqrt(tl.maximum(gain * y, 1e-10)) * n_shot
                        if READ == 1:
                            z += sigma_g * n_read
                    if READ == 2:
                        z += sigma_tl * _tukey_lambda(bits2, lam, inv_lam)
                    if QUANT:
                        z += open_unit(bits3) - 0.5
                if ROW:
                    z += tl.where(c < 2, row0, row1)

                out = out_base + (c * soc + out_pix)
                if DN_OUT:
                    tl.store(out, z + tl.load(black_ptr + b * 4 + c), mask=mask)
                else:
                    a = tl.minimum(tl.maximum(z * network_scale, 0.0), 1.0)
                    out_ty = out_ptr.dtype.element_ty
                    tl.store(out, a.to(out_ty), mask=mask)
                    if WITH_PHOTON:
                        tl.store(out + 4 * soc, (a * photon_channel).to(out_ty), mask=mask)
                    if CONCAT_ORIGIN:
                        tl.store(out + (4 + 4 * WITH_PHOTON) * soc, a.to(out_ty), mask=mask)


# Tuned per patch shape, dtypes and the components drawn.
_synthesize_tuned = autotuned(
    _synthesize_kernel, CONFIGS,
    key=["h", "w", "SHOT", "READ", "ROW", "QUANT", "DN_OUT", "WITH_PHOTON", "CONCAT_ORIGIN"],
)


# --------------------------------------------------------------------------- checks
class _Prepared(NamedTuple):
    clean: torch.Tensor
    model: NoiseModel
    ratio: torch.Tensor
    K: torch.Tensor
    sigma_g: torch.Tensor | None
    sigma_TL: torch.Tensor | None
    lam: torch.Tensor | None
    sigma_r: torch.Tensor | None
    black: torch.Tensor | None  # [B, 4] float32 in "dn" mode
    dn_scale: float
    out_shape: tuple
    out_dtype: torch.dtype


def _black_level(value, batch: int, device: torch.device, checks: ValueChecks) -> torch.Tensor:
    """Black level -> float32 [B, 4]: a number, [B] (per sample), or [B, 4] / [1, 4] (per plane)."""
    if value is None:
        return torch.zeros(batch, 4, dtype=torch.float32, device=device)
    if isinstance(value, torch.Tensor) and value.dim() == 2:
        # the shape before the device: a bad input gets the same message on every device
        if value.shape[1] != 4 or value.shape[0] not in (1, batch):
            raise ValueError(f"a 2-D black_level must have shape [{batch}, 4] or [1, 4] (per plane), got {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"black_level is on {value.device} but the data is on {device}")
        t = value.detach().to(torch.float32).expand(batch, 4).contiguous()
        checks.require(lambda: torch.isfinite(t), lambda: f"black_level must be finite, got {t.tolist()}")
        return t
    t = per_sample("black_level", value, batch, device, checks=checks)
    return t[:, None].expand(batch, 4).contiguous()


def _prepare(clean, model, ratio, K, sigma_g, sigma_TL, lam, sigma_r, dn_scale, with_photon, concat_origin,
             out_dtype, output, black_level, params) -> _Prepared:
    check_tensor("clean", clean, dtypes=(torch.float32, torch.float16), ndims=(4,))
    if clean.shape[1] != 4:
        raise ValueError(f"clean must be a packed image [B, 4, h, w] (planes R, G1, B, G2), got shape {tuple(clean.shape)}")
    if params is not None:
        if not isinstance(params, NoiseParams):
            raise TypeError(f"params must be a kernels.NoiseParams (from sample_noise_params), got {type(params).__name__}")
        given = [n for n, v in (("ratio", ratio), ("K", K), ("sigma_g", sigma_g), ("sigma_TL", sigma_TL), ("lam", lam), ("sigma_r", sigma_r)) if v is not None]
        if given:
            raise ValueError(f"pass either params= or individual parameters, not both (also got {', '.join(given)})")
        ratio, K, sigma_g, sigma_TL, lam, sigma_r = params.ratio, params.K, params.sigma_g, params.sigma_TL, params.lam, params.sigma_r
        if model is None:
            model = params.model
    if model is None:
        model = "P+g"
    m = parse_noise_model(model)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if ratio is None:
        raise ValueError("ratio (exposure ratio r, > 0) is required")
    if K is None:
        raise ValueError("K (system gain in DN per photo-electron, > 0) is required")
    dn_scale = real("dn_scale", dn_scale, low=0, low_open=True, unit=" (DN per normalised unit)")
    missing = []
    if m.read == "g" and sigma_g is None:
        missing.append("sigma_g (model has g)")
    if m.read == "G" and sigma_TL is None:
        missing.append("sigma_TL (model has G)")
    if m.read == "G" and lam is None:
        missing.append("lam (model has G)")
    if m.row and sigma_r is None:
        missing.append("sigma_r (model has r)")
    if missing:
        raise ValueError(f"model {model!r} needs {', '.join(missing)}")

    B, _, h, w = clean.shape
    dev = clean.device
    checks = ValueChecks()
    ratio_t = per_sample("ratio", ratio, B, dev, positive=True, checks=checks)
    K_t = per_sample("K", K, B, dev, positive=True, checks=checks)
    sg = per_sample("sigma_g", sigma_g, B, dev, nonnegative=True, checks=checks) if m.read == "g" else None
    stl = per_sample("sigma_TL", sigma_TL, B, dev, nonnegative=True, checks=checks) if m.read == "G" else None
    lam_t = per_sample("lam", lam, B, dev, checks=checks) if m.read == "G" else None
    sr = per_sample("sigma_r", sigma_r, B, dev, nonnegative=True, checks=checks) if m.row else None
    if m.shot == "P" and B:
        def mu_at_one() -> torch.Tensor:
            return float(dn_scale) / (ratio_t * K_t)

        checks.require(lambda: mu_at_one() <= MAX_MEAN, lambda: (
            f"dn_scale / (ratio * K) = {mu_at_one().max().item():g} photo-electrons at x = 1 exceeds the "
            f"Poisson sampler's limit {MAX_MEAN:g}: ratio * K is too small"))

    if output == "dn":
        if with_photon or concat_origin:
            raise ValueError("with_photon / concat_origin build the network input; they need output='network'")
        if out_dtype != torch.float32:
            raise ValueError(f"output='dn' is float32 (DN values exceed fp16's precision), got out_dtype={out_dtype}")
        black = _black_level(black_level, B, dev, checks)
        out_shape = (B, 4, h, w)
    else:
        if black_level is not None:
            raise ValueError("black_level applies to output='dn' only (the network input is black-subtracted)")
        if out_dtype not in (torch.float32, torch.float16):
            raise TypeError(f"out_dtype must be torch.float32 or torch.float16, got {out_dtype}")
        black = None
        out_shape = (B, 4 * (1 + bool(with_photon) + bool(concat_origin)), h, w)
    checks.run()  # one host read for every value check (none inside value_checks_disabled)
    return _Prepared(clean, m, ratio_t, K_t, sg, stl, lam_t, sr, black, float(dn_scale), out_shape, out_dtype)


def _check_out(out, shape, dtype, device) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    check_tensor("out", out, dtypes=(dtype,), ndims=(4,))
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.device != device:
        raise ValueError(f"out is on {out.device} but the data is on {device}")
    return out


def _check_kernel_limits(clean: torch.Tensor, out_shape: tuple, out: torch.Tensor | None) -> None:
    """Sizes the Triton kernel addresses (checked before anything is allocated): grid
    dimensions, and int32 offsets and Philox indices within a sample."""
    B, _, h, w = clean.shape
    check_grid_and_offsets(B, h, w, 4, " on the Triton path")  # 4 planes in; the output is checked below
    check_sample_spans(clean=clean, out=out if out is not None else tuple(out_shape))


# --------------------------------------------------------------------------- reference
def _reference(p: _Prepared, with_photon: bool, concat_origin: bool, output: str, generator) -> torch.Tensor:
    x = p.clean.to(torch.float32)
    generator = generator_for(generator, x.device)  # a CPU generator with CUDA data: a key, then CUDA draws
    B = x.shape[0]
    col = lambda t: t.view(B, 1, 1, 1)  # noqa: E731
    ratio, K = col(p.ratio), col(p.K)
    y = x * p.dn_scale / ratio
    if p.model.shot == "P":
        z = K * poisson_draws(torch.clamp(y / K, min=0.0), generator)  # as the kernel: x < 0 -> 0 photons
    elif p.model.shot == "p":
        z = y + torch.sqrt(torch.clamp(K * y, min=1e-10)) * torch.randn(y.shape, generator=generator, device=y.device)
    else:
        z = y
    if p.model.read == "g":
        z = z + col(p.sigma_g) * torch.randn(y.shape, generator=generator, device=y.device)
    elif p.model.read == "G":
        z = z + col(p.sigma_TL) * tukey_lambda_draws(col(p.lam), y.shape, generator)
    if p.model.row:
        # one value per (sample, CFA half, packed row): planes 0,1 -> half 0, planes 2,3 -> half 1
        rows = torch.randn((B, 2, y.shape[2]), generator=generator, device=y.device)
        z = z + col(p.sigma_r) * rows[:, [0, 0, 1, 1], :, None]
    if p.model.quant:
        z = z + (torch.rand(y.shape, generator=generator, device=y.device) - 0.5)
    if output == "dn":
        return z + p.black[:, :, None, None]
    a = torch.clamp(z * ratio / p.dn_scale, 0.0, 1.0)
    chans = [a]
    if with_photon:
        chans.append(a / (ratio * K))
    if concat_origin:
        chans.append(a)
    return torch.cat(chans, dim=1).to(p.out_dtype)


def synthesize_noise_reference(
    clean, model=None, *, ratio=None, K=None, sigma_g=None, sigma_TL=None, lam=None, sigma_r=None,
    dn_scale=DEFAULT_DN_SCALE, generator=None, with_photon=False, concat_origin=False, out_dtype=torch.float32,
    output="network", black_level=None, params=None,
) -> torch.Tensor:
    """Plain-PyTorch ``synthesize_noise`` (same checks and semantics; torch's samplers)."""
    p = _prepare(clean, model, ratio, K, sigma_g, sigma_TL, lam, sigma_r, dn_scale, with_photon, concat_origin,
                 out_dtype, output, black_level, params)
    return _reference(p, with_photon, concat_origin, output, generator)


# --------------------------------------------------------------------------- public op
def synthesize_noise(
    clean: torch.Tensor,
    model: str | None = None,
    *,
    ratio=None,
    K=None,
    sigma_g=None,
    sigma_TL=None,
    lam=None,
    sigma_r=None,
    dn_scale: float = DEFAULT_DN_SCALE,
    generator: torch.Generator | None = None,
    with_photon: bool = False,
    concat_origin: bool = False,
    out_dtype: torch.dtype = torch.float32,
    output: str = "network",
    black_level=None,
    params=None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Simulate a low-light raw from a clean one with the ELD noise model, in one pass.

    Args:
        clean: ``[B, 4, h, w]`` float32/float16, normalised packed clean image (planes R,
            G1, B, G2), nominally in [0, 1]; any strides (read in place, never copied).
            Values are not checked (a full pass); NaN reads as 0 photons on the Triton path.
        model: components joined by "+", e.g. "P+g" (default, or ``params.model`` when
            ``params`` is given) or "P+G+r+u"; see the module docstring.
        ratio: exposure ratio r > 0; K: system gain > 0 (DN per photo-electron);
            sigma_g (for g), sigma_TL and lam (for G), sigma_r (for r): >= 0, in DN.
            Each a number, a sequence or a tensor [B] / [1] on clean's device.
            Parameters of components not in the model are ignored.
        params: a ``NoiseParams`` from ``sample_noise_params`` instead of the six above.
        dn_scale: DN per normalised unit s (default 15583, SPEC §2).
        generator: torch.Generator for the Philox key (default: the global one).
        with_photon, concat_origin: add the photon channel ``A_T / (r K)`` and the origin
            channel ``A_T`` (network input of SPEC §4: 4, 8 or 12 channels).
        out_dtype: float32 or float16 (network output only).
        output: "network" -> ``clip(z r / s, 0, 1)`` [B, 4|8|12, h, w] in out_dtype;
            "dn" -> ``z + black_level`` [B, 4, h, w] float32 in DN, neither amplified nor
            clipped nor rounded (negative read noise survives). "u" keeps its meaning,
            adding U(-0.5, 0.5); to emulate an ADC instead, leave "u" out and round.
        black_level: "dn" only: a number, [B] per sample, or [B, 4] / [1, 4] per plane (DN).
        out: optional preallocated output of the right shape/dtype/device (any strides,
            e.g. channels_last); returned.
        backend: "auto" (Triton on CUDA, reference on CPU), "triton" or "torch".

    Returns:
        The output tensor described under ``output``.
    """
    p = _prepare(clean, model, ratio, K, sigma_g, sigma_TL, lam, sigma_r, dn_scale, with_photon, concat_origin,
                 out_dtype, output, black_level, params)
    if out is not None:
        _check_out(out, p.out_shape, p.out_dtype, clean.device)
    if not use_triton(clean.device, backend):
        result = _reference(p, with_photon, concat_origin, output, generator)
        return result if out is None else out.copy_(result)
    if clean.numel():
        _check_kernel_limits(clean, p.out_shape, out)
    out = _check_out(out, p.out_shape, p.out_dtype, clean.device)
    B, _, h, w = clean.shape
    if out.numel() == 0:
        return out
    seed = philox_seed(generator, clean.device)
    dummy = p.ratio  # pointer for parameters a specialisation never reads
    args = (
        clean, out, seed,
        p.ratio, p.K,
        p.sigma_g if p.sigma_g is not None else dummy,
        p.sigma_TL if p.sigma_TL is not None else dummy,
        p.lam if p.lam is not None else dummy,
        p.sigma_r if p.sigma_r is not None else dummy,
        p.black if p.black is not None else dummy,
        h, w,
        *clean.stride(), *out.stride(),
        p.dn_scale,
    )
    flags = dict(
        SHOT={None: 0, "P": 1, "p": 2}[p.model.shot],
        READ={None: 0, "g": 1, "G": 2}[p.model.read],
        ROW=int(p.model.row),
        QUANT=int(p.model.quant),
        DN_OUT=int(output == "dn"),
        WITH_PHOTON=int(bool(with_photon)),
        CONCAT_ORIGIN=int(bool(concat_origin)),
    )

    def grid(meta):
        return (triton.cdiv(w, meta["BLOCK_W"] * meta["TILES"]), triton.cdiv(h, meta["BLOCK_H"]), B)

    def in_place() -> bool:  # asked only where tuning would run: storage pointers are real there
        return out.untyped_storage().data_ptr() == clean.untyped_storage().data_ptr()

    if LAUNCH_CONFIG is None and record_launch(_synthesize_tuned, args, flags):
        return out
    if LAUNCH_CONFIG is None and autotuning_enabled() and not in_place():
        _synthesize_tuned[grid](*args, **flags)
    else:
        meta, warps = LAUNCH_CONFIG or ({"BLOCK_H": BLOCK_H, "BLOCK_W": BLOCK_W, "TILES": TILES}, NUM_WARPS)
        _synthesize_kernel[grid(meta)](*args, **flags, **meta, num_warps=warps)
    return out


# --------------------------------------------------------------------------- AOT
# (model, input dtype, output dtype, with_photon, concat_origin, dn output)
SHIPPED = (
    ("P+g", "fp32", "fp32", False, False, False),
    ("P+g", "fp32", "fp16", True, True, False),
    ("P+g", "fp16", "fp16", False, False, False),
    ("P+G+r+u", "fp32", "fp32", False, False, False),
    ("P+G+r+u", "fp32", "fp16", True, True, False),
    ("P+G+r+u", "fp32", "fp32", True, True, False),
    ("p+g", "fp32", "fp32", False, False, False),
    ("P+G+r+u", "fp32", "fp32", False, False, True),
    ("P+g+r", "fp32", "fp32", False, False, True),
)
TUNED_AOT = ("P+G+r+u", "fp32", "fp16", True, True, False)


def aot_specs():
    from .aot import AotSpec

    specs = []
    for model, in_ty, out_ty, photon, origin, dn in SHIPPED:
        m = parse_noise_model(model)
        sig = {
            "x_ptr": f"*{in_ty}", "out_ptr": f"*{out_ty}", "seed_ptr": "*i64",
            "ratio_ptr": "*fp32", "k_ptr": "*fp32", "sigma_g_ptr": "*fp32", "sigma_tl_ptr": "*fp32",
            "lam_ptr": "*fp32", "sigma_r_ptr": "*fp32", "black_ptr": "*fp32",
            "h": "i32", "w": "i32",
            # int32 strides: what Triton's JIT passes for any tensor the launcher accepts
            # (values below 2**31; it specialises 1 and multiples of 16 further)
            "sxb": "i32", "sxc": "i32", "sxh": "i32", "sxw": "i32",
            "sob": "i32", "soc": "i32", "soh": "i32", "sow": "i32",
            "dn_scale": "fp32",
        }
        const = {
            "SHOT": {None: 0, "P": 1, "p": 2}[m.shot], "READ": {None: 0, "g": 1, "G": 2}[m.read],
            "ROW": int(m.row), "QUANT": int(m.quant), "DN_OUT": int(dn),
            "WITH_PHOTON": int(photon), "CONCAT_ORIGIN": int(origin),
            "BLOCK_H": BLOCK_H, "BLOCK_W": BLOCK_W, "TILES": TILES,
        }
        for k in const:
            sig[k] = "constexpr"
        chans = 4 * (1 + photon + origin)
        name = f"synthesize_noise[{m.name},{in_ty}->{'dn' if dn else out_ty},{chans}ch]"
        specs.append(AotSpec(name, _synthesize_kernel, sig, const, NUM_WARPS))
        if (model, in_ty, out_ty, photon, origin, dn) == TUNED_AOT:
            # every configuration autotune may pick, on the training path's full model
            for meta, warps in CONFIGS:
                tile = f"{meta['BLOCK_H']}x{meta['BLOCK_W']}x{meta['TILES']}x{warps}w"
                specs.append(AotSpec(f"{name}[{tile}]", _synthesize_kernel, sig, {**const, **meta}, warps))
    return specs
