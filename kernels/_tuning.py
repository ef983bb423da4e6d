"""Launch configurations chosen by ``triton.autotune`` on the user's GPU: the tuners, their
parallel precompilation, and their results kept per GPU model.

A kernel module lists its candidate configurations; ``autotuned`` wraps its kernel so
that the first launch for a new key (sizes, dtypes and the options listed in ``key``)
times every candidate and keeps the fastest. Results never depend on the configuration:
the kernels' random draws are keyed by element index, not by program.

Tuning synchronises and times launches, which a CUDA-graph capture forbids: the engine
(``engine/inference/graphs.py``) runs its loop on a side stream before capturing it, and
that warm-up is when every key it uses gets tuned.

**First frame.** Compiling is what makes a fresh process slow: ``recorded_launches()``
collects the launches a workload would make (outputs allocated, never written) and
``precompile`` compiles every configuration the tuners will try for them, in parallel
threads (Triton's ``AsyncCompileMode``), so autotuning then only times them.

**Per GPU model.** Triton's own disk cache of tuning results is keyed by architecture (an
H100 and an H200, both sm_90, would share results measured on one of them), so it is off;
``load_tuning`` / ``save_tuning`` keep the results in
``$EXPOSURE_DIFFUSION_CACHE/autotune/<GPU name>.json`` instead, for every registered tuner.

Under the Triton interpreter nothing is timed: launchers call the plain kernel with their
module's fixed configuration (large programs, since the interpreter's cost is per program).
"""
from __future__ import annotations

import ast
import concurrent.futures as cf
import contextvars
import json
import os
import re
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import triton

from ._common import triton_interpreter_enabled

# Every autotuned kernel of the package, by name (``register``): what the per-GPU store keeps.
TUNERS: dict = {}
# Per-frame sizes our kernels never specialise on (``do_not_specialize``).
FRAME_SIZES = ("B", "H", "W")


def autotuning_enabled() -> bool:
    """True where launchers use the autotuned kernels (compiled Triton, i.e. CUDA)."""
    return not triton_interpreter_enabled()


def _quick_bench(kernel_call, quantiles):
    # Each candidate runs for ~30 ms instead of Triton's default ~125 ms: these kernels take
    # well under a millisecond at frame sizes, so a few dozen launches rank them.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


def register(tuner, name: str | None = None):
    """Add an autotuned kernel to ``TUNERS`` under its kernel's name (its results then
    persist per GPU model); returns it."""
    TUNERS[name or _kernel_name(tuner)] = tuner
    return tuner


def autotuned(kernel, configs, key):
    """``kernel`` under ``triton.autotune`` over ``configs``: (constexpr dict, num_warps) pairs;
    registered in ``TUNERS`` under the kernel's name."""
    tuner = triton.autotune(
        configs=[triton.Config(dict(meta), num_warps=warps) for meta, warps in configs],
        key=list(key),
        do_bench=_quick_bench,
    )(kernel)
    return register(tuner)


def _kernel_name(kernel) -> str:
    fn = kernel
    while not hasattr(fn, "__name__") and hasattr(fn, "fn"):
        fn = fn.fn
    return getattr(fn, "__name__", repr(fn))


# --------------------------------------------------------------------------- recording
_RECORDING: contextvars.ContextVar = contextvars.ContextVar("recorded_launches", default=None)


@contextmanager
def recorded_launches():
    """Inside, every autotuned launch of the package is recorded as ``(tuner, args, kwargs)``
    instead of run (for ``precompile``): outputs are allocated but never written."""
    launches: list = []
    token = _RECORDING.set(launches)
    try:
        yield launches
    finally:
        _RECORDING.reset(token)


def record_launch(tuner, args, kwargs) -> bool:
    """Record an autotuned launch inside ``recorded_launches()`` and return True (the
    launcher must not run it); False outside."""
    launches = _RECORDING.get()
    if launches is None:
        return False
    launches.append((tuner, tuple(args), dict(kwargs)))
    return True


def _jit_and_heuristics(tuner):
    """The ``JITFunction`` under an autotuned kernel and its ``triton.heuristics`` (name ->
    function of the arguments), which ``warmup`` must be given by hand."""
    from triton.runtime.autotuner import Autotuner, Heuristics

    fn, heuristics = tuner, {}
    while isinstance(fn, (Autotuner, Heuristics)):
        heuristics.update(getattr(fn, "values", {}))
        fn = fn.fn
    return fn, heuristics


def launch_options(tuner, args, cfg: triton.Config, kwargs: dict | None = None) -> dict:
    """Every constexpr of one launch: the caller's flags, the configuration's blocks and the
    heuristics' values."""
    _, heuristics = _jit_and_heuristics(tuner)
    options = {**(kwargs or {}), **cfg.kwargs}
    named = {**dict(zip(tuner.arg_names, args)), **options}
    options.update({name: rule(named) for name, rule in heuristics.items()})
    return options


