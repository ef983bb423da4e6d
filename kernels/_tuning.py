"""Launch configurations chosen by ``triton.autotune`` on the user's GPU.

A kernel module lists its candidate configurations; ``autotuned`` wraps its kernel so
that the first launch for a new key (sizes, dtypes and the options listed in ``key``)
times every candidate and keeps the fastest, for this process and, through Triton's
cache (``cache_results``), for the next. Results never depend on the configuration:
the kernels' random draws are keyed by element index, not by program.

Tuning synchronises and times launches, which a CUDA-graph capture forbids: the engine
(``engine/inference/graphs.py``) runs its loop on a side stream before capturing it, and
that warm-up is when every key it uses gets tuned.

Under the Triton interpreter nothing is timed: launchers call the plain kernel with their
module's fixed configuration (large programs, since the interpreter's cost is per program).
"""
from __future__ import annotations

import triton

from ._common import triton_interpreter_enabled


def autotuning_enabled() -> bool:
    """True where launchers use the autotuned kernels (compiled Triton, i.e. CUDA)."""
    return not triton_interpreter_enabled()


def _quick_bench(kernel_call, quantiles):
    # Each candidate runs for ~30 ms instead of Triton's default ~125 ms: these kernels take
    # well under a millisecond at frame sizes, so a few dozen launches rank them.
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


def autotuned(kernel, configs, key):
    """``kernel`` under ``triton.autotune`` over ``configs``: (constexpr dict, num_warps) pairs."""
    return triton.autotune(
        configs=[triton.Config(dict(meta), num_warps=warps) for meta, warps in configs],
        key=list(key),
        do_bench=_quick_bench,
        cache_results=True,
    )(kernel)
