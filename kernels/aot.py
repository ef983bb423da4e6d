"""Ahead-of-time compilation of every shipped kernel for real GPUs, without a GPU.

The Triton interpreter accepts code that the GPU compiler refuses, so tests also
compile each kernel (with its shipped block sizes) for sm_80 and sm_90 through
``triton.compile`` down to PTX and cubin, and ask the ``ptxas`` bundled with Triton for
register and spill counts. Run ``python -m kernels.aot`` (with ``TRITON_INTERPRET``
unset: the interpreter replaces ``triton.jit`` functions with Python ones).

Each kernel module exposes ``aot_specs() -> list[AotSpec]``.

``python -m kernels.aot --sass [--arch 80]`` prints a table of every tensor-core kernel:
registers, spills, shared memory, CTAs per SM, and its main loop's instruction mix
(MMAs, synchronous loads, cp.async / TMA copies, wgmma waits) and its stores
(``gemm_profile``; the suite's SASS gates read the same). ``--sass NAME...`` disassembles
the named kernels (the ``nvdisasm`` Triton bundles) and prints a profile of the machine code:
instructions by class, and every loop (a backward branch) with its length, its
special-function (MUFU) instructions, barriers and fp64 instructions. Without a GPU this is
how a kernel's cost is read: a loop body's instructions run once per iteration for the whole
program.
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
                  "kernels.conv_kernels", "kernels.head_step", "kernels.dihedral")
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


_TRITON_TYPES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32", "torch.float64": "fp64",
                 "torch.int64": "i64", "torch.int32": "i32", "torch.int16": "i16", "torch.int8": "i8",
                 "torch.uint8": "u8", "torch.uint16": "u16", "torch.bool": "i1"}


def launch_spec(name: str, tuner, args, cfg, options: dict, frame_sizes=("B", "H", "W")) -> AotSpec:
    """The ``AotSpec`` of one recorded launch (``kernels._tuning.recorded_launches``), as the
    JIT specialises it: tensors as typed pointers, 16-byte aligned ones declared so; integers
    equal to 1 as the constexpr 1, multiples of 16 declared divisible (``frame_sizes``, which
    the kernels do not specialise on, never); floats as fp32; every ``tl.constexpr``
    parameter from the launch's arguments and ``options`` (the configuration and heuristics)."""
    import inspect

    from ._tuning import _jit_and_heuristics

    fn = _jit_and_heuristics(tuner)[0].fn  # the Python function (compiled or interpreted)
    params = inspect.signature(fn).parameters
    named = {**dict(zip(params, args)), **options}
    signature, constexprs, aligned = {}, {}, []
    for pname, param in params.items():
        value = named[pname]
        annotation = param.annotation
        if "constexpr" in str(annotation):
            signature[pname], constexprs[pname] = "constexpr", value
        elif hasattr(value, "data_ptr"):
            signature[pname] = "*" + _TRITON_TYPES[str(value.dtype)]
            if value.data_ptr() % 16 == 0:
                aligned.append(pname)
        elif isinstance(value, bool):
            signature[pname] = "i1"
        elif isinstance(value, int):
            if value == 1 and pname not in frame_sizes:
                signature[pname], constexprs[pname] = "constexpr", 1
            else:
                signature[pname] = "i32" if -2**31 <= value < 2**31 else "i64"
                if value % 16 == 0 and pname not in frame_sizes:
                    aligned.append(pname)
        elif isinstance(value, float):
            signature[pname] = "fp32"
        else:
            raise TypeError(f"{name}: cannot type argument {pname}={value!r}")
    return AotSpec(name, fn, signature, constexprs, cfg.num_warps, divisible_by_16=tuple(aligned),
                   num_stages=cfg.num_stages)


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
    shared = int(compiled.metadata.shared)
    out = {"kernel": spec.name, "arch": f"sm_{arch}", "num_warps": spec.num_warps, "num_stages": spec.num_stages,
           **stats, "shared": shared, **occupancy(stats["registers"], spec.num_warps, shared, arch)}
    if spec.tensor_cores:
        mma = "wgmma" if spec.tensor_cores is True else spec.tensor_cores
        out.update(tensor_cores=mma, **sass_mma_counts(compiled.asm["cubin"]))
        out["gemm"] = gemm_profile(disassemble(compiled.asm["cubin"]))
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


# Per-SM limits of the architectures compiled for: registers, resident warps and CTAs,
# shared memory (bytes usable by the CTAs of one SM, and reserved by the driver per CTA).
SM_LIMITS = {
    80: {"registers": 65536, "warps": 64, "ctas": 32, "shared": 167936, "shared_per_cta_reserved": 1024},
    90: {"registers": 65536, "warps": 64, "ctas": 32, "shared": 233472, "shared_per_cta_reserved": 1024},
}
# Registers are allocated per warp in units of 256 (8 per thread).
_REGISTER_UNIT = 256


