"""The evaluation of issue 14: models beside classical denoisers on one set of noisy inputs.

For each ratio, every clean hold-out scene gets one noisy input (ELD noise of a camera at a
fixed ISO, or over the camera's gain range), drawn up front from seeds of their own; then,
on exactly those inputs: the noisy input itself, the classical denoisers of
``training.baselines`` (wavelet BayesShrink; BM3D when the ``bm3d`` package is installed,
else skipped with a note) and each model at each step count (and ``"auto"``, the adaptive
count of ``engine.inference.adaptive``). Every output is scored by PSNR / SSIM on the
packed raw after the SID protocol's illuminance correction (SPEC §6: ``alpha = <Y, gt> /
<Y, Y>`` over pixels where ``gt != 1``; evaluation only). Results: a per-image table and
the means, per ratio.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from engine.camera import resolve_gain
from engine.inference.fidelity import DEFAULT_SCALE as DEFAULT_FIDELITY_SCALE
from engine.inference.fidelity import low_frequency_fidelity
from engine.inference.loop import use_draws
from kernels import load_profile, sample_noise_params, synthesize_noise
from kernels._common import DEFAULT_DN_SCALE

from .baselines import BASELINES, bm3d_available, denoise_planes, read_variance_dn
from .evaluate import restore
from .metrics import illuminance_correction, psnr, ssim

__all__ = ["NoisyHoldout", "make_noisy_holdout", "evaluate_methods", "format_results", "holdout_clean"]


SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field")


def skimage_photos(n: int, patch: int, seed: int = 0) -> torch.Tensor:
    """scikit-image's bundled *photographs* unprocessed to raw: evaluation material only
    (nothing in this project trains or tunes on them). The centre ``2 patch`` square of each
    (up to ``n`` of ``SKIMAGE_PHOTOS``; the stereo pair's left view) goes through
    ``training.synthetic.srgb_to_packed_raw`` (inverse sRGB curve, Sony A7S II matrix,
    white balance drawn per image) and is scaled to a mean raw value log-uniform in
    [0.02, 0.2] (drawn per image from ``seed``); float32 ``[n, 4, patch, patch]``."""
    import skimage.data

    from .patches import sample_rng
    from .synthetic import random_wb_gains, srgb_to_packed_raw

    out = []
    for i, name in enumerate(SKIMAGE_PHOTOS[:n]):
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        side = 2 * patch
        if min(img.shape[:2]) < side:
            raise ValueError(f"skimage.data.{name} is smaller than {side} pixels: use a smaller patch")
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        rng = sample_rng(seed, 208, i)
        x = srgb_to_packed_raw(img[top : top + side, left : left + side], wb_gains=random_wb_gains(rng))
        mean = float(np.exp(rng.uniform(np.log(0.02), np.log(0.2))))
        out.append((x * (mean / x.mean().clamp_min(1e-6))).clamp(0, 1))
    return torch.stack(out)


def holdout_clean(kind: str, n: int, patch: int, seed: int = 0) -> torch.Tensor:
    """Clean hold-out scenes, float32 ``[n, 4, patch, patch]``: ``kind`` "photo"
    (``training.holdout``, the default), "procedural" (``training.synthetic_holdout``),
    "textured" (``training.textured_leaves``, images of a seed stream no training bank draws from) or
    "skimage" (scikit-image's photographs, at most 6; evaluation only: :func:`skimage_photos`)."""
    if kind == "skimage":
        return skimage_photos(n, patch, seed)
    if kind == "textured":
        from .textured_leaves import textured_holdout

        return textured_holdout(n, patch, seed)
    if kind == "photo":
        from .holdout import photo_holdout

        return photo_holdout(n, patch, seed).normalised()
    if kind == "procedural":
        from .synthetic import synthetic_holdout

        return synthetic_holdout(n, patch, seed).normalised()
    raise ValueError(f"hold-out kind must be 'photo', 'procedural', 'textured' or 'skimage', got {kind!r}")


@dataclasses.dataclass
class NoisyHoldout:
    """Clean scenes ``[n, 4, p, p]`` and, per ratio, their noisy inputs ``A_T`` ``[n, 4, p, p]``
    (clipped to [0, 1], the network's input), the same draws unclipped (``unclipped``: what the
    engine's fidelity step reads) and the noise parameters (``kernels.NoiseParams``), all
    float32 on the CPU."""

    clean: torch.Tensor
    noisy: dict
    params: dict
    noise_model: str
    camera: str
    unclipped: dict = dataclasses.field(default_factory=dict)


def make_noisy_holdout(clean: torch.Tensor, ratios, *, noise_model: str = "P+G+r+u", camera: str = "SonyA7S2",
                       iso: float | None = 3200, seed: int = 0) -> NoisyHoldout:
    """One noisy input per scene and ratio. K is the camera's gain at ``iso`` (None: log-
    uniform over the camera's range), the read / row noise scales are drawn from its profile
    at that K; parameters and noise come from generators seeded by ``(seed, ratio)`` only."""
    noisy, params, unclipped = {}, {}, {}
    n = clean.shape[0]
    for r in ratios:
        r = float(r)
        if iso is None:
            k_range = "camera"
        else:
            K = resolve_gain(iso=float(iso), camera=load_profile(camera))
            k_range = (K, K)
        p = sample_noise_params(n, [camera], model=noise_model, K_range=k_range, ratio_range=(r, r),
                                generator=torch.Generator().manual_seed(seed * 1000 + int(r)))
        noisy[r] = synthesize_noise(clean, noise_model, params=p,
                                    generator=torch.Generator().manual_seed(seed * 1000 + int(r) + 250))
        # the same draws (same generator, same order) as DN above black, not clipped
        dn = synthesize_noise(clean, noise_model, params=p, output="dn", black_level=0.0,
                              generator=torch.Generator().manual_seed(seed * 1000 + int(r) + 250))
        unclipped[r] = dn * p.ratio.view(-1, 1, 1, 1) / DEFAULT_DN_SCALE
        params[r] = p
    return NoisyHoldout(clean, noisy, params, noise_model, camera, unclipped)


def _scores(y: torch.Tensor, gt: torch.Tensor) -> tuple[list, list]:
    y = illuminance_correction(y, gt)
    return psnr(y, gt).tolist(), ssim(y, gt).tolist()


def _bias(y: torch.Tensor, gt: torch.Tensor) -> list:
    """Mean signed error ``mean(Y - gt)`` per image *before* the illuminance correction
    (normalised units): the brightness drift that the correction would hide."""
    return (y.double() - gt.double()).flatten(1).mean(1).tolist()


def _model_outputs(backbone, config, data: NoisyHoldout, r: float, steps, *, batch: int, seed: int, device,
                   stochastic: bool, policy=None, schedule: str = "linspace"):
    """Outputs ``[n, 4, p, p]`` of one model at ``steps`` (int or "auto": with ``policy``,
    default ``adaptive.DEFAULT_POLICY``) on the named inference ``schedule``, and the step
    counts used."""
    from engine.inference.adaptive import DEFAULT_POLICY, choose_steps

    policy = policy or DEFAULT_POLICY
    p, noisy = data.params[r], data.noisy[r]
    gen = torch.Generator().manual_seed(seed * 1000 + int(r) + 500)
    outs, used = [], []
    for start in range(0, noisy.shape[0], batch):
        a_t = noisy[start : start + batch].to(device)
        ratio, K = p.ratio[start : start + batch].to(device), p.K[start : start + batch].to(device)
        parts = [a_t] + ([a_t / (ratio * K).view(-1, 1, 1, 1)] if config.with_photon else []) + \
                ([a_t] if config.concat_origin else [])
        first = torch.cat(parts, 1)
        counts = [steps] * a_t.shape[0] if steps != "auto" else choose_steps(a_t, ratio, K, policy)
        y = torch.empty_like(a_t)
        for n in sorted(set(counts)):  # frames with the same count run together
            idx = [i for i, c in enumerate(counts) if c == n]
            y[idx] = restore(backbone, config, first[idx], ratio=ratio[idx], K=K[idx], steps=int(n),
                             generator=gen, stochastic=stochastic, schedule=schedule)
        outs.append(y.cpu())
        used += [int(c) for c in counts]
    return torch.cat(outs), used


def evaluate_methods(data: NoisyHoldout, models: dict, *, steps=(1, 2, 3, 5), baselines=BASELINES, batch: int = 4,
                     seed: int = 0, device="cpu", stochastic: bool | None = None, progress=None,
                     baseline_cache=None, fidelity_scale: int | None = DEFAULT_FIDELITY_SCALE) -> dict:
    """Scores of every method on ``data``.

    Args:
        models: ``{name: (backbone, BackboneConfig[, AutoStepsPolicy[, photon mode[, schedule]]])}``;
            each runs at every entry of ``steps`` (ints, or "auto" with the model's policy, default
            ``DEFAULT_POLICY``) on its schedule (default "linspace").
        stochastic: True: Poisson draws between the steps, False: their means, for every model;
            None: each model's photon mode ("draws" when its tuple has none), as a ``Pipeline``
            made from its checkpoint would run it.
        baselines: classical methods to include ("wavelet", "bm3d"); BM3D is skipped with a
            note when the package is missing.
        baseline_cache: optional dict (e.g. loaded from JSON) of baseline scores keyed by
            ``key(ratio, method)``; filled in place, so that slow BM3D runs once per hold-out.
        fidelity_scale: the models' outputs go through the engine's low-frequency fidelity
            step at this scale, as ``Pipeline`` runs them by default (None: not).
        progress: optional callable(str) for progress lines.

    Returns:
        ``{"ratios": {r: {method: {"psnr": [n], "ssim": [n], "steps": [n] (models)}}},
        "notes": [str]}``; methods are "noisy input", the baselines and ``f"{name} {steps}"``;
        models (and the input) also carry "bias": the mean signed error per image before the
        illuminance correction.
    """
    notes = []
    baselines = list(baselines)
    if "bm3d" in baselines and not bm3d_available():
        baselines.remove("bm3d")
        notes.append("BM3D skipped: the optional 'bm3d' package is not installed (pip install -e \".[baselines]\")")
    out = {}
    for r, noisy in data.noisy.items():
        gt, p = data.clean, data.params[r]
        table = {}
        table["noisy input"] = {**dict(zip(("psnr", "ssim"), _scores(noisy, gt))), "bias": _bias(noisy, gt)}
        for method in baselines:
            key = f"{data.noise_model}|{data.camera}|{r:g}|{method}|{_fingerprint(noisy)}"
            if baseline_cache is not None and key in baseline_cache:
                table[method] = baseline_cache[key]
                continue
            if progress:
                progress(f"x{r:g}: {method} on {noisy.shape[0]} frames")
            ys = []
            for i in range(noisy.shape[0]):
                rv = read_variance_dn(data.noise_model, float(p.sigma_g[i]), float(p.sigma_TL[i]), float(p.lam[i]),
                                      float(p.sigma_r[i]))
                ys.append(denoise_planes(noisy[i], method, ratio=float(p.ratio[i]), K=float(p.K[i]), read_var_dn=rv))
            table[method] = dict(zip(("psnr", "ssim"), _scores(torch.stack(ys), gt)))
            if baseline_cache is not None:
                baseline_cache[key] = table[method]
        for name, (backbone, config, *extra) in models.items():
            policy = extra[0] if extra else None
            draws = use_draws(stochastic, extra[1] if len(extra) > 1 else "draws")
            schedule = extra[2] if len(extra) > 2 else "linspace"
            backbone = backbone.to(device).eval()
            for n in steps:
                if progress:
                    progress(f"x{r:g}: {name}, {n} steps")
                y, used = _model_outputs(backbone, config, data, r, n, batch=batch, seed=seed, device=device,
                                         stochastic=draws, policy=policy, schedule=schedule)
                if fidelity_scale is not None:
                    y = low_frequency_fidelity(y, data.unclipped[r], fidelity_scale)
                ps, ss = _scores(y, gt)
                table[f"{name} {n}"] = {"psnr": ps, "ssim": ss, "steps": used, "bias": _bias(y, gt)}
        out[r] = table
    return {"ratios": out, "notes": notes}


def _fingerprint(x: torch.Tensor) -> str:
    """A short content hash of the noisy inputs (the baseline cache's key)."""
    import hashlib

    return hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()[:16]


def _mean(v) -> float:
    return float(np.mean(v)) if len(v) else math.nan


def format_results(results: dict, *, per_image: bool = True) -> str:
    """Plain-text tables: per ratio, the means (PSNR dB / SSIM, mean network evaluations
    of the models, mean signed error before the correction) and, with ``per_image``, one PSNR column per method."""
    lines = [f"note: {n}" for n in results["notes"]]
    for r, table in results["ratios"].items():
        lines.append(f"\nx{float(r):g}: mean over {len(next(iter(table.values()))['psnr'])} images "
                     "(illuminance-corrected, packed raw)")
        lines.append(f"{'method':<28} {'PSNR':>7} {'SSIM':>7} {'evals':>6} {'bias':>9}")
        for m, s in table.items():
            ev = f"{_mean(s['steps']):6.2f}" if "steps" in s else f"{'':>6}"
            bias = f"{_mean(s['bias']):+9.5f}" if "bias" in s else f"{'':>9}"
            lines.append(f"{m:<28} {_mean(s['psnr']):7.2f} {_mean(s['ssim']):7.4f} {ev} {bias}")
        if per_image:
            methods = list(table)
            lines.append("per image PSNR: " + " | ".join(f"[{j}] {m}" for j, m in enumerate(methods)))
            lines.append(f"{'img':>4} " + " ".join(f"{'[' + str(j) + ']':>7}" for j in range(len(methods))))
            for i in range(len(table[methods[0]]["psnr"])):
                lines.append(f"{i:>4} " + " ".join(f"{table[m]['psnr'][i]:7.2f}" for m in methods))
    return "\n".join(lines)


def load_models(paths_and_names) -> dict:
    """``[(name, checkpoint path)]`` -> ``{name: (backbone, config, auto-steps policy, photon mode,
    schedule)}`` (engine checkpoints; the policy, the photon mode and the inference schedule from the
    checkpoint's metadata, else the defaults: ``DEFAULT_POLICY``, "draws", "linspace")."""
    from engine.inference.pipeline import inference_settings
    from engine.models.checkpoint import load_checkpoint

    models = {}
    for name, path in paths_and_names:
        model, config, meta = load_checkpoint(path)
        models[name] = (model, config, *inference_settings(meta, path))
    return models
