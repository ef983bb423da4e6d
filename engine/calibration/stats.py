"""Per-ISO statistics and fits of a noise calibration (``engine.calibration``, issue 7).

The measurements behind ``engine.calibration.calibrate``: one ISO's bias frames and flat
pairs -> an ``IsoCalibration``, and the log-linear fits across ISOs. Method, per ISO
(SPEC §2-3; statistics on the packed planes R, G1, B, G2):

- dark level per plane: the mean of the bias frames (``color_bias`` = dark - file black).
- K (DN per photo-electron), photon transfer: for every pair of flats at one level and
  every plane, signal = mean of the pair - dark, variance = var(f1 - f2) / 2 after removing
  each CFA row's mean of the difference (row noise) and the plane's mean (light drift);
  the difference removes fixed-pattern noise. ``variance = K * signal + c`` by weighted
  least squares (weights 1 / variance) over all levels, pairs and planes; c = read
  variance.
- row noise sigma_r: per bias frame, the mean of each CFA row (plane offsets removed),
  minus that row's mean over the frames (fixed row pattern); their variance less the
  pixels' share ``var_pix / W`` (W = row length) is sigma_r^2.
- read noise: bias pixels minus their plane offset and their CFA row's mean. sigma_g is
  their standard deviation, less the quantisation variance 1/12 DN^2 (Sheppard: the noise
  model adds quantisation as its own component "u"); the Tukey-lambda shape lam maximises
  the probability-plot correlation (``scipy.stats.ppcc_max``) and sigma_TL is the
  probability plot's slope.

Across ISOs, ``_loglin`` fits ``log sigma = slope * log K + bias`` (natural logs) with
``sigma`` = the residual standard deviation (0 with 2 ISOs).

Needs scipy at run time (``scipy.stats.ppcc_max``, ``probplot``, ``ppcc_plot``; imported in
``_read_noise``, so importing this module works without it).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from kernels.profiles import ScaleFit

from ..io.raw import RawFrame, plane_sites

PPCC_SAMPLES = 200_000  # bias pixels per ISO for the Tukey-lambda fit (PPCC is O(n log n))


class CalibrationError(ValueError):
    """Frames that cannot calibrate a camera; the message says what to capture instead."""

QUANT_VAR = 1.0 / 12.0  # DN^2, variance of rounding to integer DN


@dataclasses.dataclass(frozen=True, eq=False)
class IsoCalibration:
    """What one ISO's frames measured (DN, DN^2, DN per photo-electron).

    ``ptc``: photon transfer points, arrays signal, variance, plane (0..3 = R, G1, B, G2).
    ``probplot``: Tukey-lambda probability plot (theoretical quantiles ``osm`` and ordered
    residuals ``osr``, thinned for plotting; ``slope``, ``intercept``). ``ppcc_curve``:
    (lambdas, correlations) around the optimum.
    """

    iso: float
    K: float
    read_variance: float  # photon-transfer intercept (read + quantisation variance)
    sigma_g: float
    sigma_TL: float
    lam: float
    ppcc: float
    sigma_r: float
    dark: tuple
    color_bias: tuple
    n_bias: int
    n_levels: int
    n_pairs: int
    ptc: dict = dataclasses.field(repr=False)
    probplot: dict = dataclasses.field(repr=False)
    ppcc_curve: tuple = dataclasses.field(repr=False)


def _planes(frame: RawFrame) -> np.ndarray:
    """float64 [4, h, w]: the packed planes R, G1, B, G2 in DN (odd trailing row/column dropped)."""
    cfa = frame.cfa.detach().cpu().numpy()
    h, w = cfa.shape[0] // 2, cfa.shape[1] // 2
    out = np.empty((4, h, w))
    for plane, site in enumerate(plane_sites(frame.pattern)):
        i, j = divmod(site, 2)
        out[plane] = cfa[i:2 * h:2, j:2 * w:2]
    return out


def _remove_rows(p: np.ndarray) -> np.ndarray:
    """Subtract each CFA row's mean (planes 0,1 share a row, planes 2,3 the other) in place;
    return the row means [2, h]."""
    rows = np.stack([p[0:2].mean(axis=(0, 2)), p[2:4].mean(axis=(0, 2))])
    p[0:2] -= rows[0][None, :, None]
    p[2:4] -= rows[1][None, :, None]
    return rows


def _bias_stats(frame: RawFrame, n_samples: int, rng) -> dict:
    p = _planes(frame)
    offsets = p.mean(axis=(1, 2))
    p -= offsets[:, None, None]
    rows = _remove_rows(p)
    flat = p.reshape(-1)
    sample = flat.copy() if n_samples >= flat.size else flat[rng.choice(flat.size, n_samples, replace=False)]
    return {"offsets": offsets, "rows": rows.reshape(-1), "sumsq": float(np.dot(flat, flat)), "count": flat.size,
            "sample": sample, "row_length": 2 * p.shape[2]}


def _pair_points(f1: RawFrame, f2: RawFrame, dark: np.ndarray) -> tuple:
    """Per plane: (signal above dark, noise variance of one frame) of two flats at one level."""

    d, b = _planes(f1), _planes(f2)
    signal = (d.mean(axis=(1, 2)) + b.mean(axis=(1, 2))) / 2 - dark
    d -= b
    del b
    _remove_rows(d)  # row noise of both frames (and any global offset)
    d -= d.mean(axis=(1, 2), keepdims=True)  # light drift between the two frames
    W = 2 * d.shape[2]
    variance = np.einsum("chw,chw->c", d, d) / d[0].size * W / (W - 1) / 2
    if not np.all(variance > 0):
        raise CalibrationError(f"{f1.source} and {f2.source} are identical: a flat pair must be two exposures")
    return signal, variance


def _read_noise(sample: np.ndarray, rng) -> dict:
    from scipy import stats

    lam = float(stats.ppcc_max(sample, brack=(-0.1, 0.1), dist="tukeylambda"))
    (osm, osr), (slope, intercept, r) = stats.probplot(sample, sparams=(lam,), dist="tukeylambda")
    n = len(osm)
    idx = np.unique(np.concatenate([np.linspace(0, n - 1, 1500).astype(int), np.arange(min(40, n)),
                                    np.arange(max(0, n - 40), n)]))
    sub = sample if sample.size <= 20_000 else rng.choice(sample, 20_000, replace=False)
    lams = np.linspace(lam - 0.25, lam + 0.25, 41)
    _, ppcc = stats.ppcc_plot(sub, lams[0], lams[-1], dist="tukeylambda", N=lams.size)
    return {"lam": lam, "sigma_TL": float(slope), "ppcc": float(r),
            "probplot": {"osm": osm[idx], "osr": osr[idx], "slope": float(slope), "intercept": float(intercept)},
            "ppcc_curve": (lams, np.asarray(ppcc))}


def _loglin(K, sigma) -> ScaleFit:
    x, y = np.log(np.asarray(K)), np.log(np.asarray(sigma))
    slope, bias = np.polyfit(x, y, 1)
    res = y - (slope * x + bias)
    resid = float(np.sqrt(np.sum(res ** 2) / (len(x) - 2))) if len(x) > 2 else 0.0
    return ScaleFit(float(slope), float(bias), resid)


def _calibrate_iso(iso, bias_items, levels, ppcc_samples, rng, warnings) -> IsoCalibration:

    st = [it.stats for it in bias_items]
    N, W = len(st), st[0]["row_length"]
    offsets = np.mean([s["offsets"] for s in st], axis=0)
    black = np.mean([s["black"] for s in st], axis=0)
    # Pixel variance with row noise removed (the row mean takes 1/W of it back).
    var_pix = sum(s["sumsq"] for s in st) / sum(s["count"] for s in st) * W / (W - 1)
    if not var_pix > 0:
        raise CalibrationError(f"ISO {iso:g}: the bias frames show no read noise (all pixels equal): capture real "
                               "raw bias frames (lens capped, shortest exposure), not processed or synthetic images")
    rows = np.stack([s["rows"] for s in st])  # [N, 2h]: CFA row means, plane offsets removed
    resid = rows - rows.mean(axis=0)  # minus the fixed row pattern
    var_rows = np.square(resid).sum() / ((N - 1) * (rows.shape[1] - 2))
    var_r = var_rows - var_pix / W
    if var_r <= 0:
        var_r = (1e-3 * math.sqrt(var_pix)) ** 2
        warnings.append(f"ISO {iso:g}: no row noise measurable above the pixel noise; sigma_r set to "
                        f"{math.sqrt(var_r):.3g} DN")
    if var_pix <= 2 * QUANT_VAR:
        warnings.append(f"ISO {iso:g}: read noise ({math.sqrt(var_pix):.3g} DN) is close to the quantisation step: "
                        "sigma_g is uncertain")
    sigma_g = math.sqrt(max(var_pix - QUANT_VAR, 0.25 * var_pix))
    sample = np.concatenate([s["sample"] for s in st])
    if sample.size > ppcc_samples:
        sample = rng.choice(sample, ppcc_samples, replace=False)
    tl = _read_noise(sample, rng)

    signal, variance, plane = [], [], []
    n_pairs = 0
    for lv in levels:
        if len(lv) % 2:
            warnings.append(f"ISO {iso:g}: odd number of flats at {lv[0].mean:.0f} DN; {lv[-1].source} unused")
        for a, b in zip(lv[0::2], lv[1::2]):
            s, v = _pair_points(a.read(), b.read(), offsets)
            signal += list(s)
            variance += list(v)
            plane += [0, 1, 2, 3]
            n_pairs += 1
    signal, variance = np.array(signal), np.array(variance)
    K, c = np.polyfit(signal, variance, 1, w=1 / variance)
    if not K > 0:
        raise CalibrationError(f"ISO {iso:g}: the flats' noise does not grow with their brightness (photon transfer "
                               f"slope {K:.3g}): capture flats at clearly different levels, dark to ~70% of the range")
    return IsoCalibration(
        iso=iso, K=float(K), read_variance=float(c), sigma_g=sigma_g, sigma_TL=tl["sigma_TL"], lam=tl["lam"],
        ppcc=tl["ppcc"], sigma_r=math.sqrt(var_r), dark=tuple(float(v) for v in offsets),
        color_bias=tuple(float(v) for v in offsets - black), n_bias=N, n_levels=len(levels), n_pairs=n_pairs,
        ptc={"signal": signal, "variance": variance, "plane": np.array(plane), "K": float(K), "c": float(c)},
        probplot=tl["probplot"], ppcc_curve=tl["ppcc_curve"])
