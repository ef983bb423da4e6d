"""On-device normalisation and dihedral augmentation of packed R, G1, B, G2 batches.

The crops are cut on the uint16 cache (cheap, on the CPU); everything here runs batched on
the batch's device, with no per-sample Python loop and no host synchronisation (per-sample
choices are applied with ``torch.where``), so it also runs inside a CUDA graph. On a GPU
``augment_and_normalise`` runs the fused ``kernels.dihedral.normalise_dihedral`` instead
(the same arithmetic in one pass).

Why flipping packed planes is valid (SPEC §1 packing, derivation for an RGGB cell; the
other patterns differ only by which site R starts on, which packing removes):

- **Horizontal flip.** Mirror the mosaic ``M'[y, x] = M[y, W-1-x]`` (W = 2w even). Then
  ``M'[2i, 2j] = M[2i, 2(w-1-j) + 1] = G1[i, w-1-j]``: the mirrored sensor is GRBG, its
  red plane is ``R`` mirrored and the green on its red row is ``G1`` mirrored. So flipping
  every packed plane *is* the packing of the mirrored scene (with the re-chosen pattern);
  G1 stays on R's row, so the row-noise structure (planes 0/1 share a row, 2/3 the
  other) stays right. Vertical flip: the same with rows (the pattern becomes GBRG).
- **Transpose.** ``M'[y, x] = M[x, y]``: ``M'[2i, 2j] = R[j, i]``, ``M'[2i, 2j+1] =
  M[2j+1, 2i] = G2[j, i]`` and ``M'[2i+1, 2j] = G1[j, i]``. The green that shared R's
  *column* now shares its *row*: the transposed packed image is ``(R^T, G2^T, B^T, G1^T)``,
  i.e. transpose every plane **and swap planes 1 and 3**. That is again a valid
  R, G1, B, G2 packing of the transposed scene (same pattern), so the noise synthesised
  afterwards (row noise on planes 0/1 and 2/3) has the right geometry. The reference code
  transposes without the swap; for a clean image that only mislabels the two greens
  (harmless in practice, as G1 and G2 have the same spectral response), but the swap costs
  nothing and keeps the data an exact packing.

Normalisation is ``clip((D - black) * (ratio / (white - black)), 0, 1)`` in float32 with
the per-plane black levels of the *original* planes, before any plane is permuted, and
with the same arithmetic as ``kernels.pack_bayer`` (bit-identical results).
"""
from __future__ import annotations

import torch

from kernels import value_checks_disabled
from kernels._common import to_device, use_triton
from kernels.dihedral import normalise_dihedral

__all__ = ["normalise_packed", "random_dihedral", "apply_dihedral", "augment_and_normalise"]

# Plane order after a transpose: R, G2, B, G1 (see the module docstring).
_TRANSPOSE_PLANES = (0, 3, 2, 1)


def _per_sample(name: str, v, B: int, dev, width: int | None = None) -> torch.Tensor:
    """A number, ``width`` values or a per-sample tensor -> float32 ``[B]`` / ``[B, width]`` on
    ``dev`` (Python numbers become a device-side fill, no host-to-device copy)."""
    shape = (B,) if width is None else (B, width)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return torch.full(shape, float(v), dtype=torch.float32, device=dev)
    t = torch.as_tensor(v, dtype=torch.float32, device=dev)
    if t.numel() == 1:
        t = t.reshape(1).expand(shape) if width is None else t.reshape(1, 1).expand(shape)
    elif width is not None and t.shape in ((width,), (1, width)):
        t = t.reshape(1, width).expand(shape)
    elif width is None and t.dim() > 1:
        t = t.reshape(-1)
    if t.shape != shape:
        expected = "a number or [B]" if width is None else f"a number, {width} values or [B, {width}]"
        raise ValueError(f"{name} must be {expected} with B = {B}, got shape {tuple(t.shape)}")
    return t


def _levels(raw: torch.Tensor, black, white, ratio):
    B, dev = raw.shape[0], raw.device
    return (_per_sample("black", black, B, dev, 4).contiguous(), _per_sample("white", white, B, dev),
            _per_sample("ratio", ratio, B, dev))


def normalise_packed(raw: torch.Tensor, black, white, *, ratio=1.0) -> torch.Tensor:
    """uint16 (or float) DN ``[B, 4, h, w]`` -> float32 ``clip((D - black) * ratio / (white - black), 0, 1)``.

    ``black``: number, 4 values or float32 ``[B, 4]`` (per plane, DN); ``white``, ``ratio``:
    number or ``[B]``. Runs on ``raw``'s device.
    """
    if raw.dim() != 4 or raw.shape[1] != 4:
        raise ValueError(f"raw must be a packed batch [B, 4, h, w], got shape {tuple(raw.shape)}")
    black, white, ratio = _levels(raw, black, white, ratio)
    scale = ratio[:, None] / (white[:, None] - black)  # [B, 4], float32 as in kernels.pack_bayer
    x = raw.to(torch.float32, copy=True)  # one new buffer, then in place (same arithmetic order)
    return x.sub_(black[:, :, None, None]).mul_(scale[:, :, None, None]).clamp_(0.0, 1.0)


