"""Low-frequency fidelity: the estimate's local means brought back to the data's.

The network's estimate is a good denoiser but a biased one at low signal: what it learned
about typical scenes pulls a dim plane towards typical colour ratios and an L1-trained
estimate towards the posterior median, so flat regions come back with per-plane errors of
10-50% at 5-20% of white (mauve greys, cyan whites). The noisy frame itself holds an
*unbiased* estimate of every local mean: ``(D - black) * ratio / (white - black)`` without the
clip at 0 (read noise is zero-mean; the network's input clips it, which biases dark pixels
up). Averaged over a ``scale x scale`` neighbourhood its noise is ``scale`` times smaller.

So the final estimate ``Y`` becomes ``Y + w L(w (A - Y)) / L(w)``: ``A`` the unclipped noisy
frame, ``L`` a low-pass (a box of ``scale`` packed pixels, bilinearly interpolated back), ``w``
a weight that leaves out pixels where the estimate is near white or the sensor clipped (there
the data's mean is not the scene's: a scene past white has a clipped truth of 1 and a data mean
above it, which the low-pass would spread into its neighbours). The data's own value must not
decide ``w``: leaving out its bright noisy samples would bias the mean it is there to give.

The near-white weight falls *linearly* from 1 at ``NEAR_WHITE[0]`` to 0 at ``NEAR_WHITE[1]``
rather than stepping at one threshold: a hard step at 0.9 left the bench chart's white patch
(green planes 0.894 of white, estimated 0.92-0.93) out of its own correction (a green cast,
CIEDE2000 10.2); and with a step anywhere the output jumps by the whole correction where an
estimate crosses it, so two computations that differ only in rounding (two runtimes, fp16 and
fp32) could differ there by far more. The ramp makes the output a continuous function of the
estimate.

Fine detail comes from the network, the local means from the data; per plane, so colour is held
too. Measured with the session-5 default model at 3 steps, ``scale`` 32 (the default):
photograph-like hold-out x100 / x300 40.13 -> 40.83 / 36.94 -> 37.59 dB, scikit-image's
photographs 34.97 -> 35.67 / 32.07 -> 32.67 dB, mean |per-plane bias| 8-17% -> 2-6%; applied
after the last step only (correcting every step's estimate was 0.05-0.17 dB worse: the
network was trained on uncorrected states).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_SCALE = 32
# The near-white ramp (normalised estimate): full weight below the first value, none at or
# above the second, linear between (module docstring; the choice is measured in NOTES.md).
NEAR_WHITE = (0.95, 0.99)
# A raw value at this fraction of the white level or above counts as clipped by the sensor.
SENSOR_CLIP = 0.999


def low_pass(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Box means over ``scale x scale`` packed pixels, bilinearly interpolated back to the
    full size: ``[B, C, h, w]`` float32 -> same shape."""
    h, w = x.shape[-2:]
    blocks = F.avg_pool2d(F.pad(x, (0, (-w) % scale, 0, (-h) % scale), mode="replicate"), scale)
    return F.interpolate(blocks, scale_factor=scale, mode="bilinear", align_corners=False)[..., :h, :w]


def near_white_weight(estimate: torch.Tensor, near_white: tuple[float, float] = NEAR_WHITE) -> torch.Tensor:
    """The fidelity weight of each pixel from its estimate: float32, same shape, 1 below
    ``near_white[0]``, 0 at or above ``near_white[1]``, linear between. Plain tensor
    operations, so that the ONNX export traces the same formula."""
    start, end = near_white
    return (end - estimate).div_(end - start).clamp_(0.0, 1.0)  # in place on its own temporary


def low_frequency_fidelity(estimate: torch.Tensor, noisy: torch.Tensor, scale: int = DEFAULT_SCALE,
                           near_white: tuple[float, float] = NEAR_WHITE,
                           sensor_clipped: torch.Tensor | None = None) -> torch.Tensor:
    """The estimate with its local means replaced by the data's (module docstring).

    Args:
        estimate: float32 ``[B, 4, h, w]`` in [0, 1], the loop's last estimate.
        noisy: float32 ``[B, 4, h, w]``, the frame's packed planes ``(D - black) * ratio /
            (white - black)``, NOT clipped (``kernels.pack_bayer(..., clip=False)``).
        scale: side of the averaging box in packed pixels (>= 2).
        near_white: ``(start, end)`` of the near-white ramp, ``0 < start < end``: estimates at
            or above ``end`` keep their own local mean, those between take part partly.
        sensor_clipped: bool ``[B, 4, h, w]``, True where the raw reached the white level
            (left out too), or None.

    Returns:
        float32 ``[B, 4, h, w]`` in [0, 1].
    """
    if estimate.shape != noisy.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and noisy {tuple(noisy.shape)} must have the same shape")
    if int(scale) < 2:
        raise ValueError(f"scale must be an integer >= 2 packed pixels, got {scale}")
    start, end = (float(v) for v in near_white)
    if not 0.0 < start < end:
        raise ValueError(f"near_white must be (start, end) with 0 < start < end, got {near_white}")
    estimate = estimate.float()
    noisy = noisy.to(estimate.device, torch.float32)
    weight = near_white_weight(estimate, (start, end))
    if sensor_clipped is not None:
        weight.masked_fill_(sensor_clipped.to(weight.device), 0.0)
    # Y + w * L(w (A - Y)) / L(w), in place where the operands are our own temporaries (a
    # 12 MP frame: 4 frame-sized temporaries at once instead of 8; the same float32 values)
    shift = low_pass(weight * (noisy - estimate), int(scale))
    shift.div_(low_pass(weight, int(scale)).clamp_min_(1e-3)).mul_(weight)
    del weight
    return shift.add_(estimate).clamp_(0.0, 1.0).contiguous()
