"""Which implementation runs the backbone: chosen per frame shape by timing, like autotune,
and only among candidates that run and give the right answer.

Candidates (``BACKBONE_PATHS``):

- ``"fused"``: our Triton kernels (``engine.models.fused_unet.FusedUNet``, the head fused
  into the exposure step); the SID UNet on CUDA in fp16 only;
- ``"eager"``: the PyTorch module (cuDNN on a GPU, with its algorithm search on; oneDNN on a
  CPU): the reference every other candidate is checked against;
- ``"compile"``: ``torch.compile`` of the module (minutes of compiling on first use, so
  only when asked: ``Pipeline(backbone="compile")`` or ``compile_candidate=True``).

``backbone="auto"`` (the default) on CUDA, at the first frame of a shape (the whole
multi-step loop, before any CUDA-graph capture):

1. runs each candidate once untimed (compiling, autotuning, cuDNN's algorithm search); a
   candidate that raises (a Triton compile error, ``OutOfResources``, a launch failure) is
   dropped with a :class:`BackboneFallbackWarning` naming the error, and the others go on;
2. compares each candidate's output with the reference's (``"eager"``) on the same input in
   the deterministic photon mode, and drops one below ``MIN_PSNR_DB`` (45 dB) with a warning;
3. times the survivors in interleaved rounds (round-robin, so a clock or thermal drift hits
   every candidate alike) until each has ``MIN_ROUNDS`` samples and ``MIN_SECONDS`` have
   passed (at most ``MAX_ROUNDS``), and keeps the lowest median (the reference unless another
   beats it by more than ``TIE_MARGIN``).

The choice is cached on disk (``choice_cache_path``), keyed by the GPU's name (not only its
architecture: an H100 and an H200 time differently), library versions, network, shape and
loop options, so a second process skips all of this. Out-of-memory errors are not a
candidate's fault: they propagate, and the engine falls back to tiles. On a CPU the
candidates are ``engine.inference.cpu_backends``' (the Triton kernels would run in Triton's
interpreter), timed on a crop of the first frame, by default in a child process
(``engine.inference.choice_process``), keyed by the CPU's model name, instruction sets and
thread count instead of the frame's shape.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from ..errors import warn_at_caller
from ..io.atomic import atomic_path

BACKBONE_PATHS = ("auto", "fused", "eager", "compile", "eager-bf16", "onnxruntime", "onnxruntime-int8", "openvino",
                  "openvino-bf16", "openvino-int8")
REFERENCE = "eager"
# A candidate's output must agree with the reference's to this PSNR (outputs in [0, 1]):
# fp16 kernels reach ~60 dB; a wrong kernel lands far below.
MIN_PSNR_DB = 45.0
# Timing: interleaved rounds, each candidate once per round.
MIN_ROUNDS = 5
MAX_ROUNDS = 30
MIN_SECONDS = 1.0
# A candidate must beat the reference by this fraction to be chosen over it: a tie within the
# timing noise keeps the reference (the PyTorch module: the path every test exercises).
TIE_MARGIN = 0.03


class BackboneFallbackWarning(RuntimeWarning):
    """A backbone candidate was dropped (it failed, or its output was wrong) and the engine
    went on with the others; the message names the candidate and the reason."""


def choice_cache_path() -> Path:
    """``$EXPOSURE_DIFFUSION_CACHE/backbone_choice.json`` (default ``~/.cache/exposure-diffusion``)."""
    root = os.environ.get("EXPOSURE_DIFFUSION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                       "exposure-diffusion")
    return Path(root) / "backbone_choice.json"


def device_fingerprint(device: torch.device) -> str:
    """What a timing depends on besides the workload: the device's model (the GPU's name, or
    the CPU's model, instruction sets and thread count) and the libraries."""
    import triton

    from .cpu_features import cpu_isa_summary, cpu_model_name

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:  # the instruction sets too: one model name may cover CPUs of different generations
        name = f"{cpu_model_name()} [{cpu_isa_summary()}] x{torch.get_num_threads()} threads"
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


_CUDNN_LOCK = threading.Lock()
_cudnn_users = [0, False]  # [threads inside cudnn_benchmark(), the flag before the first entered]


