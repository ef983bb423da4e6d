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
                  "kernels.dihedral")
ARCHS = (80, 90)


@dataclasses.dataclass
class AotSpec:
    """One kernel specialisation as it is launched in production.

    signature: argument name -> Triton type string ("*fp32", "i32", "constexpr", ...).
    constexprs: values of the constexpr arguments (block sizes, static options).
    divisible_by_16: arguments (pointers, strides, sizes) assumed multiples of 16, as
        Triton's JIT assumes them for typical frames at launch; this compiles the
        vectorised variant production actually runs.
    """

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int = 4
    divisible_by_16: tuple = ()


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


def compile_spec(spec: AotSpec, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arg_names = list(spec.signature)
    attrs = {(arg_names.index(n),): [["tt.divisibility", 16]] for n in spec.divisible_by_16}
    src = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": spec.num_warps})
    if not compiled.asm.get("cubin"):
        raise RuntimeError(f"{spec.name}: no cubin produced for sm_{arch}")
    stats = ptxas_stats(compiled.asm["ptx"], arch)
    return {"kernel": spec.name, "arch": f"sm_{arch}", "num_warps": spec.num_warps, **stats}


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


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels ahead of time", file=sys.stderr)
        return 2
    results, failures = [], []
    for spec in all_specs():
        for arch in ARCHS:
            try:
                results.append(compile_spec(spec, arch))
            except Exception as e:  # report every failing kernel, not only the first
                failures.append({"kernel": spec.name, "arch": f"sm_{arch}", "error": f"{type(e).__name__}: {e}"})
    print(json.dumps({"results": results, "failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
