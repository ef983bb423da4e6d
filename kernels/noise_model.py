"""What a noise model is: the letters of its name (SPEC §3) and the per-sample
parameters of a batch.

``parse_noise_model("P+G+r+u")`` names the components; ``NoiseParams`` holds one draw of
every parameter per sample (``kernels.profiles.sample_noise_params`` makes them,
``kernels.noise.synthesize_noise`` uses them). Both modules import this one, which imports
neither.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch

from ._common import to_device

_LETTERS = {
    "P": "Poisson shot noise",
    "p": "Gaussian approximation of shot noise",
    "g": "Gaussian read noise",
    "G": "Tukey-lambda read noise",
    "r": "row noise",
    "u": "quantisation noise",
}

class NoiseModel(NamedTuple):
    """A parsed model name: which component fills each slot (None: absent)."""

    shot: str | None  # "P", "p" or None
    read: str | None  # "g", "G" or None
    row: bool
    quant: bool

    @property
    def name(self) -> str:
        parts = [self.shot, self.read, "r" if self.row else None, "u" if self.quant else None]
        return "+".join(p for p in parts if p)


def parse_noise_model(model: str) -> NoiseModel:
    """Parse a model name like ``"P+G+r+u"`` (letters joined by "+", any order).

    Raises ValueError for unknown letters, repeated letters, both P and p, both g and G,
    or an empty model.
    """
    if not isinstance(model, str):
        raise TypeError(f"model must be a string like 'P+g' or 'P+G+r+u', got {type(model).__name__}")
    tokens = [t.strip() for t in model.split("+")]
    if not model.strip() or any(t == "" for t in tokens):
        raise ValueError(f"model {model!r} must name components joined by '+', e.g. 'P+g' or 'P+G+r+u'")
    known = ", ".join(f"{k} ({v})" for k, v in _LETTERS.items())
    for t in tokens:
        if t not in _LETTERS:
            raise ValueError(f"unknown noise component {t!r} in model {model!r}; known: {known}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"model {model!r} names a component twice")
    if "P" in tokens and "p" in tokens:
        raise ValueError(f"model {model!r} has both P (Poisson shot noise) and p (its Gaussian approximation); choose one")
    if "g" in tokens and "G" in tokens:
        raise ValueError(f"model {model!r} has both g (Gaussian read noise) and G (Tukey-lambda read noise); choose one")
    shot = "P" if "P" in tokens else ("p" if "p" in tokens else None)
    read = "g" if "g" in tokens else ("G" if "G" in tokens else None)
    return NoiseModel(shot, read, "r" in tokens, "u" in tokens)


@dataclasses.dataclass
class NoiseParams:
    """Per-sample ELD noise parameters of a batch, ready for ``synthesize_noise(params=...)``.

    K, ratio, sigma_g, sigma_TL, lam, sigma_r: float32 [B] (gain in DN/e-, exposure ratio,
    read/row noise scales in DN, Tukey-lambda shape). camera_index: int64 [B] into
    ``cameras`` (profile names). model: the noise model name the parameters were drawn
    for (used by ``synthesize_noise`` when it is given no model). Every scale is drawn
    whatever the model, so one draw serves any model.
    """

    K: torch.Tensor
    ratio: torch.Tensor
    sigma_g: torch.Tensor
    sigma_TL: torch.Tensor
    lam: torch.Tensor
    sigma_r: torch.Tensor
    camera_index: torch.Tensor
    cameras: tuple = ()
    model: str = "P+G+r+u"

    @property
    def batch(self) -> int:
        return self.K.shape[0]

    def to(self, device, non_blocking: bool = False) -> "NoiseParams":
        """The same parameters on ``device`` (``non_blocking``: CPU -> CUDA through pinned memory)."""
        return self._map(lambda t: to_device(t, device, non_blocking=non_blocking))

    def select(self, index) -> "NoiseParams":
        """The parameters of some samples (``index``: a slice, or indices), same cameras and model."""
        return self._map(lambda t: t[index])

    def _map(self, fn) -> "NoiseParams":
        """A copy with ``fn`` applied to every tensor field (cameras and model kept)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return NoiseParams(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in fields.items()})

    def as_kwargs(self) -> dict:
        """The six per-sample parameters as keyword arguments of ``synthesize_noise``."""
        return {k: getattr(self, k) for k in ("ratio", "K", "sigma_g", "sigma_TL", "lam", "sigma_r")}
