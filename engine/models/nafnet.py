"""NAFNet (Chen et al., "Simple Baselines for Image Restoration", 2022), the optional
second backbone (SPEC section 5); state-dict keys as in the public code."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .unet import PLANES, check_backbone_input

NAFNET_DEFAULTS = {"width": 16, "enc_blocks": (2, 2, 4, 4), "middle_blocks": 12, "dec_blocks": (2, 2, 2, 2)}


def nafnet_parameters(in_channels: int, out_channels: int, width: int, enc_blocks: Sequence[int],
                      middle_blocks: int, dec_blocks: Sequence[int]) -> int:
    """Number of parameters of ``NAFNet(...)`` counted from the layer list without building
    anything (checked against a built model in tests/test_checkpoint.py). A block of ``c``
    channels holds ``7 c^2 + 33 c`` (1x1 convs c->2c, c->c (x2), c->2c, c->c; a 3x3
    depthwise conv over 2c; two norms; beta, gamma)."""
    block = lambda c: 7 * c * c + 33 * c  # noqa: E731
    chan = int(width)
    total = 9 * int(in_channels) * chan + chan + 9 * chan * int(out_channels) + int(out_channels)  # intro, ending
    for n in enc_blocks:
        total += int(n) * block(chan) + 4 * chan * 2 * chan + 2 * chan  # blocks, 2x2 stride-2 down conv
        chan *= 2
    total += int(middle_blocks) * block(chan)
    for n in dec_blocks:
        total += 2 * chan * chan  # 1x1 up conv (no bias) before the pixel shuffle
        chan //= 2
        total += int(n) * block(chan)
    return total


class LayerNorm2d(nn.Module):
    """Layer norm over the channel dimension of ``[B, C, h, w]``, per pixel.

    Plain torch ops (exportable, autograd by PyTorch); statistics and the affine map
    are computed in fp32 and the result is cast back to the input's dtype, so fp16 /
    bf16 activations do not lose the variance to rounding. Parameters ``weight`` and
    ``bias`` of shape ``[C]`` (public key names). ``eps`` = 1e-6 as in NAFNet.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        mu = x32.mean(1, keepdim=True)
        centred = x32 - mu
        var = centred.square().mean(1, keepdim=True)
        y = centred * torch.rsqrt(var + self.eps)
        y = y * self.weight.float().view(1, -1, 1, 1) + self.bias.float().view(1, -1, 1, 1)
        return y.to(x.dtype)


def _simple_gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    """NAFNet block: (norm, 1x1 expand, 3x3 depthwise, SimpleGate, simplified channel
    attention, 1x1) + beta-scaled residual, then (norm, 1x1, SimpleGate, 1x1) +
    gamma-scaled residual. beta and gamma start at 0 (the block starts as identity)."""

    def __init__(self, c: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = c * dw_expand
        ffn = c * ffn_expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        # Sequential so the key is ``sca.1.weight`` as in the public checkpoints.
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = _simple_gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(_simple_gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    """NAFNet (Chen et al., "Simple Baselines for Image Restoration", 2022).

    3x3 intro conv to ``width``; per encoder level a stack of NAFBlocks then a 2x2
    stride-2 conv doubling the width; middle NAFBlocks; per decoder level a 1x1 conv
    (no bias) + PixelShuffle(2) halving the width, added to the skip, then NAFBlocks;
    3x3 ending conv to ``out_channels``.

    With the adaptive head (``out_channels == 9``) the raw ending output is returned.
    Otherwise the output is a residual over the current state, as in the public code:
    ``ending(x) + input[:, :out_channels]`` (the first 4 input channels are ``A_i``).
    Input h, w must be multiples of ``2 ** len(enc_blocks)`` (16 by default).
    """

    def __init__(self, in_channels: int = 4, out_channels: int = 9, width: int = 16,
                 enc_blocks: Sequence[int] = NAFNET_DEFAULTS["enc_blocks"],
                 middle_blocks: int = NAFNET_DEFAULTS["middle_blocks"],
                 dec_blocks: Sequence[int] = NAFNET_DEFAULTS["dec_blocks"]) -> None:
        super().__init__()
        enc_blocks = tuple(int(n) for n in enc_blocks)
        dec_blocks = tuple(int(n) for n in dec_blocks)
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f"NAFNet needs as many decoder as encoder levels, got enc={enc_blocks} "
                             f"dec={dec_blocks}")
        if width < 1 or in_channels < 1 or out_channels < 1 or middle_blocks < 0 or \
                any(n < 0 for n in enc_blocks + dec_blocks):
            raise ValueError("NAFNet sizes must be positive (block counts >= 0)")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.width = int(width)
        self.enc_blocks = enc_blocks
        self.middle_blocks = int(middle_blocks)
        self.dec_blocks = dec_blocks
        self.multiple = 2 ** len(enc_blocks)
        self.global_residual = out_channels != 2 * PLANES + 1 and out_channels <= in_channels

        self.intro = nn.Conv2d(in_channels, width, 3, padding=1)
        self.ending = nn.Conv2d(width, out_channels, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        chan = width
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(n)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blocks)])
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(n)]))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        check_backbone_input(inp, self.in_channels, self.multiple, "NAFNet")
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        x = self.ending(x)
        if self.global_residual:
            x = x + inp[:, : self.out_channels]
        return x

    def options(self) -> dict[str, Any]:
        return {"width": self.width, "enc_blocks": self.enc_blocks,
                "middle_blocks": self.middle_blocks, "dec_blocks": self.dec_blocks}
