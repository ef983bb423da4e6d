"""What this CPU computes natively: the facts the CPU precision and backend choices rest on.

oneDNN *accepts* bf16 on any AVX-512 CPU (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``
is true there), but without the AVX512-BF16 or AMX-BF16 instructions it emulates bf16 by
converting to fp32 and back: measured on an AVX-512 Xeon without them, the bf16 backbone ran
at 0.23x plain fp32. So bf16 is the default only where the instructions exist.
"""
from __future__ import annotations

import functools
import platform

import torch

__all__ = ["cpu_flags", "cpu_isa_summary", "cpu_model_name", "native_bf16"]

_X86 = ("x86_64", "amd64", "i386", "i686")
_ARM = ("aarch64", "arm64")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags as the Linux kernel lists them in ``/proc/cpuinfo`` (x86
    ``flags``, e.g. ``avx512_bf16``, ``amx_bf16``; Arm ``Features``, e.g. ``bf16``); an empty
    set where that file does not exist (macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else ``platform.processor()``,
    else the machine type): part of the key under which CPU timings are cached."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "CPU part") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# The instruction sets the CPU backends' speed turns on (oneDNN / OpenVINO / ONNX Runtime pick
# their kernels by them). Cloud machines often report a generic model name ("Intel(R) Xeon(R)
# Processor") for different generations: measured, one such name covered an AVX-512 CPU
# without bf16 (OpenVINO bf16 1.8x slower than its fp32) and an AMX one (4.4x faster).
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                "asimd", "sve", "bf16", "i8mm")


@functools.lru_cache(maxsize=None)
def cpu_isa_summary() -> str:
    """The speed-relevant instruction sets of this CPU, sorted and joined by "+" (e.g.
    ``"amx_bf16+amx_int8+avx2+avx512_bf16+avx512_vnni+avx512f"``; ``""`` where
    ``/proc/cpuinfo`` does not exist): with the model name, the key of cached CPU timings."""
    return "+".join(sorted(set(_SPEED_FLAGS) & cpu_flags()))


def native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware and oneDNN can use it.

    x86: AVX512-BF16 or AMX (asked of PyTorch's cpuinfo, which also checks that the OS
    enabled the registers). Arm on Linux: the ``bf16`` feature. Anything else: False (fp32 is
    never wrong, only sometimes slower).
    """
    if not torch.backends.mkldnn.is_available():
        return False
    machine = platform.machine().lower()
    if machine in _X86:
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(check()) for check in checks if check is not None)
    if machine in _ARM:
        return "bf16" in cpu_flags()
    return False
