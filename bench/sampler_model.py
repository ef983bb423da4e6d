"""Instruction-count model of the Poisson sampler: an ESTIMATE, not a measurement.

Without a GPU, the speed of ``kernels.poisson.poisson_sample`` is estimated from its
compiled code: ``kernels.aot.sass_profile`` counts the sm_90 SASS instructions of each
part (the always-run code, each unrolled inversion chunk, the PTRS set-up, the PTRS
loop's always-run part, its lazily fetched Philox block and its log-pmf block), and a
simulation of the bench's inputs says how often each part runs: a Triton program runs a
part whenever *any* of the elements of the sampler call needs it, so the iteration counts
are maxima over those elements (a program's for ``poisson``; in the fused kernels, since
session 4, one plane of one tile, the kernels looping over TILES tiles and 4 planes with
their set-up outside the loops). The instructions issued per element, old / new, estimate
the speedup of an issue-bound kernel (both are far from memory-bound). Stalls (barriers,
latency at low occupancy), memory traffic and instruction-cache misses are not modelled.

The 2026-11-30 sampler's counts (commit 3d4e87b: 512-element programs of 4 warps, every
loop block-wide) were read with the same tool before it was replaced; they are constants
below. ``python bench/sampler_model.py`` prints the table recorded in NOTES.md.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# 2026-11-30 sampler, counted from its sm_90 SASS (per thread; 4 elements per thread for
# poisson, 2 for exposure_step and synthesize_noise): always-run code, one inversion
# iteration (one CDF term, block-wide max), one PTRS iteration (one trial, block-wide max).
OLD = {
    "poisson": {"elements": 512, "per_thread": 4, "base": 522, "inv_iter": 91, "ptrs_iter": 1265},
    "exposure_step": {"elements": 512, "per_thread": 2, "base": 1312 - 10 - 49 - 635, "inv_iter": 49, "ptrs_iter": 635},
    # base without the never-taken sin/cos slow paths (51 + 47 + 50 + 46 instructions)
    "synthesize_noise": {"elements": 256, "per_thread": 2, "base": 1992 - 10 - 49 - 634 - 194, "inv_iter": 49,
                         "ptrs_iter": 634},
}
# The kernels' own (non-sampler) work per element at the 2026-11-30 configuration, counted
# in session 3 (the sampler rewritten, the rest as on 2026-11-30): the 2026-11-30 totals
# minus these approximate the old sampler's share ("sampler part alone" below).
OLD_OWN_WORK = {"exposure_step": 166.0, "synthesize_noise": 482.5}
THRESHOLD = 10.0


# ---------------------------------------------------------------- the bench's means
def bench_means(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Means drawn as bench/stages.py's inputs make them (i.i.d. per element)."""
    if kind == "poisson":  # mu = U(0, 1) * 1e3
        return rng.random(n) * 1e3
    if kind == "synthesize_noise":  # y / K = x * s / (r K), r = 100, K = 2
        return rng.random(n) * 15583.0 / 200.0
    # exposure_step: 9-channel N(0, 1) head, state U(0, 1), rho 1 -> 34, r = 100, K = 2
    m = 1.0 / (1.0 + np.exp(-rng.standard_normal(n)))
    est = np.clip(rng.standard_normal(n), 0, 1) * m + np.clip(rng.standard_normal(n) + rng.random(n), 0, 1) * (1 - m)
    return 33.0 * 15583.0 * est / 200.0


def ptrs_trials(mu: np.ndarray, rng: np.random.Generator, max_trials: int = 12):
    """Per element: number of PTRS trials, and per trial whether the squeeze left it undecided."""
    m = np.maximum(mu, THRESHOLD)
    b = 0.931 + 2.53 * np.sqrt(m)
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2.0)
    from scipy.special import gammaln

    n = mu.size
    trials = np.zeros(n, dtype=np.int64)
    undecided = np.zeros((max_trials, n), dtype=bool)
    active = np.ones(n, dtype=bool)
    for t in range(max_trials):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        u = rng.random(idx.size) - 0.5
        v = rng.random(idx.size)
        us = 0.5 - np.abs(u)
        k = np.floor((2 * a[idx] / us + b[idx]) * u + m[idx] + 0.43)
        quick = (us >= 0.07) & (v <= v_r[idx])
        hopeless = (k < 0) | ((us < 0.013) & (v > us))
        kk = np.maximum(k, 0)
        lhs = np.log(v * inv_alpha[idx] / (a[idx] / (us * us) + b[idx]))
        accept = quick | (~hopeless & (lhs <= -m[idx] + kk * np.log(m[idx]) - gammaln(kk + 1)))
        undecided[t, idx] = ~quick & ~hopeless
        trials[idx] += 1
        active[idx[accept]] = False
    return trials, undecided


