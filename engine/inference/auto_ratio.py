"""``ratio="auto"``: the exposure ratio read from the frame itself.

A normally exposed raw puts the middle of the scene at about a tenth of the white level and
keeps its highlights below white. So the frame's packed planes, black-subtracted and
normalised (``(D - black) / (white - black)``, not clipped), are averaged over the four planes
and over 8 x 8 packed-pixel blocks (which takes the noise of a dark frame down 8x, so the
statistics below describe the scene rather than the noise), and the ratio is

    ``min(MIDDLE / median(blocks), HIGHLIGHT / percentile_99.5(blocks))``

clamped to [1, ``MAX_RATIO``]: the median brought to ``MIDDLE`` (12% of white) unless that
would push the brightest half-percent of the frame past ``HIGHLIGHT`` (95% of white). A frame
already exposed normally comes out near 1; below ``WELL_EXPOSED`` (1.5) it gets exactly 1 (the
loop then only denoises, in one step) and a ``RawInputWarning`` says so: never a white picture.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import pack_bayer

MIDDLE = 0.12
HIGHLIGHT = 0.95
WELL_EXPOSED = 1.5
BLOCK = 8
MAX_RATIO = 10000.0


def estimate_ratio(cfa: torch.Tensor, pattern, black_level, white_level) -> float:
    """The exposure ratio of one frame (module docstring).

    Args:
        cfa: one Bayer mosaic ``[H, W]`` in DN (uint16 / int32 / float), any device.
        pattern, black_level, white_level: as for ``kernels.pack_bayer``.

    Returns:
        The ratio, a float in [1, ``MAX_RATIO``]; exactly 1.0 for a frame already well exposed.
    """
    planes = pack_bayer(cfa, pattern, black_level, white_level, 1.0, clip=False)  # [1, 4, h, w]
    luma = planes.mean(1, keepdim=True)
    if min(luma.shape[-2:]) >= BLOCK:
        luma = F.avg_pool2d(luma, BLOCK)
    values = luma.flatten().float()
    middle = float(torch.quantile(values, 0.5)) if values.numel() else 0.0
    high = float(torch.quantile(values, 0.995)) if values.numel() else 0.0
    tiny = MIDDLE / MAX_RATIO
    ratio = min(MIDDLE / max(middle, tiny), HIGHLIGHT / max(high, tiny))
    ratio = min(max(ratio, 1.0), MAX_RATIO)
    return 1.0 if ratio < WELL_EXPOSED else ratio
