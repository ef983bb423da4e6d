"""CUDA-graph capture of the whole multi-step loop, replayed per frame.

One graph per (input shape, dtype, steps, options). Capture records the backbone and
every fused step on static buffers; a replay first copies the new input, ratio, K and
schedule into them and writes fresh Philox keys (one per step) into a device tensor the
kernels read, so every replay draws new noise, or the same noise for a fixed seed.
The kernels' value checks synchronise with the host, which capture forbids: inputs are
validated before capture and the capture runs under ``kernels.value_checks_disabled``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from kernels import value_checks_disabled
from kernels._common import philox_seed

from .loop import run_exposure_diffusion


@dataclasses.dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    first_input: torch.Tensor
    ratio: torch.Tensor
    K: torch.Tensor
    rho: torch.Tensor
    seeds: torch.Tensor
    estimate: torch.Tensor


class GraphedDiffusion:
    """Runs ``run_exposure_diffusion`` through captured CUDA graphs (CUDA tensors only).

    ``loop_kwargs`` are the static options of the loop (with_photon, concat_origin,
    stochastic, accumulate, dn_scale, next_dtype, memory_format); they are part of the
    graph, so a change of them needs a new ``GraphedDiffusion``.
    """

    def __init__(self, backbone: Callable[[torch.Tensor], torch.Tensor], warmup: int = 2, **loop_kwargs):
        self.backbone = backbone
        self.loop_kwargs = loop_kwargs
        self.warmup = warmup
        self._graphs: dict[tuple, _Captured] = {}
        self._pool = None  # one memory pool shared by all graphs of this runner

    def __len__(self) -> int:
        return len(self._graphs)

    def _capture(self, first_input, ratio, K, rho) -> _Captured:
        steps = rho.shape[1] - 1
        static = [t.clone() for t in (first_input, ratio, K, rho)]
        seeds = torch.zeros(steps, dtype=torch.int64, device=first_input.device)
        run = lambda: run_exposure_diffusion(  # noqa: E731
            self.backbone, static[0], ratio=static[1], K=static[2], rho=static[3], seeds=seeds, **self.loop_kwargs)
        # Warm up on a side stream: compiles every Triton specialisation and lets cuDNN
        # pick its algorithms before capture (neither may happen during capture).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), value_checks_disabled():
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool), value_checks_disabled():
            estimate = run()
        return _Captured(graph, static[0], static[1], static[2], static[3], seeds, estimate)

    def __call__(self, first_input: torch.Tensor, *, ratio: torch.Tensor, K: torch.Tensor, rho: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Same contract as ``run_exposure_diffusion`` (inputs already validated)."""
        key = (tuple(first_input.shape), first_input.dtype, first_input.is_contiguous(), rho.shape[1] - 1)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(first_input, ratio, K, rho)
        cap.first_input.copy_(first_input)
        cap.ratio.copy_(ratio)
        cap.K.copy_(K)
        cap.rho.copy_(rho)
        steps = rho.shape[1] - 1
        cap.seeds.copy_(torch.cat([philox_seed(generator, first_input.device) for _ in range(steps)]))
        cap.graph.replay()
        return cap.estimate.clone()
