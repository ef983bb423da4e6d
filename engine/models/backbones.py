"""Backbone networks of ExposureDiffusion (SPEC section 5): the SID UNet (``engine.models.unet``) and
NAFNet (``engine.models.nafnet``), their configuration (``BackboneConfig``) and factory.

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
(``engine.models.checkpoint`` infers the options from the tensor shapes).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from kernels.numbers import integer

from .nafnet import NAFNET_DEFAULTS, LayerNorm2d, NAFBlock, NAFNet, nafnet_parameters
from .unet import PLANES, UNET_WIDTHS, UNet, check_backbone_input, unet_macs, unet_parameters

__all__ = [
    "ARCHS",
    "BackboneConfig",
    "LayerNorm2d",
    "NAFBlock",
    "NAFNet",
    "UNet",
    "build_backbone",
    "check_backbone_input",
    "count_macs",
    "parameter_count",
    "unet_macs",
]

VALID_IN_CHANNELS = (4, 8, 12)
VALID_OUT_CHANNELS = (4, 9)

# Sane limits, checked before anything is built (a checkpoint's config, or a user's): a
# 2 KB file must not make the loader allocate gigabytes. Each is several times the largest
# published configuration of its backbone.
MAX_UNET_WIDTH = 4096  # per level; the paper's UNet: 32 .. 512
MAX_NAFNET_WIDTH = 512  # NAFNet papers: 16 .. 64 (the channels double at each level)
MAX_NAFNET_LEVELS = 6  # encoder / decoder levels; default 4
MAX_NAFNET_BLOCKS = 64  # blocks per level and in the middle; NAFNet papers: up to 28
MAX_PARAMETERS = 250_000_000  # 1 GB of fp32 weights; the paper's UNet has 7.76 M


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
    """Fill in the architecture's defaults so a config states every option explicitly;
    every size must be an integer within the limits above (ValueError naming it)."""
    defaults = _ARCH_DEFAULTS[arch]
    options = dict(options or {})
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for backbone {arch!r}; "
                         f"known: {sorted(defaults)}")
    out = {}
    for key, default in defaults.items():
        value = options.get(key, default)
        if isinstance(default, tuple):
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"{arch} option {key} must be a list of integers, got {value!r:.80}")
            levels = (5, 5) if arch == "unet" else (1, MAX_NAFNET_LEVELS)
            if not levels[0] <= len(value) <= levels[1]:
                allowed = "5" if arch == "unet" else f"1 to {MAX_NAFNET_LEVELS}"
                raise ValueError(f"{arch} option {key} must have {allowed} levels, got {len(value)}")
            out[key] = tuple(integer(f"{arch} option {key}[{i}]", v) for i, v in enumerate(value))
        else:
            out[key] = integer(f"{arch} option {key}", value)
    if arch == "unet":
        w = out["widths"]
        if not all(1 <= c <= MAX_UNET_WIDTH for c in w):
            raise ValueError(f"unet widths must be 5 integers in [1, {MAX_UNET_WIDTH}], got {w}")
    else:
        if not 1 <= out["width"] <= MAX_NAFNET_WIDTH:
            raise ValueError(f"nafnet width must be in [1, {MAX_NAFNET_WIDTH}], got {out['width']}")
        if len(out["enc_blocks"]) != len(out["dec_blocks"]):
            raise ValueError(f"nafnet needs as many decoder as encoder levels, got enc_blocks={out['enc_blocks']} "
                             f"dec_blocks={out['dec_blocks']}")
        for key in ("enc_blocks", "dec_blocks", "middle_blocks"):
            counts = out[key] if isinstance(out[key], tuple) else (out[key],)
            if not all(0 <= n <= MAX_NAFNET_BLOCKS for n in counts):
                raise ValueError(f"nafnet {key} must be block counts in [0, {MAX_NAFNET_BLOCKS}], got {out[key]}")
    return out


def parameter_count(arch: str, in_channels: int, out_channels: int, options: dict[str, Any]) -> int:
    """Parameters of a backbone from its (normalised) options, without building it."""
    if _canonical_arch(arch) == "unet":
        return unet_parameters(in_channels, out_channels, options["widths"])
    return nafnet_parameters(in_channels, out_channels, **options)


def _check_size(arch: str, in_channels: int, out_channels: int, options: dict[str, Any]) -> None:
    n = parameter_count(arch, in_channels, out_channels, options)
    if n > MAX_PARAMETERS:
        raise ValueError(f"{arch} with {options} would hold {n / 1e6:.0f} M parameters, above the limit of "
                         f"{MAX_PARAMETERS / 1e6:.0f} M ({4 * MAX_PARAMETERS / 1e9:.0f} GB in fp32)")


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
        out_channels = integer("out_channels", self.out_channels)
        if out_channels not in VALID_OUT_CHANNELS:
            raise ValueError(f"backbone output must have 9 (adaptive residual head) or 4 channels, "
                             f"got {out_channels}")
        object.__setattr__(self, "out_channels", out_channels)
        object.__setattr__(self, "options", _normalise_options(arch, self.options))
        _check_size(arch, self.in_channels, out_channels, self.options)

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

    @property
    def n_parameters(self) -> int:
        """Number of parameters of the backbone this config builds (counted, not built)."""
        return parameter_count(self.arch, self.in_channels, self.out_channels, self.options)

    def build(self) -> nn.Module:
        return build_backbone(self.arch, self.in_channels, self.out_channels, **self.options)


def build_backbone(arch: str, in_channels: int, out_channels: int, **kw: Any) -> nn.Module:
    """Instantiate ``'unet'`` or ``'nafnet'`` (aliases: sid, naf, naf2) with architecture options ``kw``."""
    arch = _canonical_arch(arch)
    options = _normalise_options(arch, kw)
    _check_size(arch, in_channels, out_channels, options)
    return ARCHS[arch](in_channels, out_channels, **options)


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
