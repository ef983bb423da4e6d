"""Ahead-of-time compilation of every shipped kernel for real GPUs, without a GPU.

The Triton interpreter accepts code that the GPU compiler refuses, so tests also
compile each kernel (with its shipped block sizes) for sm_80 and sm_90 through
``triton.compile`` down to PTX and cubin, and ask the ``ptxas`` bundled with Triton for
register and spill counts. Run ``python -m kernels.aot`` (with ``TRITON_INTERPRET``
unset: the interpreter replaces ``triton.jit`` functions with Python ones).

Each kernel module exposes ``aot_specs() -> list[AotSpec]``.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

# Modules whose kernels ship; each defines aot_specs().
KERNEL_MODULES = ("kernels.poisson", "kernels.bayer", "kernels.noise", "kernels.exposure", "kernels.isp",
                  "kernels.conv", "kernels.head_step", "kernels.dihedral")
ARCHS = (80, 90)


@dataclasses.dataclass
class AotSpec:
    """One kernel specialisation as it is launched in production.

    signature: argument name -> Triton type string ("*fp32", "i32", "constexpr", ...).
    constexprs: values of the constexpr arguments (block sizes, static options).
    divisible_by_16: arguments (pointers, strides, sizes) assumed multiples of 16, as
        Triton's JIT assumes them for typical frames at launch; this compiles the
        vectorised variant production actually runs.
    num_stages: software-pipelining depth (autotune configurations set it).
    tensor_cores: the kernel is a tensor-core GEMM: its sm_90 SASS must hold ``HGMMA``
        (Hopper's warpgroup MMA; an ``HMMA``-only build uses the tensor cores the Ampere
        way, at about half the rate).
    """

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int = 4
    divisible_by_16: tuple = ()
    num_stages: int = 3
    tensor_cores: bool = False


def ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for ``arch`` (it bundles one per architecture range)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(arch).path


def ptxas_stats(ptx: str, arch: int) -> dict:
    """Registers, spill stores/loads reported by ``ptxas -v`` for one PTX module."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(
            [ptxas_path(arch), "-v", f"--gpu-name=sm_{arch}{'a' if arch == 90 else ''}", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        )
    if out.returncode != 0:
        raise RuntimeError(f"ptxas failed for sm_{arch}: {out.stderr.strip()}")
    text = out.stderr + out.stdout
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", text)]
    stores = [int(x) for x in re.findall(r"(\d+) bytes spill stores", text)]
    loads = [int(x) for x in re.findall(r"(\d+) bytes spill loads", text)]
    return {"registers": max(regs, default=0), "spill_stores": sum(stores), "spill_loads": sum(loads)}


def sass_mma_counts(cubin: bytes) -> dict:
    """Tensor-core instructions in a cubin's SASS (Triton's bundled ``cuobjdump``):
    ``HGMMA`` (Hopper warpgroup MMA) and ``HMMA`` (Ampere-style warp MMA)."""
    from triton.backends.nvidia.compiler import get_ptxas

    tool = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "--dump-sass", path], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {out.stderr.strip()}")
    return {"hgmma": len(re.findall(r"\bHGMMA\.", out.stdout)), "hmma": len(re.findall(r"\bHMMA\.", out.stdout))}


def jit_function(fn):
    """The ``triton.JITFunction`` under ``triton.autotune`` / ``triton.heuristics`` wrappers."""
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def compile_spec(spec: AotSpec, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arg_names = list(spec.signature)
    attrs = {(arg_names.index(n),): [["tt.divisibility", 16]] for n in spec.divisible_by_16}
    src = ASTSource(fn=jit_function(spec.fn), signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    if not compiled.asm.get("cubin"):
        raise RuntimeError(f"{spec.name}: no cubin produced for sm_{arch}")
    stats = ptxas_stats(compiled.asm["ptx"], arch)
    result = {"kernel": spec.name, "arch": f"sm_{arch}", "num_warps": spec.num_warps, **stats}
    if spec.tensor_cores:
        result.update(tensor_cores=True, **sass_mma_counts(compiled.asm["cubin"]))
    return result


def all_specs() -> list[AotSpec]:
    specs = []
    for mod_name in KERNEL_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name == mod_name:  # module not written yet
                continue
            raise
        specs.extend(mod.aot_specs())
    return specs


def _compile_job(job: tuple[int, int]) -> dict:
    """Compile spec number ``index`` of ``all_specs()`` for ``arch`` (in a worker process:
    specs hold jit functions, which do not pickle; the index does)."""
    index, arch = job
    spec = all_specs()[index]
    try:
        return compile_spec(spec, arch)
    except Exception as e:  # report every failing kernel, not only the first
        return {"kernel": spec.name, "arch": f"sm_{arch}", "error": f"{type(e).__name__}: {e}"}


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels ahead of time", file=sys.stderr)
        return 2
    import concurrent.futures as cf
    import multiprocessing

    jobs = [(i, arch) for i in range(len(all_specs())) for arch in ARCHS]
    # One compiler process per core: Triton's compile holds the GIL, ptxas is a subprocess.
    with cf.ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        reports = list(pool.map(_compile_job, jobs))
    results = [r for r in reports if "error" not in r]
    failures = [r for r in reports if "error" in r]
    print(json.dumps({"results": results, "failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