def occupancy(registers: int, num_warps: int, shared: int, arch: int) -> dict:
    """CTAs of one kernel that fit on an SM at once, and what limits them ("registers",
    "shared", "warps" or "ctas"). Two or more let one CTA's loads overlap another's MMAs."""
    lim = SM_LIMITS[arch]
    per_warp = -(-max(registers, 1) * 32 // _REGISTER_UNIT) * _REGISTER_UNIT
    bounds = {
        "registers": lim["registers"] // (per_warp * num_warps),
        "shared": lim["shared"] // (shared + lim["shared_per_cta_reserved"]),
        "warps": lim["warps"] // num_warps,
        "ctas": lim["ctas"],
    }
    limited_by = min(bounds, key=bounds.get)
    return {"ctas_per_sm": bounds[limited_by], "ctas_limited_by": limited_by}


_MMA = ("HGMMA", "HMMA")


def gemm_profile(sass: str) -> dict:
    """What makes a tensor-core kernel fast or slow, read from its SASS.

    The main loop is the innermost loop that issues MMAs (``HGMMA`` / ``HMMA``). Returns:
    ``main_loop``: its ``instructions``, ``mma``, ``sync_loads`` (``LDG`` / ``LD``: the
    warp waits on every one inside the loop), ``async_copies`` (``LDGSTS``, i.e. cp.async)
    of which ``l1_copies`` allocate in L1 (no ``.BYPASS``), ``tma_loads`` (``UTMALDG``),
    ``wgmma_waits`` (the pending-group count of each ``WARPGROUP.DEPBAR.LE`` in it: 0 idles
    the tensor cores until every MMA is done, >= 1 keeps one in flight); ``stores``: every
    global store of the kernel by SASS opcode (``STG.E.128`` = 16-byte vectors, ``STG.E.U16``
    = one fp16 element), and ``tma_stores`` (``UTMASTG``). Empty ``main_loop`` if no loop
    issues MMAs.
    """
    prof = sass_profile(sass)
    loops = [lp for lp in prof["loops"] if any(lp["by_opcode"].get(m) for m in _MMA)]
    stores: dict = {}
    for op in re.findall(r"\b(STG\.[A-Z0-9_.]+|STG)\b", sass):
        stores[op] = stores.get(op, 0) + 1
    out = {"main_loop": {}, "stores": stores, "tma_stores": len(re.findall(r"\bUTMASTG\b", sass))}
    if not loops:
        return out
    # innermost: the MMA loop that no other MMA loop is nested in
    inner = [lp for lp in loops if not any(o is not lp and lp["start"] in o["nested_in"] for o in loops)]
    loop = min(inner or loops, key=lambda lp: lp["instructions"])
    start, end = int(loop["start"], 16), int(loop["end"], 16)
    body = [line for line in sass.splitlines()
            if (m := _SASS_LINE.match(line)) and start <= int(m.group(1), 16) <= end]
    ops = [_SASS_LINE.match(line).group(2) for line in body]
    waits = [int(m, 16) for line in body for m in re.findall(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x([0-9a-f]+)", line)]
    out["main_loop"] = {
        "instructions": loop["instructions"],
        "mma": sum(1 for op in ops if op.startswith(_MMA)),
        "sync_loads": sum(1 for op in ops if op.split(".")[0] in ("LDG", "LD")),
        "async_copies": sum(1 for op in ops if op.startswith("LDGSTS")),
        "l1_copies": sum(1 for op in ops if op.startswith("LDGSTS") and ".BYPASS" not in op),
        "tma_loads": sum(1 for op in ops if op.startswith("UTMALDG")),
        "wgmma_waits": waits,
        "by_opcode": loop["by_opcode"],
    }
    return out


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


def compile_all(jobs: list[tuple[int, int]]) -> list[dict]:
    """Compile ``(spec index, arch)`` jobs in parallel, one compiler process per core (Triton's
    compile holds the GIL; ptxas is a subprocess). Failures come back as {"error": ...}."""
    import concurrent.futures as cf
    import multiprocessing

    with cf.ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_job, jobs))


def gemm_table(reports: list[dict]) -> str:
    """One line per tensor-core kernel: registers, spills, shared memory, CTAs per SM (and
    the limit), then its main loop's instructions, MMAs, synchronous loads, cp.async copies
    (L1-allocating), TMA loads, wgmma waits, and the kernel's global stores by width."""
    head = (f"{'kernel':40s} {'arch':5s} {'regs':>4s} {'spill':>5s} {'smem':>6s} {'CTAs/SM':>13s} | "
            f"{'loop':>4s} {'mma':>3s} {'LDG':>3s} {'cp.async(L1)':>12s} {'TMA':>3s} {'waits':8s} | stores")
    lines = [head, "-" * len(head)]
    for r in reports:
        if "error" in r:
            lines.append(f"{r['kernel']:40s} {r['arch']:5s} ERROR {r['error']}")
            continue
        if not r.get("tensor_cores"):
            continue
        loop = r["gemm"]["main_loop"] or {}
        stores = " ".join(f"{op}x{n}" for op, n in sorted(r["gemm"]["stores"].items()))
        lines.append(
            f"{r['kernel']:40s} {r['arch']:5s} {r['registers']:4d} {r['spill_stores'] + r['spill_loads']:5d} "
            f"{r['shared'] / 1024:5.0f}K {r['ctas_per_sm']:3d} ({r['ctas_limited_by']:>9s}) | "
            f"{loop.get('instructions', 0):4d} {loop.get('mma', 0):3d} {loop.get('sync_loads', 0):3d} "
            f"{loop.get('async_copies', 0):6d} ({loop.get('l1_copies', 0):3d}) {loop.get('tma_loads', 0):3d} "
            f"{str(loop.get('wgmma_waits', '-')):8s} | {stores}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m kernels.aot``: every spec for sm_80 and sm_90, JSON report (exit 1 on a
    failure). ``--sass``: the table of every tensor-core kernel's SASS (``--arch 80`` for
    Ampere); ``--sass NAME...``: the full SASS profile (JSON) of the named specs or prefixes."""
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
        if names:
            print(json.dumps(sass_report(names, arch), indent=1))
            return 0
        specs = all_specs()
        reports = compile_all([(i, arch) for i, spec in enumerate(specs) if spec.tensor_cores])
        print(gemm_table(reports))
        return 1 if any("error" in r for r in reports) else 0
    reports = compile_all([(i, arch) for i in range(len(all_specs())) for arch in ARCHS])
    results = [r for r in reports if "error" not in r]
    failures = [r for r in reports if "error" in r]
    print(json.dumps({"results": results, "failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