# ---------------------------------------------------------------- per-program costs
def simulate(kind: str, group: int, programs: int, rng: np.random.Generator) -> dict:
    """Per program (rows): max inversion count K, max PTRS trials T, and per trial whether
    any element needed the log-pmf."""
    mu = bench_means(kind, group * programs, rng)
    small = mu < THRESHOLD
    k = np.where(small, rng.poisson(np.where(small, mu, 0.0)), 0).reshape(programs, group)
    trials, undecided = ptrs_trials(mu, rng)
    trials = np.where(small, 0, trials).reshape(programs, group)
    und = (undecided & ~small).reshape(undecided.shape[0], programs, group).any(axis=2)  # [trial, program]
    return {"k_max": k.max(axis=1), "t_max": trials.max(axis=1), "any_big": (~small).reshape(programs, group).any(axis=1),
            "undecided": und, "mean_trials": trials[~small.reshape(programs, group)].mean()}


def old_cost(kind: str, sim: dict) -> float:
    o = OLD[kind]
    per_thread = o["base"] + sim["k_max"] * o["inv_iter"] + sim["t_max"] * o["ptrs_iter"]
    return float(per_thread.mean()) / o["per_thread"]


# Run-time loops of the fused kernels around the sampler: over TILES tiles per program, and
# in each over the 4 planes.
PLANES = 4


def _around(profile: dict, inner: dict):
    """The innermost loop enclosing loop ``inner``, or None."""
    around = [lp for lp in profile["loops"] if lp is not inner and int(lp["start"], 16) <= int(inner["start"], 16)
              and int(inner["end"], 16) <= int(lp["end"], 16)]
    return min(around, key=lambda lp: lp["instructions"]) if around else None


def sampler_parts(profile: dict, tiles: int = 1) -> dict:
    """Split a new kernel's SASS profile into the sampler's parts (see the module docstring).

    The PTRS loop is the one loop with two skippable blocks (Philox, log-pmf); its outer
    region is the largest region around it. The inversion is the last top-level region
    before that: its first chunk inline, the other four nested as regions of their own.
    The fused kernels call the sampler inside a loop over the 4 planes (its body without
    the sampler: "base", once per plane), itself inside a loop over ``tiles`` tiles (its
    body without the plane loop: "tile", once per tile); the rest ("setup") runs once per
    program. Other top-level regions that contain a loop of their own (libdevice's sin/cos
    slow path for huge arguments, before session 4) never run; the rest are counted as run.
    """
    loops = [lp for lp in profile["loops"] if len(lp["skippable"]) == 2]
    assert len(loops) == 1, profile["loops"]
    loop = loops[0]
    planes = _around(profile, loop)
    tile_loop = _around(profile, planes) if planes is not None else None
    assert (tile_loop is not None) == (tiles > 1), (tiles, tile_loop)
    start = int(loop["start"], 16)
    regions = [(int(r["at"], 16), r["skips"]) for r in profile["skippable"]]
    end = lambda r: r[0] + 16 * r[1]  # noqa: E731  (SASS instructions are 16 bytes)
    inside = (lambda r: True) if planes is None else (  # noqa: E731
        lambda r: int(planes["start"], 16) <= r[0] and end(r) <= int(planes["end"], 16) + 16)
    outer = max((r for r in regions if r[0] < start < end(r) and inside(r)), key=lambda r: r[1])
    before = [r for r in regions if r[0] < outer[0] and inside(r)]
    top = [r for r in before if not any(o is not r and o[0] < r[0] < end(o) for o in before)]
    inversion = top[-1]
    nested = [r[1] for r in before if inversion[0] < r[0] < end(inversion)]
    chunks = [inversion[1] - sum(nested), *nested]
    assert len(chunks) == 5, (inversion, nested)
    kernel_loops = (loop, planes, tile_loop)
    other_loops = [int(lp["start"], 16) for lp in profile["loops"] if all(lp is not k for k in kernel_loops)]
    dead = sum(r[1] for r in regions if r[0] > end(outer) and any(r[0] < lp < end(r) for lp in other_loops)
               and not any(o[0] < r[0] < end(o) for o in regions if o is not r))
    executable = profile["instructions"] - profile["by_opcode"].get("NOP", 0) - 1  # trailing self-branch
    philox, pmf = (s["skips"] for s in loop["skippable"])
    sampler = {"chunks": chunks, "ptrs_setup": outer[1] - loop["instructions"],
               "loop_always": loop["instructions"] - philox - pmf, "philox": philox, "pmf": pmf}
    if planes is None:
        return {"setup": 0, "tiles": 1, "tile": 0, "planes": 1, "base": executable - inversion[1] - outer[1] - dead,
                **sampler}
    outermost = tile_loop or planes
    return {"setup": executable - outermost["instructions"] - dead, "tiles": tiles,
            "tile": 0 if tile_loop is None else tile_loop["instructions"] - planes["instructions"],
            "planes": PLANES, "base": planes["instructions"] - inversion[1] - outer[1], **sampler}