def _tried_configs(tuner, args, kwargs) -> list:
    """The configurations the tuner will time for this launch (after its pruning)."""
    prune = getattr(tuner, "early_config_prune", None)
    if prune is None:
        return list(tuner.configs)
    return prune(tuner.configs, dict(zip(tuner.arg_names, args)), **kwargs)


def specialisation_key(tuner, args) -> tuple:
    """What the JIT specialises a launch on besides its constexprs: each tensor's dtype and
    alignment, every integer's divisibility by 16 and equality to 1 (frame sizes excepted)."""
    key = []
    for name, value in zip(tuner.arg_names, args):
        if hasattr(value, "data_ptr"):
            key.append((name, str(value.dtype), value.data_ptr() % 16 == 0))
        elif isinstance(value, int) and not isinstance(value, bool) and name not in FRAME_SIZES:
            key.append((name, value % 16 == 0, value == 1))
        else:
            key.append((name, value if isinstance(value, (bool, float, str)) else None))
    return tuple(key)


def precompile_plan(launches) -> list[tuple]:
    """The distinct compilations the tuners would make for the recorded ``launches``:
    ``(tuner, args, config, constexprs)`` per (kernel, specialisation, configuration)."""
    jobs = {}
    for tuner, args, kwargs in launches:
        for cfg in _tried_configs(tuner, args, kwargs):
            options = launch_options(tuner, args, cfg, kwargs)
            key = (id(tuner), specialisation_key(tuner, args), tuple(sorted(options.items())), cfg.num_warps,
                   cfg.num_stages)
            jobs.setdefault(key, (tuner, args, cfg, options))
    return list(jobs.values())


def precompile(launches, max_workers: int | None = None) -> int:
    """Compile, in parallel threads, every configuration the tuners will try for the recorded
    ``launches`` (CUDA), so that autotuning then only times them. Returns how many distinct
    compilations (``precompile_plan``) were requested; a failure only warns (the tuner
    compiles what is missing itself). Under the interpreter nothing is compiled."""
    jobs = precompile_plan(launches)
    if triton_interpreter_enabled() or not jobs:
        return len(jobs)
    async_mode = getattr(triton, "AsyncCompileMode", None)  # Triton >= 3.4; else one after the other
    try:
        with cf.ThreadPoolExecutor(max_workers or os.cpu_count() or 1) as pool:
            with async_mode(pool) if async_mode is not None else nullcontext():
                for tuner, args, cfg, options in jobs:
                    _jit_and_heuristics(tuner)[0].warmup(*args, grid=(1,), **options, num_warps=cfg.num_warps,
                                                         num_stages=cfg.num_stages)
    except Exception as e:  # noqa: BLE001 - an optimisation only
        warnings.warn(f"parallel precompilation of the kernels failed ({type(e).__name__}: {e}); "
                      "the autotuner compiles them one by one", RuntimeWarning)
    return len(jobs)


# --------------------------------------------------------------------------- per-GPU store
def tuning_store_path(device_name: str) -> Path:
    """``$EXPOSURE_DIFFUSION_CACHE/autotune/<device name>.json`` (default cache
    ``~/.cache/exposure-diffusion``), one file per GPU model and Triton version."""
    root = os.environ.get("EXPOSURE_DIFFUSION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                       "exposure-diffusion")
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{device_name}-triton{triton.__version__}").strip("_")
    return Path(root) / "autotune" / f"{slug}.json"


def _config_dict(cfg: triton.Config) -> dict:
    return {"kwargs": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}


def load_tuning(device_name: str, tuners: dict | None = None) -> int:
    """Fill each tuner's results (``tuner.cache``) from the store of ``device_name``, so a
    process on a GPU model seen before starts tuned. Entries that no longer match a tuner's
    configurations are ignored (the store is only a cache). Returns the entries loaded."""
    path = tuning_store_path(device_name)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    loaded = 0
    for name, tuner in (TUNERS if tuners is None else tuners).items():
        entries = data.get(name) if isinstance(data, dict) else None
        for key_text, chosen in (entries or {}).items():
            try:
                key = ast.literal_eval(key_text)
            except (ValueError, SyntaxError):
                continue
            match = [c for c in tuner.configs if isinstance(chosen, dict) and _config_dict(c) == chosen]
            if match and key not in tuner.cache:
                tuner.cache[key] = match[0]
                loaded += 1
    return loaded


def save_tuning(device_name: str, tuners: dict | None = None) -> Path | None:
    """Write every tuner's results to the store of ``device_name`` (merged with what is there,
    atomically); None where the cache folder cannot be written (the results are then made
    again next time)."""
    path = tuning_store_path(device_name)
    try:
        data = json.loads(path.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    for name, tuner in (TUNERS if tuners is None else tuners).items():
        if tuner.cache:
            entries = data.setdefault(name, {})
            entries.update({repr(key): _config_dict(cfg) for key, cfg in tuner.cache.items()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return None
    return path
