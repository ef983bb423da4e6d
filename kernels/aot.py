"""Ahead-of-time compilation of every shipped kernel for real GPUs, without a GPU.

The Triton interpreter accepts code that the GPU compiler refuses, so tests also
compile each kernel (with its shipped block sizes) for sm_80 and sm_90 through
``triton.compile`` down to PTX and cubin, and ask the ``ptxas`` bundled with Triton for
register and spill counts. Run ``python -m kernels.aot`` (with ``TRITON_INTERPRET``
unset: the interpreter replaces ``triton.jit`` functions with Python ones).

Each kernel module exposes ``aot_specs() -> list[AotSpec]``.

``python -m kernels.aot --sass NAME [--arch 90]`` also disassembles the cubin (the
``nvdisasm`` Triton bundles) and prints a profile of the machine code: instructions by
class, and every loop (a backward branch) with its length, its special-function (MUFU)
instructions, barriers and fp64 instructions. Without a GPU this is how a kernel's cost
is read: a loop body's instructions run once per iteration for the whole program.
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
    tensor_cores: the kernel is a tensor-core GEMM. "wgmma" (or True): its sm_90 SASS must
        hold ``HGMMA`` (Hopper's warpgroup MMA; an ``HMMA``-only build uses the tensor
        cores the Ampere way, at about half the rate) and its sm_80 SASS ``HMMA``; "mma":
        ``HMMA`` on both (programs too small for a warpgroup). False: not a GEMM.
    """

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int = 4
    divisible_by_16: tuple = ()
    num_stages: int = 3
    tensor_cores: bool | str = False


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
    tool = _nvidia_tool("cuobjdump")
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


def compile_spec(spec: AotSpec, arch: int, *, keep=False) -> dict:
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
    out = {"kernel": spec.name, "arch": f"sm_{arch}", "num_warps": spec.num_warps, **stats}
    if spec.tensor_cores:
        mma = "wgmma" if spec.tensor_cores is True else spec.tensor_cores
        out.update(tensor_cores=mma, **sass_mma_counts(compiled.asm["cubin"]))
    if keep:  # the compiled artefacts, for SASS reading
        out["ptx"], out["cubin"] = compiled.asm["ptx"], compiled.asm["cubin"]
    return out


def _nvidia_tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def disassemble(cubin: bytes) -> str:
    """SASS text of a cubin (nvdisasm bundled with Triton; labels kept for loop finding)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([_nvidia_tool("nvdisasm"), "-c", path], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {out.stderr.strip()}")
    return out.stdout


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-7T]\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
_SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
# fp64 arithmetic, comparisons and conversions to/from fp64.
_FP64 = re.compile(r"^(DADD|DMUL|DFMA|DSETP|DMNMX|DSET|DMMA)|\.F64")


def sass_profile(sass: str) -> dict:
    """Instruction counts of one kernel's SASS and of each of its loops.

    Returns {"instructions", "by_opcode" (first opcode component -> count), "mufu"
    (MUFU.* -> count), "fp64", "barriers", "reductions", "skippable", "loops": [{"start",
    "end", "instructions", "by_opcode", "mufu", "barriers", "reductions", "fp64",
    "skippable", "nested_in"}]}. A loop is the address range from a label to a later
    branch back to it; "skippable" lists the forward branches (uniform ``if`` regions of a
    Triton program, e.g. a lazily fetched random number) with how many instructions each skips.
    """
    insts, labels = [], {}
    pending = []
    for line in sass.splitlines():
        m = _SASS_LABEL.match(line.strip())
        if m:
            pending.append(m.group(1))
            continue
        m = _SASS_LINE.match(line)
        if m:
            addr, op, rest = int(m.group(1), 16), m.group(2), m.group(3)
            for lab in pending:
                labels[lab] = addr
            pending = []
            insts.append((addr, op, rest))

    def summary(sel):
        ops = [op for _, op, _ in sel]
        by = {}
        for op in ops:
            by[op.split(".")[0]] = by.get(op.split(".")[0], 0) + 1
        mufu = {}
        for op in ops:
            if op.startswith("MUFU"):
                mufu[op] = mufu.get(op, 0) + 1
        return {"instructions": len(ops), "by_opcode": by, "mufu": mufu,
                "fp64": sum(1 for op in ops if _FP64.search(op)),
                "barriers": sum(1 for op in ops if op.startswith("BAR")),
                "reductions": sum(1 for op in ops if op.startswith(("REDUX", "SHFL")))}

    def skippable(body):
        """Forward branches inside a loop body: the instructions a uniform branch skips
        (a conditional region such as a lazily fetched random number), as (from, count)."""
        out = []
        for a, op, rest in body:
            m = re.search(r"\((\.L_x_\d+)\)", rest) if op.startswith("BRA") else None
            if m and m.group(1) in labels and a < labels[m.group(1)] <= body[-1][0]:
                out.append({"at": hex(a), "skips": sum(1 for i in body if a < i[0] < labels[m.group(1)])})
        return out

    loops = []
    for addr, op, rest in insts:
        if op.startswith("BRA"):
            m = re.search(r"\((\.L_x_\d+)\)", rest)
            if m and m.group(1) in labels and labels[m.group(1)] <= addr:
                body = [i for i in insts if labels[m.group(1)] <= i[0] <= addr]
                if len(body) > 1:  # not the trailing self-branch after EXIT
                    s = summary(body)
                    loops.append({"start": labels[m.group(1)], "end": addr, **{k: s[k] for k in
                                  ("instructions", "by_opcode", "mufu", "barriers", "reductions", "fp64")},
                                  "skippable": skippable(body)})
    for lp in loops:
        lp["nested_in"] = [hex(o["start"]) for o in loops
                           if o is not lp and o["start"] <= lp["start"] and lp["end"] <= o["end"]]
    for lp in loops:
        lp["start"], lp["end"] = hex(lp["start"]), hex(lp["end"])
    return {**summary(insts), "loops": loops, "skippable": skippable(insts)}


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


def sass_report(names, arch: int) -> list[dict]:
    """Registers, spills and the SASS profile of the named specs (exact names or prefixes)."""
    out = []
    for spec in all_specs():
        if not any(spec.name == n or spec.name.startswith(n) for n in names):
            continue
        r = compile_spec(spec, arch, keep=True)
        prof = sass_profile(disassemble(r.pop("cubin")))
        r.pop("ptx")
        out.append({**r, **prof})
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels ahead of time", file=sys.stderr)
        return 2
    if argv and argv[0] == "--sass":
        arch = 90
        names = argv[1:]
        if "--arch" in names:
            i = names.index("--arch")
            arch = int(names[i + 1])
            names = names[:i] + names[i + 2:]
        print(json.dumps(sass_report(names, arch), indent=1))
        return 0
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