@contextlib.contextmanager
def cudnn_benchmark():
    """cuDNN's per-shape algorithm search on inside (restored after the last thread inside
    leaves): the eager candidate is timed and run with the algorithms cuDNN finds fastest,
    not its heuristics' first guess. A process-wide flag, so entries are counted: one
    thread leaving must not turn it off under another."""
    with _CUDNN_LOCK:
        if _cudnn_users[0] == 0:
            _cudnn_users[1] = torch.backends.cudnn.benchmark
        _cudnn_users[0] += 1
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        with _CUDNN_LOCK:
            _cudnn_users[0] -= 1
            if _cudnn_users[0] == 0:
                torch.backends.cudnn.benchmark = _cudnn_users[1]


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of ``a`` against ``b`` (values in [0, 1]); inf when equal, -inf when ``a`` is not finite."""
    if a.shape != b.shape:
        return -math.inf
    diff = a.detach().double() - b.detach().double()
    if not torch.isfinite(diff).all():
        return -math.inf
    mse = float(torch.mean(diff * diff))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _drop(name: str, reason: str) -> None:
    warn_at_caller(f"backbone candidate {name!r} dropped: {reason}; going on with the others", BackboneFallbackWarning)


def _failure(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= 300 else text[:297] + "..."


def usable_candidates(names, run: Callable[[str], object], check: Callable[[str], torch.Tensor] | None,
                      device: torch.device, reference: str = REFERENCE) -> list[str]:
    """The candidates that run and agree with the reference (steps 1 and 2 of the module
    docstring). ``run(name)`` is the real workload (its first call compiles / tunes);
    ``check(name)`` returns the deterministic output compared with the reference's (None: no
    comparison). The reference's own failures propagate: there is nothing to fall back to."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    alive = []
    for name in names:
        try:
            run(name)
            sync()
        except torch.OutOfMemoryError:
            raise  # the engine tiles the frame; not this candidate's fault
        except Exception as e:  # noqa: BLE001 - any failure of an optional path means: do without it
            if name == reference:
                raise
            _drop(name, f"it failed ({_failure(e)})")
            continue
        alive.append(name)
    if check is None or reference not in alive or len(alive) == 1:
        return alive
    expected = check(reference)
    usable = [reference]
    for name in alive:
        if name == reference:
            continue
        try:
            got = check(name)
            sync()
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001
            _drop(name, f"its check run failed ({_failure(e)})")
            continue
        quality = psnr_db(got, expected)
        if quality < MIN_PSNR_DB:
            _drop(name, f"its output is {quality:.1f} dB PSNR from the {reference!r} backbone's (needs >= {MIN_PSNR_DB:g})")
            continue
        usable.append(name)
    return [n for n in names if n in usable]


def time_candidates(run: Callable[[str], object], names, device: torch.device,
                    clock: Callable[[], float] | None = None) -> dict[str, float]:
    """Median wall time in ms of ``run(name)`` for each (already warmed-up) name, timed in
    interleaved rounds: at least ``MIN_ROUNDS`` and ``MIN_SECONDS``, at most ``MAX_ROUNDS``.
    A candidate that raises while being timed is dropped with a warning. ``clock``
    (seconds) for tests."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    clock = clock or time.perf_counter
    samples = {name: [] for name in names}
    started = clock()
    for round_ in range(MAX_ROUNDS):
        if round_ >= MIN_ROUNDS and clock() - started >= MIN_SECONDS:
            break
        for name in list(samples):
            begin = clock()
            try:
                run(name)
                sync()
            except torch.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001
                if len(samples) == 1:
                    raise
                _drop(name, f"it failed while being timed ({_failure(e)})")
                del samples[name]
                continue
            samples[name].append((clock() - begin) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def choose(key: str, names, run: Callable[[str], object], device: torch.device, cache: ChoiceCache,
           clock=None, check: Callable[[str], torch.Tensor] | None = None) -> tuple[str, dict]:
    """The fastest usable candidate of ``names`` for ``key``: from the cache, else checked,
    timed and cached. Returns (choice, timings in ms; empty when the cache answered or only
    one candidate was usable)."""
    names = list(names)
    cached = cache.get(key)
    if cached in names:
        return cached, {}
    if len(names) == 1:
        return names[0], {}
    usable = usable_candidates(names, run, check, device)
    if len(usable) == 1:  # the others were dropped: remembered too (a new process would fail them again)
        cache.put(key, usable[0], {})
        return usable[0], {}
    timings = time_candidates(run, usable, device, clock)
    best = min(timings, key=timings.get)
    if REFERENCE in timings and timings[best] > (1.0 - TIE_MARGIN) * timings[REFERENCE]:
        best = REFERENCE
    cache.put(key, best, timings)
    return best, timings


def choose_by_running(key: str, names, candidate: Callable[[str], Callable], first_input: torch.Tensor,
                      loop_kwargs: dict, device: torch.device, cache: ChoiceCache) -> tuple[str, dict]:
    """``choose`` with the real workload: the exposure-diffusion loop
    (``run_exposure_diffusion(candidate(name), first_input, **loop_kwargs)``), its first
    outputs compared with the reference's in the deterministic photon mode (Poisson draws
    are discontinuous: a stochastic loop is run again with means for the check)."""
    from .loop import run_exposure_diffusion

    first_outputs = {}

    def loop(name, **overrides):
        # The timing runs draw from a generator of their own: the user's generator
        # (or torch's global one) must give the same result whether timing ran or not.
        return run_exposure_diffusion(candidate(name), first_input, generator=torch.Generator().manual_seed(0),
                                      **{**loop_kwargs, **overrides})

    def run(name):
        out = loop(name)
        first_outputs.setdefault(name, out)
        return out

    def check(name):
        return first_outputs[name] if not loop_kwargs["stochastic"] else loop(name, stochastic=False)

    return choose(key, names, run, device, cache, check=check)
