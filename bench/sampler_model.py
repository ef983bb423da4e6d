"""Instruction-count model of the Poisson sampler: an ESTIMATE, not a measurement.

Without a GPU, the speed of ``kernels.poisson.poisson_sample`` is estimated from its
compiled code: ``kernels.aot.sass_profile`` counts the sm_90 SASS instructions of each
part (the always-run code, each unrolled inversion chunk, the PTRS set-up, the PTRS
loop's always-run part, its lazily fetched Philox block and its log-pmf block), and a
simulation of the bench's inputs says how often each part runs: a Triton program runs a
part whenever *any* of its elements needs it, so the iteration counts are maxima over
the program's elements. The instructions issued per element, old / new, estimate the
speedup of an issue-bound kernel (both are far from memory-bound). Stalls (barriers,
latency at low occupancy) are not modelled.

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


def sampler_parts(profile: dict) -> dict:
    """Split a new kernel's SASS profile into the sampler's parts (see the module docstring).

    The PTRS loop is the one loop with two skippable blocks (Philox, log-pmf); its outer
    region is the largest region around it. The inversion is the last top-level region
    before that: its first chunk inline, the other four nested as regions of their own.
    Other top-level regions that contain a loop of their own (libdevice's sin/cos slow
    path for huge arguments) never run here; the rest (small stores) are counted as run.
    """
    loops = [lp for lp in profile["loops"] if len(lp["skippable"]) == 2]
    assert len(loops) == 1, profile["loops"]
    loop = loops[0]
    start = int(loop["start"], 16)
    regions = [(int(r["at"], 16), r["skips"]) for r in profile["skippable"]]
    end = lambda r: r[0] + 16 * r[1]  # noqa: E731  (SASS instructions are 16 bytes)
    outer = max((r for r in regions if r[0] < start < end(r)), key=lambda r: r[1])
    before = [r for r in regions if r[0] < outer[0]]
    top = [r for r in before if not any(o is not r and o[0] < r[0] < end(o) for o in before)]
    inversion = top[-1]
    nested = [r[1] for r in before if inversion[0] < r[0] < end(inversion)]
    chunks = [inversion[1] - sum(nested), *nested]
    assert len(chunks) == 5, (inversion, nested)
    other_loops = [int(lp["start"], 16) for lp in profile["loops"] if lp is not loop]
    dead = sum(r[1] for r in regions if r[0] > end(outer) and any(r[0] < lp < end(r) for lp in other_loops)
               and not any(o[0] < r[0] < end(o) for o in regions if o is not r))
    executable = profile["instructions"] - profile["by_opcode"].get("NOP", 0) - 1  # trailing self-branch
    philox, pmf = (s["skips"] for s in loop["skippable"])
    return {"base": executable - inversion[1] - outer[1] - dead, "chunks": chunks,
            "ptrs_setup": outer[1] - loop["instructions"], "loop_always": loop["instructions"] - philox - pmf,
            "philox": philox, "pmf": pmf}


def new_cost(parts: dict, per_thread: int, sim: dict) -> float:
    chunks = np.minimum(np.ceil(sim["k_max"] / 8.0), 5).astype(int)
    per_thread_cost = parts["base"] + np.array([sum(parts["chunks"][:c]) for c in chunks], dtype=float)
    loop = np.zeros_like(per_thread_cost)
    for t in range(sim["undecided"].shape[0]):
        running = sim["t_max"] > t
        loop += running * (parts["loop_always"] + parts["pmf"] * sim["undecided"][t] + parts["philox"] * (t >= 2 and t % 2 == 0))
    per_thread_cost += sim["any_big"] * (parts["ptrs_setup"] + loop)
    return float(per_thread_cost.mean()) / per_thread


def executed_per_thread(profile: dict) -> int:
    """Instructions a thread runs through a kernel without the sampler: all but padding and
    the regions holding a loop (libdevice's sin/cos slow path, never taken here)."""
    regions = [(int(r["at"], 16), r["skips"]) for r in profile["skippable"]]
    loops = [int(lp["start"], 16) for lp in profile["loops"]]
    dead = sum(s for a, s in regions if any(a < lp < a + 16 * s for lp in loops)
               and not any(o[0] < a < o[0] + 16 * o[1] for o in regions if o != (a, s)))
    return profile["instructions"] - profile["by_opcode"].get("NOP", 0) - 1 - dead


def without_sampler(aot, spec, arch: int = 90) -> float:
    """Instructions per element of the same kernel and configuration with no Poisson draw
    (exposure: deterministic step; synthesis: the same model without shot noise)."""
    import dataclasses

    off = {"STOCHASTIC": False} if "STOCHASTIC" in spec.constexprs else {"SHOT": 0}
    plain = dataclasses.replace(spec, name=spec.name + "[no Poisson]", constexprs={**spec.constexprs, **off})
    r = aot.compile_spec(plain, arch, keep=True)
    prof = aot.sass_profile(aot.disassemble(r["cubin"]))
    return executed_per_thread(prof)


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
        old_sim = simulate(kind, OLD[kind]["elements"], 4000, rng)
        old = old_cost(kind, old_sim)
        old_plain = None
        for r in report:
            meta = r["kernel"][len(prefix):-1]
            elements = {"poisson": lambda m: int(m.split("x")[0]),
                        "exposure_step": lambda m: 4 * int(m.split("x")[0]),
                        "synthesize_noise": lambda m: int(m.split("x")[0]) * int(m.split("x")[1])}[kind](meta)
            per_thread = elements // (32 * r["num_warps"])
            parts = sampler_parts(r)
            sim = simulate(kind, elements, max(4000, 200000 // elements), rng)
            new = new_cost(parts, per_thread, sim)
            plain = None
            if kind != "poisson":  # the kernel's own work, which the sampler does not change
                plain = without_sampler(aot, specs_by_name[r["kernel"]]) / per_thread
                if elements == OLD[kind]["elements"] and r["num_warps"] == {"exposure_step": 8, "synthesize_noise": 4}[kind]:
                    old_plain = plain  # the 2026-11-30 configuration
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
