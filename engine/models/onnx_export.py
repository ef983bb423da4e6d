"""Our models as ONNX graphs, for runtimes without Python of ours (ONNX Runtime with its CPU,
CoreML or DirectML providers; OpenVINO; darktable-style plug-ins).

Two graphs:

``export_backbone(net, path)``
    The backbone alone (any checkpoint we load: the public ``{'netG': ...}`` format or ours,
    UNet or NAFNet): fp32, one input ``input`` ``[N, C, H, W]`` (C = 4 / 8 / 12: state, photon
    channel, origin; H, W multiples of 16) and one output ``output`` ``[N, 9 or 4, H, W]``,
    with N, H and W dynamic. The engine's CPU backends (ONNX Runtime, OpenVINO) run this.

``export_loop(net, config, path, steps=..., schedule=...)``
    The whole multi-step loop of a model in the Poisson-means photon mode (the shipped model's
    own mode; deterministic, so a graph can hold it): inputs ``raw`` ``[N, 4, h, w]`` (the packed
    R, G1, B, G2 planes, black-subtracted and divided by ``white - black``, not yet amplified),
    ``ratio`` ``[N]`` (the exposure ratio) and ``gain`` ``[N]`` (K in DN per photo-electron, as
    the engine's ``K``); output ``output`` ``[N, 4, h, w]``, the enhanced packed raw in [0, 1]
    (linear, the same units as ``Pipeline(...)(...).raw``). Inside: the first network input as
    ``kernels.pack_bayer`` makes it, reflect padding to multiples of 16, ``steps`` network
    evaluations at the model's schedule (``linspace(1, ratio, steps + 1)``, or
    ``ratio ** linspace(0, 1, steps + 1)`` for "geometric") with the means-mode exposure step between
    them (``kernels.exposure_step_reference``'s arithmetic), the crop back, and the engine's
    low-frequency fidelity step (``engine.inference.fidelity``; ``fidelity_scale=None``: without). h, w >= 2 and
    N any; one graph serves every frame size (h, w >= 16: reflect padding needs the pad
    smaller than the size).

Both are exported with opset 17 (``OPSET``) by PyTorch's TorchScript-based exporter, with N,
H and W dynamic; the loop's padding and crop are computed from the input's shape inside the
graph.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from kernels._common import DEFAULT_DN_SCALE

from ..inference.fidelity import DEFAULT_SCALE as DEFAULT_FIDELITY_SCALE
from ..inference.fidelity import SENSOR_CLIP, near_white_weight
from ..inference.loop import SCHEDULES
from .backbones import BackboneConfig

OPSET = 17
SIZE_MULTIPLE = 16


def _example_input(config: BackboneConfig, h: int = 64, w: int = 64) -> torch.Tensor:
    return torch.rand(1, config.in_channels, h, w)


def export_backbone(net: nn.Module, config: BackboneConfig, path: str | os.PathLike | None = None) -> bytes:
    """Write the backbone as ONNX to ``path`` (when given) and return the model's bytes."""
    import io

    module = _Float32(net)
    buffer = io.BytesIO()
    with _quiet_tracing():
        torch.onnx.export(module, (_example_input(config),), buffer, input_names=["input"], output_names=["output"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H", 3: "W"}})
    data = buffer.getvalue()
    if path is not None:
        _write(path, data)
    return data


@contextlib.contextmanager
def _quiet_tracing():
    """The backbones check their input's shape in Python (a multiple of 16): while tracing,
    PyTorch warns that such a check becomes a constant. The graphs take any such shape (the
    axes are dynamic), so the warnings say nothing to the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


class _Float32(nn.Module):
    """A copy of ``net`` in fp32, evaluation mode, without gradients."""

    def __init__(self, net: nn.Module):
        super().__init__()
        import copy

        self.net = copy.deepcopy(net).float().eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.net(x)


class MeansLoop(nn.Module):
    """The multi-step loop in the Poisson-means mode as one module (the graph of
    ``export_loop``; see the module docstring for inputs and output).

    Matches ``engine.inference.loop.run_exposure_diffusion(..., stochastic=False,
    accumulate=False)`` on ``kernels.pack_bayer``'s first input to float32 rounding.
    """

    def __init__(self, net: nn.Module, config: BackboneConfig, steps: int, dn_scale: float = DEFAULT_DN_SCALE,
                 fidelity_scale: int | None = DEFAULT_FIDELITY_SCALE, schedule: str = "linspace"):
        super().__init__()
        if not 1 <= int(steps) <= 100:
            raise ValueError(f"steps must be an integer in [1, 100], got {steps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r:.80}")
        self.schedule = schedule
        self.fidelity_scale = None if fidelity_scale is None else int(fidelity_scale)
        self.net = _Float32(net)
        self.steps, self.dn_scale = int(steps), float(dn_scale)
        self.with_photon, self.concat_origin = bool(config.with_photon), bool(config.concat_origin)
        self.head9 = config.out_channels == 9

    def forward(self, raw: torch.Tensor, ratio: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        h, w = raw.shape[2], raw.shape[3]
        r = ratio.view(-1, 1, 1, 1)
        rk = r * gain.view(-1, 1, 1, 1)
        origin = (raw * r).clamp(0.0, 1.0)  # A_T, as pack_bayer
        origin = _reflect_pad_to_multiple(_reflect_pad_to_multiple(origin, 2), 3)
        state = origin
        x = self._network_input(state, origin, 1.0 / rk)
        estimate = origin
        for i in range(self.steps):
            out = self.net(x)
            if self.head9:
                m = torch.sigmoid(out[:, :1])
                estimate = out[:, 1:5].clamp(0, 1) * m + (out[:, 5:9] + state).clamp(0, 1) * (1 - m)
            else:
                estimate = out.clamp(0, 1)
            if i == self.steps - 1:
                break
            # exposure_schedule's rho_{i+1}; means mode: P = mu exactly
            if self.schedule == "geometric":
                rho_next = torch.pow(r, (i + 1) / self.steps)
            else:
                rho_next = 1.0 + (r - 1.0) * ((i + 1) / self.steps)
            mu = (rho_next - 1.0) * self.dn_scale * estimate.clamp(0, 1) / rk
            state = (origin + mu * rk / self.dn_scale) / rho_next
            x = self._network_input(state, origin, rho_next / rk)
        estimate = estimate[:, :, :h, :w]
        if self.fidelity_scale is not None:  # as the engine's Pipeline (engine.inference.fidelity)
            noisy = raw * r
            keep = near_white_weight(estimate) * (raw < SENSOR_CLIP).float()
            shift = _low_pass(keep * (noisy - estimate), self.fidelity_scale) / \
                _low_pass(keep, self.fidelity_scale).clamp_min(1e-3)
            estimate = (estimate + keep * shift).clamp(0.0, 1.0)
        return estimate

    def _network_input(self, state, origin, photon_factor):
        parts = [state]
        if self.with_photon:
            parts.append(state * photon_factor)
        if self.concat_origin:
            parts.append(origin)
        return torch.cat(parts, 1)


def _reflect_pad_to_multiple(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Reflect-pad the end of ``dim`` to a multiple of 16, as ``pad_to_multiple`` does, written
    with index arithmetic on the size (a Gather in the graph) so the exported graph pads any
    frame size, not the size it was traced at. Needs the pad smaller than the size (>= 16)."""
    size = torch.tensor(x.shape[dim]) if not torch.jit.is_tracing() else torch._shape_as_tensor(x)[dim]
    pad = (SIZE_MULTIPLE - size % SIZE_MULTIPLE) % SIZE_MULTIPLE
    index = torch.cat([torch.arange(size), size - 2 - torch.arange(pad)])
    return x.index_select(dim, index)


def _replicate_pad_to_multiple(x: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    """Replicate-pad the end of ``dim`` to a multiple of ``multiple`` (``F.pad(mode="replicate")``
    written as a Gather on indices computed from the size, like ``_reflect_pad_to_multiple``)."""
    size = torch.tensor(x.shape[dim]) if not torch.jit.is_tracing() else torch._shape_as_tensor(x)[dim]
    pad = (multiple - size % multiple) % multiple
    index = torch.cat([torch.arange(size), torch.zeros_like(torch.arange(pad)) + size - 1])
    return x.index_select(dim, index)


def _low_pass(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``engine.inference.fidelity.low_pass`` in a form the exported graph keeps general."""
    h, w = x.shape[2], x.shape[3]
    padded = _replicate_pad_to_multiple(_replicate_pad_to_multiple(x, 2, scale), 3, scale)
    blocks = F.avg_pool2d(padded, scale)
    return F.interpolate(blocks, scale_factor=scale, mode="bilinear", align_corners=False)[:, :, :h, :w]


def export_loop(net: nn.Module, config: BackboneConfig, path: str | os.PathLike | None = None, *, steps: int = 3,
                dn_scale: float = DEFAULT_DN_SCALE, fidelity_scale: int | None = DEFAULT_FIDELITY_SCALE,
                schedule: str = "linspace") -> bytes:
    """Write the whole means-mode loop on the named inference ``schedule`` (the model's own:
    ``meta["schedule"]``) as ONNX to ``path`` (when given); return its bytes."""
    import io

    loop = MeansLoop(net, config, steps, dn_scale, fidelity_scale, schedule).eval()
    raw = torch.rand(1, 4, 40, 56) * 0.01  # a size that needs padding: the traced graph must pad
    args = (raw, torch.tensor([100.0]), torch.tensor([2.0]))
    buffer = io.BytesIO()
    with _quiet_tracing():
        torch.onnx.export(loop, args, buffer, input_names=["raw", "ratio", "gain"], output_names=["output"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={"raw": {0: "N", 2: "h", 3: "w"}, "ratio": {0: "N"}, "gain": {0: "N"},
                                        "output": {0: "N", 2: "h", 3: "w"}})
    data = buffer.getvalue()
    if path is not None:
        _write(path, data)
    return data


def _write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the previous file, if any, stays until it is whole)."""
    from ..io.atomic import atomic_path

    with atomic_path(os.fspath(path), overwrite=True) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
