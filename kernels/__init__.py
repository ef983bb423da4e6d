"""Fused Triton ops of ExposureDiffusion, each with a plain-PyTorch reference.

Every op dispatches on the device of its data (``backend="auto"``): CUDA tensors run the
Triton kernel, CPU tensors the reference; ``backend="triton"`` / ``"torch"`` force one.
Shapes use B = batch, H x W = Bayer sites, h x w = H/2 x W/2 packed pixels. Units:
DN (digital numbers of the sensor), normalised (0 = black, 1 = white level), photons.

Devices: outputs are on the data's device. ``generator=`` may be a ``torch.Generator`` on
any device (a CPU one with CUDA data is the usual case): it supplies keys, the draws are
made on the data's device, and the same generator state gives the same draws there.
Per-sample parameter tensors must be on the data's device; render_srgb's host colour
constants are copied to it. A bad input is refused with the same message on every device.

Ops:
    pack_bayer(cfa, pattern, black_level, white_level, ratio=1.0, *, K=None,
               with_photon=False, concat_origin=False, out_dtype=float32) -> [B, 4|8|12, h, w]
        uint16 (or int32/float) CFA [H, W] / [B, H, W] in DN -> packed R, G1, B, G2,
        normalised, amplified by ratio, clipped to [0, 1]; optionally the first network
        input (state, photon channel A_T / (r K), origin).
    unpack_bayer(packed, pattern, black_level, white_level, *, ratio=1.0, to_dn=True)
        -> [B, H, W] the exact inverse, uint16 DN in the sensor's own pattern.
    poisson(mu, generator=None) -> float32 counts, exact Poisson for means in [0, 8e6].
    synthesize_noise(clean, model="P+g", *, ratio, K, sigma_g, sigma_TL, lam, sigma_r, ...)
        -> [B, 4|8|12, h, w] the ELD noise model from clean normalised [B, 4, h, w] to the
        clipped, amplified noisy network input (or DN with output="dn").
    sample_noise_params(batch, cameras=None, ...) -> NoiseParams of float32 [B] tensors.
    load_profile(name_or_path) -> CameraProfile (ISO -> K, noise fits); available_cameras().
    exposure_step(net_out, state, origin, *, ratio, K, rho, rho_next=None, stochastic=True)
        -> (estimate float32 [B, 4, h, w], next network input [B, 4|8|12, h, w] or None).
    render_srgb(packed, pattern, wb, ccm, *, out_dtype=uint8) -> [B, H, W, 3] sRGB.
    normalise_dihedral(raw, black, white, flags, *, ratio=1.0) -> float32 [B, 4, h, w]
        uint16 DN packed batch -> normalised, each sample flipped / transposed by its
        flags [B, 3] (training augmentation in one pass).
"""
from ._common import BACKENDS, DEFAULT_DN_SCALE, value_checks_disabled
from .dihedral import normalise_dihedral, normalise_dihedral_reference
from .bayer import pack_bayer, pack_bayer_reference, parse_pattern, unpack_bayer, unpack_bayer_reference
from .exposure import exposure_step, exposure_step_reference
from .isp import render_srgb, render_srgb_reference
from .noise import synthesize_noise, synthesize_noise_reference
from .noise_model import NoiseModel, NoiseParams, parse_noise_model
from .poisson import poisson, poisson_reference
from .profiles import CameraProfile, available_cameras, load_profile, load_profiles, sample_noise_params

__all__ = [
    "BACKENDS", "DEFAULT_DN_SCALE", "value_checks_disabled",
    "pack_bayer", "pack_bayer_reference", "parse_pattern", "unpack_bayer", "unpack_bayer_reference",
    "exposure_step", "exposure_step_reference",
    "render_srgb", "render_srgb_reference",
    "normalise_dihedral", "normalise_dihedral_reference",
    "NoiseModel", "parse_noise_model", "synthesize_noise", "synthesize_noise_reference",
    "poisson", "poisson_reference",
    "CameraProfile", "NoiseParams", "available_cameras", "load_profile", "load_profiles", "sample_noise_params",
]
