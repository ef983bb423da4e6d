"""The baselines the bench measures against, written plainly on purpose.

``EagerLoop``: the ExposureDiffusion inference loop (SPEC §4) as a researcher would write
it in plain PyTorch: pack with ``kernels.pack_bayer_reference``, the backbone in fp32
(contiguous memory, eager), ``kernels.exposure_step_reference`` (torch ops, torch.poisson)
in a Python loop. No fused kernels, no CUDA graphs, no reduced precision. It computes
what ``engine.Pipeline`` computes (same padding, schedule, update form and crop), so in
deterministic mode (``stochastic=False``) the two outputs can be compared by PSNR.

``numpy_eld_synthesis``: the ELD ``P+G+r+u`` synthesis as the public data loaders run it,
one sample at a time with numpy / scipy (single-threaded). ``NumpyNoisyPatches``: a
``torch.utils.data.Dataset`` doing that per item (flips / transpose, per-sample
parameters, the numpy synthesis) for a DataLoader with CPU worker processes: the
"CPU data-loader feed" of the training bench.
"""
from __future__ import annotations

import copy

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from engine.models.backbones import BackboneConfig
from engine.camera import resolve_gain
from engine.io.raw import RawFrame, read_raw
import kernels
from kernels import DEFAULT_DN_SCALE, exposure_step_reference, pack_bayer_reference

SIZE_MULTIPLE = 16  # four 2x2 poolings in the UNet


