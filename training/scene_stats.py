"""Statistics of clean scenes: what photographs have that a family of training scenes lacks.

A model trained on synthetic scenes learns their statistics; where photographs differ (finer
texture, more edges, more colour at high frequencies) it has less to go on. These
statistics compare families of clean packed-raw scenes, with figures that need no reference
image:

- ``spectrum_slope``: the exponent ``alpha`` of the luminance's radially averaged power
  spectrum ``P(f) ~ f^-alpha`` (a Hann window, fitted over 4 cycles per image to a quarter of
  the sampling rate). Larger means smoother (less fine detail), smaller means noisier texture.
  For orientation only: large calibrated photographs of natural scenes give about 2 (Field
  1987, "Relations between the statistics of natural images and the response properties of
  cortical cells"; van der Schaaf and van Hateren 1996: 1.88 +- 0.43 over 276 images); small
  crops of linear raw luminance, as here, give more (bright and dark regions dominate the
  power), so families are compared with each other on the same crops, not with that figure.
- ``band_energy``: the share of the luminance's variance in each octave band, finest first
  (0.25-0.5, 0.125-0.25, ... cycles per packed pixel): where in scale the detail is.
- ``edge_density``: the share of pixels where log-luminance changes by more than 0.1 (about
  10% contrast) to a neighbour: how much of the scene is edges.
- ``chroma_spread``: the spread (standard deviation) of the log colour ratios ``log(R/G)`` and
  ``log(B/G)`` over the scene: how varied its colours are; ``chroma_detail``: the same of their
  high-pass part (the ratios less their 5 x 5 local mean): colour at fine scales (fabric,
  foliage, false-colour-prone gratings).

``python -m training.scene_stats`` prints them for the built-in families (the photo-like
hold-out, the procedural scenes, the dead-leaves scenes where the ``deadleaves`` package is
installed, the textured-leaves scenes of ``training.textured_leaves``) and, given
``--srgb-folder``, for a folder of photos made into raw as training makes them; ``--skimage`` adds scikit-image's photographs, which are evaluation material: a
reference to read, never a target to tune the families on.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from .options import ILLUMINATIONS

__all__ = ["scene_statistics", "STATISTICS"]

STATISTICS = ("spectrum_slope", "edge_density", "chroma_spread", "chroma_detail")
EDGE_STEP = 0.1  # log-luminance step that counts as an edge (about 10% contrast)
_EPS = 1e-3  # added before logarithms: the scenes' darkest values are ~1e-3 of white


def _luminance(packed: torch.Tensor) -> torch.Tensor:
    """``[B, 4, h, w]`` R, G1, B, G2 -> ``[B, h, w]`` (the planes' mean; camera RGB)."""
    return (packed[:, 0] + 0.5 * (packed[:, 1] + packed[:, 3]) + packed[:, 2]) / 3


def _radial_spectrum(lum: torch.Tensor):
    """Radial power spectrum of ``[B, n, n]`` (mean removed, Hann window), averaged over the
    batch: (frequencies in cycles per pixel, mean power per frequency, power summed over each
    ring), for the radii 1 .. n/2 - 1."""
    B, n, _ = lum.shape
    window = torch.hann_window(n, periodic=False, dtype=torch.float64)
    x = (lum - lum.mean(dim=(1, 2), keepdim=True)) * window[:, None] * window[None, :]
    power = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(-2, -1)).mean(0)
    k = torch.arange(n, dtype=torch.float64) - n // 2
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long()
    bins = torch.bincount(radius.flatten(), weights=power.flatten())
    counts = torch.bincount(radius.flatten()).clamp_min(1)
    return torch.arange(1, n // 2, dtype=torch.float64) / n, (bins / counts)[1:n // 2], bins[1:n // 2]


def scene_statistics(packed: torch.Tensor) -> dict:
    """The module's statistics of a batch of clean scenes, averaged over the batch.

    Args:
        packed: ``[B, 4, n, n]`` packed raw (R, G1, B, G2), linear, in [0, 1]; square, n >= 32.

    Returns:
        ``{"spectrum_slope": float, "band_energy": [float, ...] (finest octave first),
        "edge_density": float, "chroma_spread": float, "chroma_detail": float}``.
    """
    if packed.dim() != 4 or packed.shape[1] != 4 or packed.shape[2] != packed.shape[3] or packed.shape[2] < 32:
        raise ValueError(f"packed must be [B, 4, n, n] with n >= 32, got shape {tuple(packed.shape)}")
    x = packed.to(torch.float64).clamp(0, 1)
    n = x.shape[-1]
    lum = _luminance(x)
    freq, radial, rings = _radial_spectrum(lum)
    fit = (freq >= 4 / n) & (freq <= 0.25)
    slope = torch.linalg.lstsq(torch.stack([torch.log(freq[fit]), torch.ones_like(freq[fit])], 1),
                               torch.log(radial[fit])[:, None]).solution[0, 0]
    bands, hi = [], 0.5
    while hi > 2 / n:  # octaves (hi / 2, hi], the coarsest one down to the lowest ring: the shares sum to 1
        inside = (freq > (hi / 2 if hi / 2 > 2 / n else 0)) & (freq <= hi)
        bands.append(float(rings[inside].sum() / rings.sum()))
        hi /= 2
    log_lum = torch.log(lum + _EPS)
    steps = torch.cat([(log_lum[:, 1:, :] - log_lum[:, :-1, :]).abs().flatten(1),
                       (log_lum[:, :, 1:] - log_lum[:, :, :-1]).abs().flatten(1)], 1)
    edges = float((steps > EDGE_STEP).double().mean())
    green = 0.5 * (x[:, 1] + x[:, 3])
    ratios = torch.stack([torch.log((x[:, 0] + _EPS) / (green + _EPS)), torch.log((x[:, 2] + _EPS) / (green + _EPS))], 1)
    spread = float(ratios.flatten(2).std(dim=2).mean())
    detail = ratios - F.avg_pool2d(F.pad(ratios, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return {"spectrum_slope": float(-slope), "band_energy": bands, "edge_density": edges, "chroma_spread": spread,
            "chroma_detail": float(detail.flatten(2).std(dim=2).mean())}


def _families(n: int, patch: int, seed: int, srgb_folder=None, with_skimage: bool = False,
              illumination: str = "frame") -> dict:
    """Name -> ``[n, 4, patch, patch]`` clean scenes of each family that is available here
    (the leaves families lit as ``illumination`` says: ``training.deadleaves_scenes``)."""
    from .synthetic import procedural_scene

    g = torch.Generator().manual_seed(seed)
    families = {"photo-like hold-out": _holdout_scenes(n, patch, seed),
                "procedural": torch.stack([procedural_scene(g, patch) for _ in range(n)])}
    try:
        from .deadleaves_scenes import finish_scene, render_leaves

        scenes = []
        for i in range(n):
            rgb = torch.from_numpy(render_leaves(seed * 1000 + i, size=2 * patch))
            scenes.append(finish_scene(rgb, torch.Generator().manual_seed(seed * 1000 + i), patch, illumination))
        families["dead leaves"] = torch.stack(scenes)
    except ImportError as e:
        print(f"dead leaves: left out ({e})", file=sys.stderr)
    from .textured_leaves import textured_holdout

    families["textured leaves"] = textured_holdout(n, patch, seed, illumination)
    if srgb_folder is not None:
        from .augment import normalise_packed
        from .patches import collate_patches
        from .synthetic import SRGBFolderDataset

        data = SRGBFolderDataset(srgb_folder, patch=patch, seed=seed)
        batch = collate_patches([data.sample(i % len(data.files), np.random.default_rng(seed + i)) for i in range(n)])
        families[f"sRGB folder {srgb_folder}"] = normalise_packed(batch.raw, batch.black, batch.white)
    if with_skimage:
        from .holdout_eval import skimage_photos

        families["scikit-image photographs (evaluation only)"] = skimage_photos(min(n, 6), patch, seed)
    return families


def _holdout_scenes(n: int, patch: int, seed: int) -> torch.Tensor:
    """The photo-like hold-out's clean scenes, ``[n, 4, patch, patch]`` in [0, 1]."""
    from .holdout import photo_scene

    g = torch.Generator().manual_seed(seed)
    return torch.stack([photo_scene(g, patch).float() for _ in range(n)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.scene_stats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=16, help="scenes per family (default 16)")
    ap.add_argument("--patch", type=int, default=128, help="scene side in packed pixels (default 128: the largest the photographs allow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--srgb-folder", default=None, help="also a folder of photos, made into raw as training does")
    ap.add_argument("--skimage", action="store_true", help="also scikit-image's photographs (evaluation only)")
    ap.add_argument("--illumination", default="frame", choices=ILLUMINATIONS,
                    help="how the leaves families are lit (as train --illumination; default frame)")
    args = ap.parse_args(argv)
    rows = []
    for name, scenes in _families(args.n, args.patch, args.seed, args.srgb_folder, args.skimage,
                                  args.illumination).items():
        s = scene_statistics(scenes)
        rows.append((name, s))
    bands = max(len(s["band_energy"]) for _, s in rows)
    header = ["family", "alpha", "edges", "chroma spread", "chroma detail"] + [f"band {i + 1}" for i in range(bands)]
    print("  ".join(header))
    for name, s in rows:
        print("  ".join([name, f"{s['spectrum_slope']:.2f}", f"{s['edge_density']:.3f}", f"{s['chroma_spread']:.3f}",
                         f"{s['chroma_detail']:.3f}"] + [f"{b:.3f}" for b in s["band_energy"]]))
    print(f"alpha: power spectrum exponent of linear luminance on these crops (compare families with each other); "
          f"edges: share of neighbour steps > {EDGE_STEP} in log luminance; bands: share of the variance per "
          f"octave, finest first (0.25-0.5 cycles per packed pixel)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