def new_cost(parts: dict, per_thread: int, sim: dict) -> float:
    """Instructions per element: ``sim`` holds one sampler call's group per row (one plane
    of one tile where the kernel loops over tiles and planes)."""
    chunks = np.minimum(np.ceil(sim["k_max"] / 8.0), 5).astype(int)
    per_group = parts["base"] + np.array([sum(parts["chunks"][:c]) for c in chunks], dtype=float)
    loop = np.zeros_like(per_group)
    for t in range(sim["undecided"].shape[0]):
        running = sim["t_max"] > t
        loop += running * (parts["loop_always"] + parts["pmf"] * sim["undecided"][t] + parts["philox"] * (t >= 2 and t % 2 == 0))
    per_group += sim["any_big"] * (parts["ptrs_setup"] + loop)
    per_program = parts["setup"] + parts["tiles"] * (parts["tile"] + parts["planes"] * float(per_group.mean()))
    return per_program / (parts["tiles"] * parts["planes"] * per_thread)


def executed_per_thread(profile: dict, tiles: int = 1) -> int:
    """Instructions a thread runs through a kernel without the sampler: all but padding and
    the regions holding a loop other than the kernel's (libdevice's sin/cos slow path, never
    taken), each loop's body as often as it runs. The compiler may unroll the plane loop
    (then the one loop left is the tile loop) or both."""
    loops = profile["loops"]
    top = [lp for lp in loops if not lp["nested_in"]]
    if tiles > 1 and len(top) == 1:  # the tile loop (its plane loops unrolled or inside)
        inner = [lp for lp in loops if lp["nested_in"]]
        trips = {id(top[0]): tiles, **{id(lp): PLANES for lp in inner}}
    else:  # plane loops (tiles unrolled), or none at all
        trips = {id(lp): PLANES for lp in top}
    kernel = [lp for lp in loops if id(lp) in trips]
    regions = [(int(r["at"], 16), r["skips"]) for r in profile["skippable"]]
    others = [int(lp["start"], 16) for lp in loops if id(lp) not in trips]
    dead = sum(s for a, s in regions if any(a < lp < a + 16 * s for lp in others)
               and not any(o[0] < a < o[0] + 16 * o[1] for o in regions if o != (a, s)))

    def runs(lp):  # how often one instruction of lp's body runs
        n = trips[id(lp)]
        outer = _around(profile, lp)
        return n * (runs(outer) if outer is not None and id(outer) in trips else 1)

    total = profile["instructions"] - profile["by_opcode"].get("NOP", 0) - 1 - dead
    for lp in kernel:  # add the repeats, innermost bodies on top of their enclosing loops'
        outer = _around(profile, lp)
        enclosing = runs(outer) if outer is not None and id(outer) in trips else 1
        total += lp["instructions"] * (runs(lp) - enclosing)
    return total