class EagerLoop:
    """Plain fp32 eager ExposureDiffusion on one frame, with the engine's last stage (the
    low-frequency fidelity step, ``fidelity_scale``; None: without), written out in plain ops.

    Args:
        backbone: the network; a private fp32, contiguous copy is kept on ``device``.
        config: its ``BackboneConfig`` (photon / origin channels).
        device: where to run.
        dn_scale: normalised -> DN scale of the photon maths (as the engine's default).
    """

    def __init__(self, backbone: nn.Module, config: BackboneConfig, device, dn_scale: float = DEFAULT_DN_SCALE,
                 fidelity_scale: int | None = 32):
        self.fidelity_scale = fidelity_scale  # the engine's default last stage (engine.inference.fidelity)
        self.device = torch.device(device)
        self.config = config
        self.dn_scale = float(dn_scale)
        self.net = copy.deepcopy(backbone).to(device=self.device, dtype=torch.float32,
                                              memory_format=torch.contiguous_format).eval()

    def __call__(self, source, *, ratio: float, steps: int = 3, K: float | None = None, stochastic: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Enhance a ``RawFrame`` or a raw file path; returns float32 ``[4, h, w]`` in [0, 1]."""
        frame = source if isinstance(source, RawFrame) else read_raw(source)
        if K is None:
            K = resolve_gain(iso=frame.iso, make=frame.make, model=frame.model, source=str(frame.source))
        cfg = self.config
        with torch.inference_mode():
            cfa = frame.cfa.to(self.device)[None]
            x = pack_bayer_reference(cfa, frame.pattern, torch.tensor([frame.black_level], device=self.device),
                                     float(frame.white_level), float(ratio), K=float(K), with_photon=cfg.with_photon,
                                     concat_origin=cfg.concat_origin, out_dtype=torch.float32)
            h, w = x.shape[-2:]
            ph, pw = (-h) % SIZE_MULTIPLE, (-w) % SIZE_MULTIPLE
            if ph or pw:  # bottom / right, reflected (edge-replicated when the frame is tiny)
                x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
            rho = torch.linspace(1.0, float(ratio), steps + 1).tolist()
            origin = x[:, :4]
            state = origin
            estimate = None
            for i in range(steps):
                out = self.net(x)
                last = i == steps - 1
                estimate, x = exposure_step_reference(
                    out, state, origin, ratio=float(ratio), K=float(K), rho=rho[i],
                    rho_next=None if last else rho[i + 1], stochastic=stochastic, generator=generator,
                    with_photon=cfg.with_photon, concat_origin=cfg.concat_origin, dn_scale=self.dn_scale,
                    out_dtype=torch.float32)
                if not last:
                    state = x[:, :4]
            estimate = estimate[:, :, :h, :w]
            if self.fidelity_scale is not None:  # written out plainly: the local means of the unclipped frame
                noisy = pack_bayer_reference(cfa, frame.pattern, torch.tensor([frame.black_level], device=self.device),
                                             float(frame.white_level), float(ratio), clip=False)
                # the near-white ramp: weight 1 below 0.95 of white, 0 from 0.99, linear between
                keep = ((0.99 - estimate) / 0.04).clamp(0, 1) * (noisy < 0.999 * float(ratio)).float()
                s = self.fidelity_scale
                hp, wp = (-h) % s, (-w) % s

                def box(t):  # box means over s x s, bilinearly back to full size
                    blocks = F.avg_pool2d(F.pad(t, (0, wp, 0, hp), mode="replicate"), s)
                    return F.interpolate(blocks, scale_factor=s, mode="bilinear", align_corners=False)[..., :h, :w]

                estimate = (estimate + keep * box(keep * (noisy - estimate)) / box(keep).clamp_min(1e-3)).clamp(0, 1)
            return estimate[0]


def numpy_eld_synthesis(clean: np.ndarray, params: list[dict], dn_scale: float, rng: np.random.Generator) -> np.ndarray:
    """Per-sample numpy/scipy ELD P+G+r+u synthesis, as the public data loaders do it.

    clean: [B, 4, h, w] float32 normalised packed patches; ``params``: one dict per sample
    (ratio, K, sigma_TL, lam, sigma_r); one Python iteration per sample.
    Returns the clipped, amplified noisy network input [B, 4, h, w] float32.
    """
    out = np.empty_like(clean)
    for b, p in enumerate(params):
        y = clean[b] * dn_scale / p["ratio"]
        z = rng.poisson(y / p["K"]).astype(np.float32) * p["K"]
        z += scipy.stats.tukeylambda.rvs(p["lam"], scale=p["sigma_TL"], size=y.shape, random_state=rng).astype(np.float32)
        # one row value per CFA row: planes (0, 1) share one, planes (2, 3) the other
        rows = rng.standard_normal((2, 1, y.shape[1], 1)).astype(np.float32) * p["sigma_r"]
        z += np.repeat(rows, 2, axis=0).reshape(4, y.shape[1], 1)
        z += rng.uniform(-0.5, 0.5, size=y.shape).astype(np.float32)
        out[b] = np.clip(z * p["ratio"] / dn_scale, 0, 1)
    return out


class NumpyNoisyPatches(torch.utils.data.Dataset):
    """Training items made on the CPU, one per ``__getitem__``, as the public loaders make them.

    ``raw``: uint16 ``[N, 4, p, p]`` clean packed patches (DN), ``black`` ``[4]`` and
    ``white`` DN. An item: random flips / transpose (numpy), per-sample ELD parameters
    (``kernels.sample_noise_params``, a handful of scalars), the numpy/scipy ``P+G+r+u``
    synthesis, the photon channel when ``with_photon``. Returns ``(first_input float32
    [C, p, p], clean float32 [4, p, p], ratio, K)``. Items are a function of the index.
    """

    def __init__(self, raw: np.ndarray, black: np.ndarray, white: float, *, with_photon: bool = True, seed: int = 0):
        self.raw, self.black, self.white = raw, np.asarray(black, np.float32), float(white)
        self.with_photon, self.seed = with_photon, seed

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int):
        rng = np.random.default_rng((self.seed, index))
        x = (self.raw[index].astype(np.float32) - self.black[:, None, None]) / (self.white - self.black[:, None, None])
        if rng.random() < 0.5:
            x = x[:, ::-1]
        if rng.random() < 0.5:
            x = x[:, :, ::-1]
        if rng.random() < 0.5:
            x = x.transpose(0, 2, 1)[[0, 3, 2, 1]]  # transposed scene: G1 and G2 swap
        clean = np.ascontiguousarray(np.clip(x, 0, 1))
        params = kernels.sample_noise_params(1, model="P+G+r+u", generator=torch.Generator().manual_seed(
            int(rng.integers(2**62))))
        p = {k: float(getattr(params, k)[0]) for k in ("ratio", "K", "sigma_TL", "lam", "sigma_r")}
        noisy = numpy_eld_synthesis(clean[None], [p], DEFAULT_DN_SCALE, rng)[0]
        planes = [noisy, noisy / (p["ratio"] * p["K"])] if self.with_photon else [noisy]
        return (torch.from_numpy(np.concatenate(planes)), torch.from_numpy(clean),
                torch.tensor(p["ratio"], dtype=torch.float32), torch.tensor(p["K"], dtype=torch.float32))
