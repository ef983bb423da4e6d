"""Backbone networks of ExposureDiffusion (SPEC section 5): the SID UNet and NAFNet.

Both map a network input ``[B, C_in, h, w]`` (packed raw, normalised; ``C_in`` = 4, 8 or
12, see SPEC section 4 for the channel order) to ``[B, C_out, h, w]`` raw outputs:

* ``C_out == 9`` ("adaptive residual head"): channel 0 is the mask logit, 1-4 the direct
  estimate ``x0``, 5-8 the residual ``R``. The backbone returns these *raw*; the blend
  ``clip(x0) * M + clip(R + A_i) * (1 - M)`` is done by the loop / fused kernel.
* ``C_out == 4``: a plain estimate; the loop clips it to [0, 1].

``h`` and ``w`` must be multiples of 16 (the engine pads and crops back); other sizes are
refused with a ``ValueError``. The modules use only ops that keep working under fp16 /
bf16 and ``channels_last`` and that ``torch.export`` can trace.

State-dict keys follow the public code so public checkpoints load unchanged
(``engine.checkpoint`` infers the options from the tensor shapes).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "BackboneConfig",
    "LayerNorm2d",
    "NAFBlock",
    "NAFNet",
    "UNet",
    "build_backbone",
    "count_macs",
    "unet_macs",
]

UNET_WIDTHS = (32, 64, 128, 256, 512)
NAFNET_DEFAULTS = {"width": 16, "enc_blocks": (2, 2, 4, 4), "middle_blocks": 12, "dec_blocks": (2, 2, 2, 2)}
VALID_IN_CHANNELS = (4, 8, 12)
VALID_OUT_CHANNELS = (4, 9)
PLANES = 4  # packed raw planes R, G1, B, G2


def _check_input(x: torch.Tensor, in_channels: int, multiple: int, name: str) -> None:
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


# ---------------------------------------------------------------------------------------
# SID UNet
# ---------------------------------------------------------------------------------------
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
        _check_input(x, self.in_channels, self.multiple, "UNet")
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


# ---------------------------------------------------------------------------------------
# NAFNet
# ---------------------------------------------------------------------------------------
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
        _check_input(inp, self.in_channels, self.multiple, "NAFNet")
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


# ---------------------------------------------------------------------------------------
# Configuration and factory
# ---------------------------------------------------------------------------------------
ARCHS = {"unet": UNet, "nafnet": NAFNet}
_ARCH_DEFAULTS = {"unet": {"widths": UNET_WIDTHS}, "nafnet": dict(NAFNET_DEFAULTS)}
_ARCH_ALIASES = {"unet": "unet", "sid": "unet", "unetseeindark": "unet",
                 "nafnet": "nafnet", "naf": "nafnet", "naf2": "nafnet"}


def _canonical_arch(arch: str) -> str:
    key = str(arch).lower().replace("-", "").replace("_", "")
    if key not in _ARCH_ALIASES:
        raise ValueError(f"unknown backbone architecture {arch!r}; expected one of {sorted(ARCHS)}")
    return _ARCH_ALIASES[key]


def _normalise_options(arch: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Fill in the architecture's defaults so a config states every option explicitly."""
    defaults = _ARCH_DEFAULTS[arch]
    options = dict(options or {})
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for backbone {arch!r}; "
                         f"known: {sorted(defaults)}")
    out = {}
    for key, default in defaults.items():
        value = options.get(key, default)
        out[key] = tuple(int(v) for v in value) if isinstance(default, tuple) else int(value)
    return out


