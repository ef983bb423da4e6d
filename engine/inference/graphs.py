"""CUDA-graph capture of the whole multi-step loop, replayed per frame.

One graph per (input shape, dtype, steps, options). Capture records the backbone and
every fused step on static buffers; a replay first copies the new input, ratio, K and
schedule into them and writes fresh Philox keys (one per step) into a device tensor the
kernels read, so every replay draws new noise, or the same noise for a fixed seed.
The kernels' value checks synchronise with the host, which capture forbids: inputs are
validated before capture and the capture runs under ``kernels.value_checks_disabled``.

Graphs hold their static buffers and their memory pool for as long as they are kept: a
service that sees many frame sizes would pin gigabytes. ``GraphCache`` keeps them least
recently used first, bounded by count and by bytes; an evicted graph's memory is released
(each graph has its own pool). A replay copies in, replays and copies out under the cache's
lock, so threads sharing a pipeline never see each other's buffers.
"""
from __future__ import annotations

import collections
import dataclasses
import threading
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
    nbytes: int = 0  # device memory the graph holds (static buffers and its pool)

    def release(self) -> None:
        """Drop every reference to the graph and its buffers (the caching allocator may then
        return the pool's memory)."""
        for field in dataclasses.fields(self):
            if field.name != "nbytes":
                setattr(self, field.name, None)


class GraphCache:
    """Captured graphs by key, least recently used first, within ``max_graphs`` entries and
    ``max_bytes`` bytes (None: no bound on bytes); the entry just added always stays. Entries
    need ``nbytes`` and ``release()``. Shared by all of a pipeline's runners, so the bounds
    hold for the pipeline as a whole. Thread-safe."""

    def __init__(self, max_graphs: int = 8, max_bytes: int | None = None):
        if int(max_graphs) < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0 or None, got {max_bytes}")
        self.max_graphs, self.max_bytes = int(max_graphs), max_bytes
        self._entries: collections.OrderedDict = collections.OrderedDict()
        # Held by a runner from its lookup to the end of its replay (an entry in use is
        # never evicted under it); re-entrant so get / put work inside.
        self.lock = threading.RLock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def get(self, key):
        with self.lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key, entry) -> None:
        with self.lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and (len(self._entries) > self.max_graphs or (
                    self.max_bytes is not None and self.nbytes > self.max_bytes)):
                _, old = self._entries.popitem(last=False)
                old.release()
                self.evictions += 1


class GraphedDiffusion:
    """Runs ``run_exposure_diffusion`` through captured CUDA graphs (CUDA tensors only).

    ``loop_kwargs`` are the static options of the loop (with_photon, concat_origin,
    stochastic, accumulate, dn_scale, next_dtype, memory_format); they are part of the
    graph, so a change of them needs a new ``GraphedDiffusion``.
    """

    def __init__(self, backbone: Callable[[torch.Tensor], torch.Tensor], warmup: int = 2,
                 cache: GraphCache | None = None, **loop_kwargs):
        self.backbone = backbone
        self.loop_kwargs = loop_kwargs
        self.warmup = warmup
        self.cache = cache if cache is not None else GraphCache()

    def __len__(self) -> int:
        return sum(1 for key in self.cache._entries if key[0] is self)

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
        before = torch.cuda.memory_reserved(first_input.device)
        # a pool of its own: evicting the graph frees its memory
        with torch.cuda.graph(graph, pool=torch.cuda.graph_pool_handle()), value_checks_disabled():
            estimate = run()
        held = torch.cuda.memory_reserved(first_input.device) - before
        nbytes = max(held, 0) + sum(t.numel() * t.element_size() for t in (*static, seeds))
        return _Captured(graph, static[0], static[1], static[2], static[3], seeds, estimate, nbytes)

    def __call__(self, first_input: torch.Tensor, *, ratio: torch.Tensor, K: torch.Tensor, rho: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Same contract as ``run_exposure_diffusion`` (inputs already validated)."""
        key = (self, tuple(first_input.shape), first_input.dtype, first_input.is_contiguous(), rho.shape[1] - 1)
        steps = rho.shape[1] - 1
        seeds = torch.cat([philox_seed(generator, first_input.device) for _ in range(steps)])
        with self.cache.lock:  # static buffers: one frame at a time; nothing evicted while in use
            cap = self.cache.get(key)
            if cap is None:
                cap = self._capture(first_input, ratio, K, rho)
                self.cache.put(key, cap)
            cap.first_input.copy_(first_input)
            cap.ratio.copy_(ratio)
            cap.K.copy_(K)
            cap.rho.copy_(rho)
            cap.seeds.copy_(seeds)
            cap.graph.replay()
            return cap.estimate.clone()