def without_sampler(aot, spec, arch: int = 90) -> float:
    """Instructions per element of the same kernel and configuration with no Poisson draw
    (exposure: deterministic step; synthesis: the same model without shot noise)."""
    import dataclasses

    off = {"STOCHASTIC": False} if "STOCHASTIC" in spec.constexprs else {"SHOT": 0}
    plain = dataclasses.replace(spec, name=spec.name + "[no Poisson]", constexprs={**spec.constexprs, **off})
    r = aot.compile_spec(plain, arch, keep=True)
    prof = aot.sass_profile(aot.disassemble(r["cubin"]))
    return executed_per_thread(prof, spec.constexprs.get("TILES", 1))


def main() -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    from kernels import aot

    rng = np.random.default_rng(0)
    specs = {
        "poisson": "poisson[",
        "exposure_step": "exposure_fwd_head9_fp16_photon_origin[",
        "synthesize_noise": "synthesize_noise[P+G+r+u,fp32->fp16,12ch][",
    }
    rows = []
    for kind, prefix in specs.items():
        report = aot.sass_report([prefix], 90)
        specs_by_name = {sp.name: sp for sp in aot.all_specs()}
        old_sim = simulate(kind, OLD[kind]["elements"], 4000, np.random.default_rng(1))  # the same for every run
        old = old_cost(kind, old_sim)
        old_plain = OLD_OWN_WORK.get(kind)
        for r in report:
            meta = r["kernel"][len(prefix):-1]
            # poisson: "{BLOCK}x{warps}w"; the others: "{BLOCK_H}x{BLOCK_W}x{TILES}x{warps}w", a
            # plane of a tile per sampler call
            dims = [int(d) for d in meta.split("x")[:-1]]
            group = dims[0] if kind == "poisson" else dims[0] * dims[1]  # elements of one sampler call
            tiles = 1 if kind == "poisson" else dims[2]
            elements = group if kind == "poisson" else 4 * group * tiles
            per_thread = group // (32 * r["num_warps"])  # per sampler call
            parts = sampler_parts(r, tiles)
            sim = simulate(kind, group, max(4000, 200000 // group), rng)
            new = new_cost(parts, per_thread, sim)
            plain = None
            if kind != "poisson":  # the kernel's own work, which the sampler does not change
                plain = without_sampler(aot, specs_by_name[r["kernel"]]) / (elements // (32 * r["num_warps"]))
            rows.append({"without_sampler_instr_per_element": None if plain is None else round(plain, 1),"kernel": kind, "config": meta, "registers": r["registers"], "elements_per_program": elements,
                         "old_instr_per_element": round(old, 1), "new_instr_per_element": round(new, 1),
                         "estimated_speedup": round(old / new, 2), "parts_per_thread": parts,
                         "old_ptrs_trials_max": float(old_sim["t_max"].mean()), "new_ptrs_trials_max": float(sim["t_max"].mean()),
                         "mean_trials": float(sim["mean_trials"])})
        for row in rows:
            if row["kernel"] == kind and kind != "poisson" and old_plain is not None:
                row["sampler_only_speedup"] = round((row["old_instr_per_element"] - old_plain)
                                                    / (row["new_instr_per_element"] - row["without_sampler_instr_per_element"]), 2)
    print("ESTIMATE from SASS instruction counts (sm_90) and simulated iteration counts; not a measurement")
    print(f"{'kernel':<17} {'config':<10} {'regs':>4} {'old instr/el':>12} {'new instr/el':>12} {'est. x':>7}  PTRS trials (max per program) old -> new")
    for r in rows:
        print(f"{r['kernel']:<17} {r['config']:<10} {r['registers']:>4} {r['old_instr_per_element']:>12} "
              f"{r['new_instr_per_element']:>12} {r['estimated_speedup']:>7}  {r['old_ptrs_trials_max']:.2f} -> {r['new_ptrs_trials_max']:.2f}"
              f" (mean per element {r['mean_trials']:.2f})"
              + ("" if r["without_sampler_instr_per_element"] is None else
                 f"; without the sampler {r['without_sampler_instr_per_element']} instr/el, sampler part alone "
                 f"{r.get('sampler_only_speedup', '-')}x"))
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
