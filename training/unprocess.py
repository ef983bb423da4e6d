"""Scene radiance -> plausible camera raw: the sensor side shared by the scene generators.

``linear_to_packed_raw`` takes a *linear* sRGB scene (radiance, any non-negative values;
above 1 is allowed: lamps and speculars clip in the sensor) and returns the packed RGGB raw
a Sony A7S II-like camera would record: linear sRGB -> camera RGB (the inverse of
``engine.camera.camera_to_srgb`` for the camera's XYZ -> camera matrix), division by the
as-shot white-balance gains (greens dominate, as in real raw), an exposure that sets the
mean raw value, clipping at the white level, and the RGGB mosaic with the half-pixel site
offsets of a real sensor (R top-left, G1 top-right, G2 bottom-left, B bottom-right of every
2x2 cell). The inverse of what a camera's ISP does to a raw frame, as in Brooks et al.,
"Unprocessing Images for Learned Raw Denoising" (CVPR 2019), without the tone curve (the
scene generators here work in linear light directly).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .synthetic import SONY_A7S2_XYZ_TO_CAMERA, WB_RANGES, srgb_to_camera_matrix

__all__ = ["linear_to_packed_raw", "random_wb", "random_exposure_mean", "gaussian_blur"]


def random_wb(g: torch.Generator) -> tuple[float, float, float]:
    """As-shot gains (R, 1, B), log-uniform in ``training.synthetic.WB_RANGES``."""
    (r0, r1), (b0, b1) = WB_RANGES
    ur, ub = torch.rand(2, generator=g).tolist()
    return (r0 * (r1 / r0) ** ur, 1.0, b0 * (b1 / b0) ** ub)


def random_exposure_mean(g: torch.Generator, lo: float = 0.02, hi: float = 0.35) -> float:
    """Mean raw value of a frame, log-uniform in ``[lo, hi]`` (normalised units)."""
    return math.exp(math.log(lo) + float(torch.rand(1, generator=g)) * math.log(hi / lo))


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[C, H, W]`` float32 or float64 (reflect padding, computed in
    the image's dtype); sigma in pixels."""
    if sigma <= 0.05:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-(t**2) / (2 * sigma * sigma))
    k = k / k.sum()
    C = img.shape[0]
    x = torch.nn.functional.pad(img[None], (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return x[0]


def linear_to_packed_raw(lin: torch.Tensor, *, wb_gains, mean: float | None,
                         xyz_to_camera=SONY_A7S2_XYZ_TO_CAMERA) -> torch.Tensor:
    """A linear sRGB scene -> packed raw.

    Args:
        lin: float32 or float64 ``[3, 2h, 2w]`` linear sRGB radiance (>= 0; values above the exposure's
            white clip).
        wb_gains: as-shot (R, G, B) gains; camera RGB is divided by them.
        mean: the mean raw value after white balance and before clipping (the exposure);
            None keeps the scene's scale.
        xyz_to_camera: the camera's XYZ -> camera matrix.

    Returns:
        ``[4, h, w]`` in [0, 1] in ``lin``'s dtype, planes R, G1, B, G2 (RGGB sites).
    """
    if lin.dim() != 3 or lin.shape[0] != 3 or lin.shape[1] < 2 or lin.shape[2] < 2:
        raise ValueError(f"lin must be [3, H, W] with H, W >= 2, got {tuple(lin.shape)}")
    h, w = lin.shape[1] // 2, lin.shape[2] // 2
    s2c = torch.as_tensor(srgb_to_camera_matrix(xyz_to_camera), dtype=lin.dtype)
    gains = torch.as_tensor(np.asarray(wb_gains, dtype=np.float64) / float(wb_gains[1]), dtype=lin.dtype)
    cam = torch.einsum("ij,jhw->ihw", s2c, lin[:, : 2 * h, : 2 * w].clamp_min(0)) / gains.view(3, 1, 1)
    cam = cam.clamp_min(0)
    planes = torch.stack((cam[0, 0::2, 0::2], cam[1, 0::2, 1::2], cam[2, 1::2, 1::2], cam[1, 1::2, 0::2]))
    if mean is not None:
        planes = planes * (float(mean) / planes.mean().clamp_min(1e-8))
    return planes.clamp_(0.0, 1.0).contiguous()
