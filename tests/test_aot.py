"""Every shipped kernel compiles for real GPUs (sm_80, sm_90) without spilling.

The Triton interpreter runs code that the GPU compiler may refuse, so this compiles
each kernel specialisation through ``triton.compile`` to PTX and cubin in a separate
process (the interpreter must be off there) and reads ptxas' register/spill report.
"""
import json
import os
import subprocess
import sys

import pytest

from kernels import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def aot_report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.aot"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"kernels.aot printed no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return report


def test_every_kernel_compiles_for_sm80_and_sm90(aot_report):
    assert aot_report["failures"] == [], json.dumps(aot_report["failures"], indent=1)
    compiled = {(r["kernel"], r["arch"]) for r in aot_report["results"]}
    for mod in aot.KERNEL_MODULES:
        __import__(mod)
    expected = {(s.name, f"sm_{a}") for s in aot.all_specs() for a in aot.ARCHS}
    assert expected and expected <= compiled


def test_no_register_spills(aot_report):
    spilling = [r for r in aot_report["results"] if r["spill_stores"] or r["spill_loads"]]
    assert spilling == [], json.dumps(spilling, indent=1)


def test_every_kernel_module_is_registered():
    """A kernel module left out of KERNEL_MODULES would escape the compile check."""
    kdir = os.path.join(REPO, "kernels")
    modules_with_kernels = set()
    for name in os.listdir(kdir):
        if name.endswith(".py") and not name.startswith("_") and name != "aot.py":
            with open(os.path.join(kdir, name)) as f:
                if "@triton.jit" in f.read():
                    modules_with_kernels.add(f"kernels.{name[:-3]}")
    assert modules_with_kernels <= set(aot.KERNEL_MODULES)


def test_tensor_core_kernels_use_hopper_warpgroup_mma(aot_report):
    """On sm_90 the convolution kernels (and the head kernel's programs of a warpgroup or
    more) must issue HGMMA (wgmma), not only the Ampere-style HMMA; on sm_80 HMMA (the
    SASS from Triton's bundled cuobjdump). One-warp head programs use HMMA on both."""
    gemms = [r for r in aot_report["results"] if r.get("tensor_cores")]
    assert {r["kernel"].split("_")[0] for r in gemms} >= {"conv3x3", "upconv2x2", "head"}
    assert all(r["tensor_cores"] == "wgmma" for r in gemms if r["kernel"].startswith(("conv3x3", "upconv2x2")))
    assert any(r["tensor_cores"] == "wgmma" for r in gemms if r["kernel"].startswith("head"))
    for r in gemms:
        if r["arch"] == "sm_90" and r["tensor_cores"] == "wgmma":
            assert r["hgmma"] > 0, r
        else:
            assert r["hmma"] > 0 and r["hgmma"] == 0, r


def test_poisson_sampler_machine_code():
    """DESIGN.md: a random kernel is memory-bound only if its sampler is cheap. Read from the
    sm_90 SASS of every configuration autotune may pick for ``poisson``: no fp64 instruction,
    the logs are MUFU.LG2 (not libdevice's polynomial), the inversion is unrolled (the only
    loop is PTRS's rejection loop) and one-warp programs have no barrier."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", "kernels.aot", "--sass", "poisson["], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    from kernels.poisson import CONFIGS

    assert len(report) == len(CONFIGS)
    for r in report:
        assert r["fp64"] == 0, r["kernel"]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r["kernel"]
        assert len(r["loops"]) == 1, (r["kernel"], r["loops"])
        assert r["loops"][0]["mufu"].get("MUFU.LG2", 0) > 0, r["kernel"]
        if r["num_warps"] == 1:
            assert r["barriers"] == 0, r["kernel"]
