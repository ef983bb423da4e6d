"""The SID UNet run by our fused Triton kernels (``kernels.conv``, ``kernels.head_step``).

``FusedUNet(unet)`` re-lays out the weights of any ``engine.models.unet.UNet`` (public
checkpoints or ours, any widths and channel counts) once, and runs its forward pass as
23 fused kernels instead of PyTorch's ~60 ops:

- each level's first 3x3 convolution: bias + LeakyReLU in the epilogue; the first
  layer's 4 / 8 / 12 input channels as one flat K over taps and channels (two taps of 8
  channels per K block of 16);
- each encoder level's second convolution also writes the 2x2 max-pooled tensor the
  next level reads (no ``max_pool2d`` pass);
- the decoder's transposed convolutions as GEMMs with strided stores and bias; the
  convolution after each reads the up-sampled tensor and the skip as one concatenated
  input (no ``cat``);
- the final 1x1 convolution is not run here: ``__call__`` returns ``HeadFeatures``
  (the last decoder features and the re-laid-out head) and the multi-step loop hands
  them to ``kernels.head_step.head_exposure_step``, which computes the head in
  registers inside the exposure step.

Activations are fp16 (or bf16) NHWC; ``FusedUNet.forward_reference_head`` gives the
plain ``[B, 9 or 4, h, w]`` output for comparisons. Inference only.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from kernels.conv import conv3x3, precompile, prepare_conv3x3, prepare_upconv2x2, recorded_launches, upconv2x2
from kernels.head_step import HeadWeights, head_output_reference, prepare_head

from .unet import UNet, check_backbone_input

DTYPES = (torch.float16, torch.bfloat16)


class HeadFeatures(NamedTuple):
    """A backbone output whose final 1x1 head is left to the exposure step:
    ``features`` ``[B, C, h, w]`` (channels_last) and ``head`` (``prepare_head``)."""

    features: torch.Tensor
    head: HeadWeights


class LayerCall(NamedTuple):
    """One kernel launch of a forward pass: ``run()`` repeats it on the same tensors;
    ``macs`` multiply-accumulates; ``bytes`` read (inputs, weights) + written (outputs)."""

    name: str
    run: object
    macs: int
    bytes: int


def _cost(op, x, weights, out, skip) -> tuple[int, int]:
    outs = out if isinstance(out, tuple) else (out,)
    moved = sum(t.numel() * t.element_size() for t in (x, skip, *outs) if t is not None)
    moved += weights.weight.numel() * weights.matrix.element_size()  # the weights read (not the padding)
    c_in = sum(weights.in_channels)
    taps = 9 if op is conv3x3 else 1  # a transposed 2x2 conv: one tap per output pixel
    return outs[0][:, :1].numel() * c_in * weights.out_channels * taps, moved


class FusedUNet:
    """Callable like the UNet it was built from, on fp16 / bf16 channels_last inputs.

    Args:
        unet: the network (its weights are copied and re-laid out; the module is not kept).
        dtype: activation dtype, torch.float16 (default) or torch.bfloat16.
        backend: "auto" (Triton on CUDA, the kernels' PyTorch references on CPU) or
            "triton" (forced: the Triton interpreter in CPU tests).

    Returns from ``__call__``: ``HeadFeatures``; ``forward_reference_head`` returns the
    head's output as a tensor (float32).
    """

    multiple = UNet.multiple

    def __init__(self, unet: UNet, dtype: torch.dtype = torch.float16, backend: str = "auto"):
        if not isinstance(unet, UNet):
            raise TypeError(f"FusedUNet runs engine.models.unet.UNet, got {type(unet).__name__}")
        if dtype not in DTYPES:
            raise TypeError(f"dtype must be float16 or bfloat16, got {dtype}")
        self.in_channels, self.out_channels, self.widths = unet.in_channels, unet.out_channels, unet.widths
        self.dtype, self.backend = dtype, backend

        def conv(name: str, skip: int = 0):
            layer = getattr(unet, name)
            return prepare_conv3x3(layer.weight, layer.bias, skip_channels=skip, dtype=dtype)

        def up(name: str):
            layer = getattr(unet, name)
            return prepare_upconv2x2(layer.weight, layer.bias, dtype=dtype)

        with torch.no_grad():
            self.encoder = [(conv(f"conv{i}_1"), conv(f"conv{i}_2")) for i in range(1, 6)]
            # decoder level k (6..9): up-conv, then conv_1 reading [up, skip] as one input
            self.decoder = [(up(f"upv{k}"), conv(f"conv{k}_1", skip=self.widths[9 - k]), conv(f"conv{k}_2"))
                            for k in range(6, 10)]
            self.head = prepare_head(unet.conv10_1.weight, unet.conv10_1.bias, dtype=dtype)
        self._precompiled = False

    @property
    def device(self) -> torch.device:
        return self.head.matrix.device

    def features(self, x: torch.Tensor, record: list | None = None) -> torch.Tensor:
        """The last decoder features ``[B, widths[0], h, w]`` (before the 1x1 head).

        record: a list that receives one ``LayerCall`` per kernel launch (the bench's
        per-layer table), or None.
        """
        check_backbone_input(x, self.in_channels, self.multiple, "FusedUNet")
        if x.dtype != self.dtype:
            raise TypeError(f"FusedUNet was built for {self.dtype} inputs, got {x.dtype}")

        def run(name, op, inp, weights, **kw):
            out = op(inp, weights, backend=self.backend, **kw)
            if record is not None:
                record.append(LayerCall(name, lambda: op(inp, weights, backend=self.backend, **kw),
                                        *_cost(op, inp, weights, out, kw.get("skip"))))
            return out

        skips = []
        h = x
        for level, (first, second) in enumerate(self.encoder, start=1):
            h = run(f"conv{level}_1", conv3x3, h, first)
            if level < 5:
                skip, h = run(f"conv{level}_2 + pool", conv3x3, h, second, pool=True)
                skips.append(skip)
            else:
                h = run(f"conv{level}_2", conv3x3, h, second)
        for k, ((upv, first, second), skip) in enumerate(zip(self.decoder, reversed(skips)), start=6):
            up = run(f"upv{k}", upconv2x2, h, upv)
            h = run(f"conv{k}_1 (+ skip)", conv3x3, up, first, skip=skip)
            h = run(f"conv{k}_2", conv3x3, h, second)
        return h

    def precompile(self, x: torch.Tensor) -> int:
        """Compile every kernel configuration the autotuner will try for this network, in
        parallel (``kernels.conv.precompile``); frame sizes are not specialised on, so one
        input shape covers every shape. Returns the number of compilations requested."""
        with recorded_launches() as launches:
            self.features(x)
        self._precompiled = True
        return precompile(launches)

    def __call__(self, x: torch.Tensor) -> HeadFeatures:
        if x.is_cuda and not self._precompiled:
            self.precompile(x)
        return HeadFeatures(self.features(x), self.head)

    def forward_reference_head(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output ``[B, out_channels, h, w]`` (float32): the fused features
        through the head in plain PyTorch (for comparisons with ``UNet.forward``)."""
        return head_output_reference(self.features(x), self.head)