def random_dihedral(batch: int, *, generator: torch.Generator | None = None, device=None,
                    flips: bool = True, transpose: bool = True) -> torch.Tensor:
    """Per-sample choices, bool ``[batch, 3]``: (horizontal flip, vertical flip, transpose),
    each with probability 1/2 (all 8 symmetries of the square equally likely), drawn on
    ``generator``'s device and returned on ``device``. Disabled ones are all False."""
    gen_device = generator.device if generator is not None else (torch.device(device) if device is not None else None)
    u = torch.rand(batch, 3, generator=generator, device=gen_device)
    flags = u < 0.5
    if not flips:
        flags[:, :2] = False
    if not transpose:
        flags[:, 2] = False
    return flags.to(device) if device is not None else flags


def _flip(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.dtype == torch.uint16:  # flip has no uint16 kernel on the CPU; int16 is the same bits
        return x.view(torch.int16).flip(dim).view(torch.uint16)
    return x.flip(dim)


def _where(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype == torch.uint16:  # torch <= 2.11 has no uint16 where on the CPU; int16 is the same bits
        return torch.where(cond, a.view(torch.int16), b.view(torch.int16)).view(torch.uint16)
    return torch.where(cond, a, b)


def apply_dihedral(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Apply per-sample (horizontal flip, vertical flip, transpose) to packed ``x``.

    ``x``: ``[B, C, h, w]`` with C a multiple of 4 (groups of R, G1, B, G2, e.g. a clean
    target and a noisy input concatenated get the same transform), any dtype; a transpose
    needs ``h == w``. ``flags``: bool ``[B, 3]`` on ``x``'s device. Order: horizontal flip,
    then vertical flip, then transpose (which swaps planes 1 and 3 of each group).
    """
    if x.dim() != 4 or x.shape[1] % 4:
        raise ValueError(f"x must be packed [B, 4k, h, w], got shape {tuple(x.shape)}")
    B, C, h, w = x.shape
    if flags.shape != (B, 3) or flags.dtype != torch.bool:
        raise ValueError(f"flags must be bool [B, 3] with B = {B}, got {flags.dtype} {tuple(flags.shape)}")
    if flags.device != x.device:
        raise ValueError(f"flags are on {flags.device} but x is on {x.device}")
    sel = lambda k: flags[:, k].view(B, 1, 1, 1)  # noqa: E731
    x = _where(sel(0), _flip(x, -1), x)
    x = _where(sel(1), _flip(x, -2), x)
    if h == w:
        groups = x.reshape(B, C // 4, 4, h, w)  # permute by slices, not an index tensor: no host copy
        xt = torch.cat([groups[:, :, p : p + 1] for p in _TRANSPOSE_PLANES], dim=2).reshape(B, C, h, w).transpose(-1, -2)
        x = _where(sel(2), xt, x).contiguous()  # where may follow xt's transposed strides
    elif bool(flags[:, 2].any()):  # only reached for non-square input (a host sync there is fine)
        raise ValueError(f"a transpose needs square patches, got {h}x{w}; pass transpose=False")
    return x


def augment_and_normalise(raw: torch.Tensor, black, white, generator: torch.Generator | None = None, *,
                          ratio=1.0, flips: bool = True, transpose: bool = True, return_flags: bool = False):
    """Clean training batch on the device: DN -> normalised float32, random flips / transpose.

    Args:
        raw: uint16 ``[B, 4, p, p]`` DN on the device (R, G1, B, G2).
        black: float32 ``[B, 4]`` DN per plane (or 4 values / a number); white: ``[B]`` or a number.
        generator: a ``torch.Generator`` (on any device) for the per-sample choices;
            None uses torch's default generator of ``raw``'s device.
        ratio: optional amplification (``[B]`` or a number), as in ``kernels.pack_bayer``.
        flips, transpose: which symmetries to draw from (a transpose needs h == w).
        return_flags: also return the bool ``[B, 3]`` choices (to augment a paired tensor
            the same way with :func:`apply_dihedral`).

    Returns:
        float32 ``[B, 4, p, p]`` in [0, 1] (and the flags when asked).
    """
    if raw.dim() != 4 or raw.shape[1] != 4:
        raise ValueError(f"raw must be a packed batch [B, 4, h, w], got shape {tuple(raw.shape)}")
    if transpose and raw.shape[-1] != raw.shape[-2]:
        raise ValueError(f"a transpose needs square patches, got {raw.shape[-2]}x{raw.shape[-1]}; pass transpose=False")
    gen_device = generator.device if generator is not None else raw.device
    flags = random_dihedral(raw.shape[0], generator=generator, device=gen_device, flips=flips, transpose=transpose)
    # a pinned, non-blocking copy: a plain .to() from a CPU generator's flags waits for the
    # device's queue (a host synchronisation per micro-batch in the trainer)
    flags = to_device(flags, raw.device, non_blocking=True)
    if use_triton(raw.device, "auto"):
        # on a GPU: one fused pass (uint16 read once, float32 written once) instead of about
        # ten tensor-op passes; the same float32 arithmetic, bit-identical (tests/test_dihedral.py).
        # Its value checks would read the device: the levels are the dataset's, unchecked
        # here as in normalise_packed.
        black_t, white_t, ratio_t = _levels(raw, black, white, ratio)
        with value_checks_disabled():
            out = normalise_dihedral(raw, black_t, white_t, flags, ratio=ratio_t)
    else:
        out = apply_dihedral(normalise_packed(raw, black, white, ratio=ratio), flags)
    return (out, flags) if return_flags else out
