"""The SID UNet (SPEC section 5), and the input contract shared by every backbone.

"Learning to See in the Dark" (Chen et al. 2018), as used by ELD / ExposureDiffusion;
state-dict keys as in the public code (``conv1_1 ... conv10_1``, ``upv6 ... upv9``).
``check_backbone_input`` is the refusal every backbone applies to its input.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

UNET_WIDTHS = (32, 64, 128, 256, 512)
PLANES = 4  # packed raw planes R, G1, B, G2


def check_backbone_input(x: torch.Tensor, in_channels: int, multiple: int, name: str) -> None:
    """Refuse inputs the network cannot take, naming what was given and what is expected."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects a [B, C, h, w] tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{name} was built for {in_channels} input channels, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    h, w = x.shape[-2], x.shape[-1]
    if h % multiple or w % multiple:
        raise ValueError(f"{name} needs a spatial size that is a multiple of {multiple}, got {h}x{w}; "
                         f"pad the input (the engine pads to a multiple of {multiple} and crops back)")


class UNet(nn.Module):
    """The "Learning to See in the Dark" UNet (Chen et al. 2018) as used by ELD / ExposureDiffusion.

    Five levels of two 3x3 convs + LeakyReLU(0.2); 2x2 max pooling down; 2x2 stride-2
    transposed convs up, concatenated with the skip (upsampled first); a 1x1 conv to
    ``out_channels``. Input ``[B, in_channels, h, w]`` with h, w multiples of 16; output
    ``[B, out_channels, h, w]`` in the input's dtype, without clipping or head blending.
    """

    multiple = 16

    def __init__(self, in_channels: int = 4, out_channels: int = 9,
                 widths: Sequence[int] = UNET_WIDTHS) -> None:
        super().__init__()
        widths = tuple(int(c) for c in widths)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"UNet needs 5 positive level widths, got {widths}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"UNet channels must be positive, got in={in_channels} out={out_channels}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.widths = widths
        c1, c2, c3, c4, c5 = widths

        def conv3(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)

        # Encoder (names = public state-dict keys).
        self.conv1_1, self.conv1_2 = conv3(in_channels, c1), conv3(c1, c1)
        self.conv2_1, self.conv2_2 = conv3(c1, c2), conv3(c2, c2)
        self.conv3_1, self.conv3_2 = conv3(c2, c3), conv3(c3, c3)
        self.conv4_1, self.conv4_2 = conv3(c3, c4), conv3(c4, c4)
        self.conv5_1, self.conv5_2 = conv3(c4, c5), conv3(c5, c5)
        # Decoder: the up-conv halves the width, the concat with the skip doubles it back.
        self.upv6 = nn.ConvTranspose2d(c5, c4, kernel_size=2, stride=2)
        self.conv6_1, self.conv6_2 = conv3(2 * c4, c4), conv3(c4, c4)
        self.upv7 = nn.ConvTranspose2d(c4, c3, kernel_size=2, stride=2)
        self.conv7_1, self.conv7_2 = conv3(2 * c3, c3), conv3(c3, c3)
        self.upv8 = nn.ConvTranspose2d(c3, c2, kernel_size=2, stride=2)
        self.conv8_1, self.conv8_2 = conv3(2 * c2, c2), conv3(c2, c2)
        self.upv9 = nn.ConvTranspose2d(c2, c1, kernel_size=2, stride=2)
        self.conv9_1, self.conv9_2 = conv3(2 * c1, c1), conv3(c1, c1)
        self.conv10_1 = nn.Conv2d(c1, out_channels, kernel_size=1, stride=1)

    @staticmethod
    def _act(x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.2)

    def _level(self, x: torch.Tensor, a: nn.Conv2d, b: nn.Conv2d) -> torch.Tensor:
        return self._act(b(self._act(a(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_backbone_input(x, self.in_channels, self.multiple, "UNet")
        e1 = self._level(x, self.conv1_1, self.conv1_2)
        e2 = self._level(F.max_pool2d(e1, 2), self.conv2_1, self.conv2_2)
        e3 = self._level(F.max_pool2d(e2, 2), self.conv3_1, self.conv3_2)
        e4 = self._level(F.max_pool2d(e3, 2), self.conv4_1, self.conv4_2)
        e5 = self._level(F.max_pool2d(e4, 2), self.conv5_1, self.conv5_2)
        d6 = self._level(torch.cat([self.upv6(e5), e4], 1), self.conv6_1, self.conv6_2)
        d7 = self._level(torch.cat([self.upv7(d6), e3], 1), self.conv7_1, self.conv7_2)
        d8 = self._level(torch.cat([self.upv8(d7), e2], 1), self.conv8_1, self.conv8_2)
        d9 = self._level(torch.cat([self.upv9(d8), e1], 1), self.conv9_1, self.conv9_2)
        return self.conv10_1(d9)

    def options(self) -> dict[str, Any]:
        """Architecture options beyond the channel counts (for ``BackboneConfig.options``)."""
        return {"widths": self.widths}


def unet_parameters(in_channels: int, out_channels: int, widths: Sequence[int] = UNET_WIDTHS) -> int:
    """Number of parameters (weights + biases) of ``UNet(in_channels, out_channels, widths)``,
    counted from the layer list without building anything (checked against a built model in
    tests/test_checkpoint.py): lets a checkpoint's or a user's config be refused before it
    allocates memory."""
    c = [int(v) for v in widths]
    conv = lambda cin, cout, k=3: k * k * cin * cout + cout  # noqa: E731
    total, cin = 0, int(in_channels)
    for lvl in range(5):  # encoder
        total += conv(cin, c[lvl]) + conv(c[lvl], c[lvl])
        cin = c[lvl]
    for lvl in range(3, -1, -1):  # decoder: 2x2 transposed conv, then two 3x3 convs
        total += conv(c[lvl + 1], c[lvl], 2) + conv(2 * c[lvl], c[lvl]) + conv(c[lvl], c[lvl])
    return total + conv(c[0], int(out_channels), 1)


def unet_macs(h: int, w: int, in_channels: int = 4, out_channels: int = 9,
              widths: Sequence[int] = UNET_WIDTHS) -> int:
    """Multiply-accumulates of one UNet forward on a ``[1, in_channels, h, w]`` input.

    Counted analytically from the layer list: a conv or transposed conv costs
    (output pixels) x (input channels) x (output channels) x (kernel area) for a conv and
    (input pixels) x C_in x C_out x 4 for the 2x2 stride-2 transposed conv (= output
    pixels x C_in x C_out). Bias adds, activations, pooling and concatenation are not
    counted. h and w must be multiples of 16.
    Examples (4 -> 9 channels): 512x512 -> 48.4 G; 1424x2128 -> 559.6 G; with 8 input
    channels 48.7 G / 563.2 G (the figures SPEC section 5 quotes).
    """
    if h % 16 or w % 16:
        raise ValueError(f"unet_macs needs a spatial size that is a multiple of 16, got {h}x{w}")
    c = tuple(widths)
    px = [(h >> k) * (w >> k) for k in range(5)]  # pixels at levels 1..5
    total = 0
    cin = in_channels
    for lvl in range(5):  # encoder: two 3x3 convs per level
        total += px[lvl] * 9 * (cin * c[lvl] + c[lvl] * c[lvl])
        cin = c[lvl]
    for lvl in range(3, -1, -1):  # decoder levels 4..1 (upv6..upv9, conv6..conv9)
        total += px[lvl] * c[lvl + 1] * c[lvl]  # transposed conv 2x2 stride 2
        total += px[lvl] * 9 * (2 * c[lvl] * c[lvl] + c[lvl] * c[lvl])
    total += px[0] * c[0] * out_channels  # conv10_1, 1x1
    return total
