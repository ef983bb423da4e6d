"""Classical denoisers of packed raw, the yardstick of the evaluation (issue 14).

Both work per packed plane on the noisy network input ``A_T`` (normalised, amplified by
the ratio) with the frame's known noise parameters, in the variance-stabilised domain that
is standard for raw (Poisson-Gaussian) noise:

1. the generalised Anscombe transform (GAT) ``f(v) = 2 sqrt(v / a + 3/8 + b / a^2)`` with the
   shot-noise slope ``a = r K / s`` and the signal-independent variance
   ``b = (r / s)^2 (sigma_read^2 + sigma_r^2 + 1/12)`` of ``A_T`` (``sigma_read^2`` is
   ``sigma_TL^2 Var(TL(lam))`` with Tukey-lambda read noise, ``sigma_g^2`` with Gaussian;
   row noise counted as white) turns the noise into unit-variance, nearly Gaussian noise;
2. a Gaussian denoiser with sigma 1: scikit-image's ``denoise_wavelet`` (BayesShrink, soft
   thresholds, db1... sym wavelets as its defaults) or BM3D (the ``bm3d`` package, an
   optional extra: ``pip install -e ".[baselines]"``);
3. the closed-form approximation of the exact unbiased inverse of the GAT (Makitalo & Foi,
   IEEE TIP 2011/2013), back to ``v``, clipped to [0, 1].

The denoisers are the libraries'; only the transform and the plumbing are ours.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from kernels._common import DEFAULT_DN_SCALE

__all__ = ["bm3d_available", "read_variance_dn", "gat_forward", "gat_inverse", "denoise_planes", "BASELINES"]

BASELINES = ("wavelet", "bm3d")


def bm3d_available() -> bool:
    """True when the optional ``bm3d`` package can be imported."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def _tukey_lambda_variance(lam: float) -> float:
    """Variance of the standard Tukey-lambda distribution (pi^2 / 3 at lam = 0)."""
    if abs(lam) < 1e-6:
        return math.pi**2 / 3
    return 2.0 / lam**2 * (1.0 / (1 + 2 * lam) - math.gamma(lam + 1) ** 2 / math.gamma(2 * lam + 2))


def read_variance_dn(noise_model: str, sigma_g: float, sigma_TL: float, lam: float, sigma_r: float) -> float:
    """Signal-independent noise variance in DN^2 of one sample of ``noise_model``
    (the components other than shot noise: read, row, quantisation)."""
    letters = set(noise_model.replace(" ", "").split("+"))
    var = 0.0
    if "g" in letters:
        var += sigma_g**2
    if "G" in letters:
        var += sigma_TL**2 * _tukey_lambda_variance(lam)
    if "r" in letters:
        var += sigma_r**2
    if "u" in letters:
        var += 1.0 / 12.0
    return var


def gat_forward(v: np.ndarray, a: float, b: float) -> np.ndarray:
    """``2 sqrt(max(v / a + 3/8 + b / a^2, 0))``: unit-variance domain (float64)."""
    return 2.0 * np.sqrt(np.maximum(v / a + 0.375 + b / a**2, 0.0))


def gat_inverse(d: np.ndarray, a: float, b: float) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of :func:`gat_forward`."""
    d = np.maximum(d, 0.8)  # the approximation holds above ~0.8; below, the signal is ~0
    s6 = math.sqrt(1.5)
    poisson = 0.25 * d**2 + 0.25 * s6 / d - 1.375 / d**2 + 0.625 * s6 / d**3 - 0.125 - b / a**2
    return np.maximum(poisson, 0.0) * a


def denoise_planes(noisy: torch.Tensor, method: str, *, ratio: float, K: float, read_var_dn: float,
                   dn_scale: float = DEFAULT_DN_SCALE) -> torch.Tensor:
    """Denoise one frame plane by plane.

    Args:
        noisy: float ``[4, h, w]``, the network input ``A_T`` (normalised, amplified).
        method: "wavelet" (scikit-image BayesShrink) or "bm3d".
        ratio, K: the frame's exposure ratio and gain (DN per photo-electron).
        read_var_dn: signal-independent variance in DN^2 (:func:`read_variance_dn`).

    Returns:
        float32 ``[4, h, w]`` in [0, 1] on the input's device.
    """
    if method not in BASELINES:
        raise ValueError(f"method must be one of {BASELINES}, got {method!r}")
    a = ratio * K / dn_scale
    b = (ratio / dn_scale) ** 2 * read_var_dn
    x = noisy.detach().to("cpu", torch.float64).numpy()
    out = np.empty_like(x)
    for c in range(x.shape[0]):
        t = gat_forward(x[c], a, b)
        if method == "wavelet":
            from skimage.restoration import denoise_wavelet

            d = denoise_wavelet(t, sigma=1.0, method="BayesShrink", mode="soft", rescale_sigma=True)
        else:
            import bm3d

            d = bm3d.bm3d(t.astype(np.float32), sigma_psd=1.0)
        out[c] = gat_inverse(np.asarray(d, dtype=np.float64), a, b)
    return torch.from_numpy(np.clip(out, 0.0, 1.0)).to(torch.float32).to(noisy.device)
