"""Evaluation: a trained backbone on the synthetic hold-out set and on real SID pairs.

Both run the inference loop of the engine (``engine.inference.loop``: SPEC §4 schedule, Poisson
draws with a fixed seed, or their means) on packed inputs and report PSNR / SSIM on the
packed raw (SPEC §6), per ratio, beside the same metrics of the noisy input itself.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine.models.backbones import BackboneConfig
from engine.camera import resolve_gain
from engine.inference.loop import exposure_schedule, pad_to_multiple, run_exposure_diffusion
from kernels import load_profile, sample_noise_params, synthesize_noise
from kernels._common import DEFAULT_DN_SCALE

from .augment import normalise_packed
from .metrics import center_crop, illuminance_correction, psnr, ssim
from .synthetic import synthetic_holdout


@torch.inference_mode()
def restore(backbone: nn.Module, config: BackboneConfig, first_input: torch.Tensor, *, ratio: torch.Tensor,
            K: torch.Tensor, steps: int, stochastic: bool = True, generator: torch.Generator | None = None,
            dn_scale: float = DEFAULT_DN_SCALE, schedule: str = "linspace") -> torch.Tensor:
    """The n-step estimate from a packed first network input ``[B, C, h, w]`` (any h, w), on the
    named inference ``schedule`` (``engine.inference.loop.SCHEDULES``)."""
    padded, (h, w) = pad_to_multiple(first_input)
    rho = exposure_schedule(ratio, steps, schedule)
    y = run_exposure_diffusion(backbone, padded, ratio=ratio, K=K, rho=rho, with_photon=config.with_photon,
                               concat_origin=config.concat_origin, stochastic=stochastic, generator=generator,
                               dn_scale=dn_scale)
    return y[:, :, :h, :w]


def _summary(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def evaluate_synthetic(backbone: nn.Module, config: BackboneConfig, *, ratios=(100, 300), steps: int = 3,
                       n: int = 32, patch: int = 256, noise_model: str = "P+G+r+u", camera: str = "SonyA7S2",
                       batch: int = 8, seed: int = 0, device="cpu", progress: bool = False,
                       schedule: str = "linspace") -> dict:
    """PSNR / SSIM on ``training.synthetic_holdout(n, patch)``, per ratio, on the named inference
    ``schedule``.

    Noise parameters are drawn per sample from ``camera``'s profile (its K range) with
    the ratio fixed, all up front from a seed of their own, so every model sees the same
    noisy inputs and the parameters do not depend on how the synthesis consumes its
    generator (a change of sampler changes only the draws, not the hold-out's cameras).
    Returns ``{ratio: {"psnr", "ssim", "input_psnr", "input_ssim"}}`` (means over samples).
    """
    backbone = backbone.to(device).eval()
    holdout = synthetic_holdout(n, patch, seed)
    table = {}
    for r in ratios:
        # Separate streams: every sample's noise parameters are drawn up front, so they do not
        # depend on how the synthesis consumes its generator; the noisy inputs do not depend on
        # how many steps draw after them.
        all_params = sample_noise_params(n, [camera], model=noise_model, K_range="camera",
                                         ratio_range=(float(r), float(r)),
                                         generator=torch.Generator().manual_seed(seed * 1000 + int(r)), device=device)
        noise_gen = torch.Generator().manual_seed(seed * 1000 + int(r) + 250)
        step_gen = torch.Generator().manual_seed(seed * 1000 + int(r) + 500)
        scores = {"psnr": [], "ssim": [], "input_psnr": [], "input_ssim": []}
        for start in tqdm(range(0, n, batch), desc=f"x{r:g}", disable=not progress):
            clean = normalise_packed(holdout.raw[start : start + batch], holdout.black[start : start + batch],
                                     holdout.white[start : start + batch]).to(device)
            params = all_params.select(slice(start, start + clean.shape[0]))
            first = synthesize_noise(clean, noise_model, params=params, with_photon=config.with_photon,
                                     concat_origin=config.concat_origin, generator=noise_gen)
            y = restore(backbone, config, first, ratio=params.ratio, K=params.K, steps=steps, generator=step_gen,
                        schedule=schedule)
            scores["psnr"] += psnr(y, clean).tolist()
            scores["ssim"] += ssim(y, clean).tolist()
            scores["input_psnr"] += psnr(first[:, :4], clean).tolist()
            scores["input_ssim"] += ssim(first[:, :4], clean).tolist()
        table[float(r)] = {k: _summary(v) for k, v in scores.items()}
    return table


def evaluate_sid(backbone: nn.Module, config: BackboneConfig, pairs, *, steps: int = 3, camera: str = "SonyA7S2",
                 correct_illuminance: bool = False, crop: int | None = 512, seed: int = 0, device="cpu",
                 progress: bool = False, stochastic: bool = True, schedule: str = "linspace") -> dict:
    """The SID protocol on real pairs (``training.SIDPairDataset`` items): centre crop,
    optional illuminance correction (uses the ground truth: evaluation only), per ratio; the
    loop on the named inference ``schedule`` (the model's own).

    K comes from each short exposure's ISO through ``camera``'s profile. Returns
    ``{ratio: {"psnr", "ssim", "input_psnr", "input_ssim", "count"}}``.
    """
    backbone = backbone.to(device).eval()
    profile = load_profile(camera)
    gen = torch.Generator().manual_seed(seed)
    by_ratio: dict[float, dict[str, list]] = {}
    for i in tqdm(range(len(pairs)), desc="SID", disable=not progress):
        item = pairs[i]
        r = float(item["ratio"])
        iso = float(item["iso"])
        if not math.isfinite(iso):
            raise ValueError(f"{item['short']}: no ISO in the list file or the file; cannot compute the gain K")
        K = resolve_gain(iso=iso, camera=profile)
        x = normalise_packed(item["input"][None].to(device), item["black_input"], item["white_input"], ratio=r)
        gt = normalise_packed(item["target"][None].to(device), item["black"], item["white"])
        parts = [x] + ([x / (r * K)] if config.with_photon else []) + ([x] if config.concat_origin else [])
        first = torch.cat(parts, 1)
        y = restore(backbone, config, first, ratio=torch.tensor([r], device=device), K=torch.tensor([K], device=device),
                    steps=steps, generator=gen, stochastic=stochastic, schedule=schedule)
        if correct_illuminance:
            y = illuminance_correction(y, gt)
        if crop:
            y, gt, x = center_crop(y, crop), center_crop(gt, crop), center_crop(x, crop)
        s = by_ratio.setdefault(r, {"psnr": [], "ssim": [], "input_psnr": [], "input_ssim": []})
        s["psnr"] += psnr(y, gt).tolist()
        s["ssim"] += ssim(y, gt).tolist()
        s["input_psnr"] += psnr(x, gt).tolist()
        s["input_ssim"] += ssim(x, gt).tolist()
    return {r: {**{k: _summary(v) for k, v in s.items()}, "count": len(s["psnr"])} for r, s in sorted(by_ratio.items())}


def format_table(table: dict, title: str) -> str:
    """A plain-text table of ``evaluate_*`` results."""
    lines = [title, f"{'ratio':>7} {'PSNR':>8} {'SSIM':>7} {'input PSNR':>11} {'input SSIM':>11}"]
    for r, m in table.items():
        lines.append(f"{r:>7g} {m['psnr']:8.2f} {m['ssim']:7.4f} {m['input_psnr']:11.2f} {m['input_ssim']:11.4f}")
    return "\n".join(lines)
