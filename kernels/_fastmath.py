"""Fast fp32 special functions for the samplers, with their accuracy stated.

On a GPU these are single special-function-unit (MUFU) instructions; Triton's ``tl.log``
and ``/`` compile to libdevice's ``logf`` (~26 instructions) and ``div.full.f32``
(~7 instructions with range checks). Error bounds, from the CUDA C Programming Guide
("Intrinsic functions"), for the inputs the callers pass (finite, normal, positive):

- ``fast_log(x)`` = ``__logf`` (``lg2.approx.ftz`` times ln 2): absolute error at most
  2**-21.41 (3.6e-7) for x in [0.5, 2], otherwise at most 3 ulp (relative 3.6e-7);
- ``fast_div(x, y)`` = ``__fdividef``: at most 2 ulp for 2**-126 <= |y| <= 2**126;
- ``fast_rcp(x)`` = ``__fdividef(1, x)``: likewise (one ``MUFU.RCP``).

Each caller states why these errors do not change its distribution beyond fp32 rounding.
The Triton interpreter cannot call libdevice, so there the exact numpy functions stand in:
CPU tests check the algorithms, the GPU runs these approximations (``tests/test_poisson.py``
checks, with injected errors of these sizes, that the sampler's tests still pass).
"""
import triton
import triton.language as tl

from ._common import triton_interpreter_enabled

try:  # the CUDA libdevice wrappers (Triton >= 3.0)
    from triton.language.extra.cuda import libdevice
except ImportError:  # pragma: no cover - older layouts
    from triton.language.extra import libdevice

# Compile-time switch: MUFU approximations when compiling for a GPU, numpy under the
# interpreter (which cannot run extern functions). A constexpr global, read by @triton.jit.
GPU_MATH = tl.constexpr(not triton_interpreter_enabled())
# Tests only: under the interpreter, add LOG_ERROR * (|y| + 1) to every fast_log result y
# and multiply every fast_div / fast_rcp result by (1 + DIV_ERROR), so that errors of the
# bounds above (3.6e-7 covers both the absolute and the 3-ulp bound; 2 ulp <= 2.4e-7
# relative), of either sign, can be injected. 0.0: exact.
LOG_ERROR = tl.constexpr(0.0)
DIV_ERROR = tl.constexpr(0.0)


@triton.jit
def fast_log(x):
    """Natural log of positive fp32 ``x`` (see the module docstring for its error)."""
    if GPU_MATH:
        return libdevice.fast_logf(x)
    else:
        y = tl.log(x)
        if LOG_ERROR != 0.0:
            y = y + LOG_ERROR * (tl.abs(y) + 1.0)
        return y


@triton.jit
def fast_div(x, y):
    """``x / y`` for fp32 ``y`` of normal magnitude (2 ulp)."""
    if GPU_MATH:
        return libdevice.fast_dividef(x, y)
    else:
        q = x / y
        if DIV_ERROR != 0.0:
            q = q * (1.0 + DIV_ERROR)
        return q


@triton.jit
def fast_rcp(x):
    """``1 / x`` for fp32 ``x`` of normal magnitude (2 ulp, one MUFU.RCP)."""
    return fast_div(1.0, x)