def _split_channels(in_channels: int, with_photon: bool | None,
                    concat_origin: bool | None) -> tuple[bool, bool]:
    """Which optional input groups make up ``in_channels`` (SPEC section 4).

    8 channels are ambiguous (photon or origin); unless told otherwise this picks
    ``with_photon=True, concat_origin=False``, the public code's 8-channel configuration
    (its only released configuration without ``concat_origin`` keeps ``with_photon``).
    """
    if in_channels not in VALID_IN_CHANNELS:
        raise ValueError(f"backbone input must have 4, 8 or 12 channels (state [+ photon] [+ origin]), "
                         f"got {in_channels}")
    extra = in_channels // PLANES - 1
    if with_photon is None and concat_origin is None:
        with_photon, concat_origin = extra >= 1, extra == 2
    elif with_photon is None:
        with_photon = extra - int(bool(concat_origin)) == 1
    elif concat_origin is None:
        concat_origin = extra - int(bool(with_photon)) == 1
    with_photon, concat_origin = bool(with_photon), bool(concat_origin)
    if int(with_photon) + int(concat_origin) != extra:
        raise ValueError(f"{in_channels} input channels do not match with_photon={with_photon}, "
                         f"concat_origin={concat_origin} (4 + 4*with_photon + 4*concat_origin)")
    return with_photon, concat_origin


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to rebuild a backbone, stored explicitly in our checkpoints.

    ``in_channels`` (4 + 4*with_photon + 4*concat_origin) and ``adaptive_head``
    (``out_channels == 9``) are derived. ``options`` holds the architecture's own sizes
    (UNet: ``widths``; NAFNet: ``width, enc_blocks, middle_blocks, dec_blocks``), always
    complete after construction. The default is the paper's UNet with photon channel and
    adaptive head (8 -> 9 channels).
    """

    arch: str = "unet"
    out_channels: int = 9
    with_photon: bool = True
    concat_origin: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arch = _canonical_arch(self.arch)
        object.__setattr__(self, "arch", arch)
        object.__setattr__(self, "with_photon", bool(self.with_photon))
        object.__setattr__(self, "concat_origin", bool(self.concat_origin))
        if int(self.out_channels) not in VALID_OUT_CHANNELS:
            raise ValueError(f"backbone output must have 9 (adaptive residual head) or 4 channels, "
                             f"got {self.out_channels}")
        object.__setattr__(self, "out_channels", int(self.out_channels))
        object.__setattr__(self, "options", _normalise_options(arch, self.options))

    @property
    def in_channels(self) -> int:
        return PLANES * (1 + int(self.with_photon) + int(self.concat_origin))

    @property
    def adaptive_head(self) -> bool:
        return self.out_channels == 2 * PLANES + 1

    @classmethod
    def from_channels(cls, arch: str, in_channels: int, out_channels: int, *,
                      with_photon: bool | None = None, concat_origin: bool | None = None,
                      **options: Any) -> "BackboneConfig":
        """Config from channel counts; 8 input channels default to ``with_photon=True``."""
        wp, co = _split_channels(int(in_channels), with_photon, concat_origin)
        return cls(arch=arch, out_channels=out_channels, with_photon=wp, concat_origin=co, options=options)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str/int/bool/list only; loadable with ``weights_only=True``)."""
        return {"arch": self.arch, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "with_photon": self.with_photon, "concat_origin": self.concat_origin,
                "adaptive_head": self.adaptive_head,
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneConfig":
        """Inverse of ``to_dict``; derived fields, when present, must agree."""
        if not isinstance(d, dict):
            raise ValueError(f"backbone config must be a dict, got {type(d).__name__}")
        required = {"arch", "out_channels", "with_photon", "concat_origin"}
        missing = required - set(d)
        if missing:
            raise ValueError(f"backbone config lacks {sorted(missing)}")
        unknown = set(d) - required - {"options", "in_channels", "adaptive_head"}
        if unknown:
            raise ValueError(f"backbone config has unknown field(s) {sorted(unknown)}")
        cfg = cls(arch=d["arch"], out_channels=d["out_channels"], with_photon=d["with_photon"],
                  concat_origin=d["concat_origin"], options=d.get("options") or {})
        for derived in ("in_channels", "adaptive_head"):
            if derived in d and d[derived] != getattr(cfg, derived):
                raise ValueError(f"backbone config says {derived}={d[derived]!r} but its other fields "
                                 f"give {getattr(cfg, derived)!r}")
        return cfg

    def build(self) -> nn.Module:
        return build_backbone(self.arch, self.in_channels, self.out_channels, **self.options)


def build_backbone(arch: str, in_channels: int, out_channels: int, **kw: Any) -> nn.Module:
    """Instantiate ``'unet'`` or ``'nafnet'`` (aliases: sid, naf, naf2) with architecture options ``kw``."""
    arch = _canonical_arch(arch)
    return ARCHS[arch](in_channels, out_channels, **_normalise_options(arch, kw))


# ---------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------
def count_macs(model: nn.Module, in_shape: Iterable[int]) -> int:
    """Multiply-accumulates of ``model`` on an input of ``in_shape`` (``[B,] C, h, w``),
    counted by forward hooks on every Conv2d / ConvTranspose2d / Linear (same convention
    as ``unet_macs``: biases, norms, activations and pooling are not counted).

    Runs on a copy of the model on the ``meta`` device: no compute, any size.
    """
    shape = tuple(int(s) for s in in_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    probe = copy.deepcopy(model).to("meta")
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.ConvTranspose2d):
            kh, kw = module.kernel_size
            total += inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in probe.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            probe(torch.empty(shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return int(total)
