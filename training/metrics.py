"""Image-quality metrics on packed raw and the SID evaluation protocol (SPEC §6).

PSNR and SSIM are computed on packed 4-plane raw in [0, 1]; SSIM is the Gaussian-window
form of Wang et al. 2004 (sigma 1.5, K1 0.01, K2 0.03, data range 1, per plane, averaged),
as scikit-image's ``structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False)`` computes it (checked in the tests).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB per sample of ``[B, C, h, w]`` (or one ``[C, h, w]``) tensors; float64."""
    x, y = _batched(x).double(), _batched(y).double()
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.dim() == 3 else x


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5, device=None) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per sample of ``[B, C, h, w]`` tensors (each plane separately, averaged).

    Border pixels whose window leaves the image are excluded, as in scikit-image.
    """
    x, y = _batched(x).double(), _batched(y).double()
    B, C, h, w = x.shape
    g = _gaussian_window(device=x.device)
    r = g.numel() // 2
    if h <= 2 * r or w <= 2 * r:
        raise ValueError(f"SSIM needs images larger than {2 * r + 1} pixels a side, got {h}x{w}")
    kx = g.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    ky = g.view(1, 1, -1, 1).expand(C, 1, -1, 1)

    def blur(t):
        return F.conv2d(F.conv2d(t, kx, groups=C), ky, groups=C)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def center_crop(x: torch.Tensor, size: int = 512) -> torch.Tensor:
    """Centre ``size x size`` crop of the last two dimensions (the SID protocol's 512)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def illuminance_correction(y: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Rescale each output by ``alpha = <Y, gt> / <Y, Y>`` over pixels where gt != 1.

    Uses the ground truth, so evaluation only (SPEC §6), never inference.
    """
    y, gt = _batched(y), _batched(gt)
    valid = (gt != 1).to(y.dtype)
    num = (y * gt * valid).flatten(1).sum(1)
    den = (y * y * valid).flatten(1).sum(1).clamp_min(1e-12)
    return (y * (num / den).view(-1, 1, 1, 1)).clamp(0, 1)
