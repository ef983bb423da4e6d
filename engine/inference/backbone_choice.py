"""Which implementation runs the backbone: chosen per frame shape by timing, like autotune.

Candidates (``BACKBONE_PATHS``):

- ``"fused"``: our Triton kernels (``engine.models.fused_unet.FusedUNet``, the head fused
  into the exposure step); the SID UNet on CUDA in fp16 only;
- ``"eager"``: the PyTorch module (cuDNN on a GPU, oneDNN on a CPU);
- ``"compile"``: ``torch.compile`` of the module (minutes of compiling on first use, so
  only when asked: ``Pipeline(backbone="compile")`` or ``compile_candidate=True``).

``backbone="auto"`` (the default) on CUDA times each available candidate on the first
frame of a shape (the whole multi-step loop, after one untimed run that compiles and
autotunes it) and keeps the fastest, so the engine is never slower than what it
replaces; the choice is cached on disk (``choice_cache_path``), keyed by GPU, library
versions, network architecture, shape and loop options, so a second process skips the
timing. On a CPU ``"auto"`` is ``"eager"`` (the kernels would run in Triton's
interpreter). The timing runs before any CUDA-graph capture.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ..io.atomic import atomic_path

BACKBONE_PATHS = ("auto", "fused", "eager", "compile")
TIMED_RUNS = 3  # per candidate, after one untimed run


def choice_cache_path() -> Path:
    """``$EXPOSURE_DIFFUSION_CACHE/backbone_choice.json`` (default ``~/.cache/exposure-diffusion``)."""
    root = os.environ.get("EXPOSURE_DIFFUSION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                       "exposure-diffusion")
    return Path(root) / "backbone_choice.json"


def device_fingerprint(device: torch.device) -> str:
    """What a timing depends on besides the workload: the GPU and the libraries."""
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name}|torch {torch.__version__}|triton {triton.__version__}"


class ChoiceCache:
    """A JSON file {key: {"choice": name, "ms": {candidate: median ms}}}; unreadable or
    foreign content counts as empty (it is only a cache), writes are atomic."""

    def __init__(self, path: Path | None):
        self.path = path

    def _read(self) -> dict:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> str | None:
        entry = self._read().get(key)
        return entry.get("choice") if isinstance(entry, dict) else None

    def put(self, key: str, choice: str, timings: dict) -> None:
        if self.path is None:
            return
        data = self._read()
        data[key] = {"choice": choice, "ms": timings}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path, overwrite=True) as tmp:  # the engine's own cache file
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only home: the choice is simply made again next time


def time_candidates(run: Callable[[str], object], names, device: torch.device,
                    clock: Callable[[], float] | None = None) -> dict[str, float]:
    """Median wall time in ms of ``run(name)`` for each name, after one untimed run each
    (compilation, autotuning, cuDNN's algorithm search). ``clock`` (seconds) for tests."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    clock = clock or time.perf_counter
    timings = {}
    for name in names:
        run(name)
        sync()
        samples = []
        for _ in range(TIMED_RUNS):
            start = clock()
            run(name)
            sync()
            samples.append((clock() - start) * 1e3)
        timings[name] = statistics.median(samples)
    return timings


def choose(key: str, names, run: Callable[[str], object], device: torch.device, cache: ChoiceCache,
           clock=None) -> tuple[str, dict]:
    """The fastest of ``names`` for ``key``: from the cache, else timed and cached.
    Returns (choice, timings in ms; empty when the cache answered)."""
    names = list(names)
    cached = cache.get(key)
    if cached in names:
        return cached, {}
    if len(names) == 1:
        return names[0], {}
    timings = time_candidates(run, names, device, clock)
    best = min(timings, key=timings.get)
    cache.put(key, best, timings)
    return best, timings
