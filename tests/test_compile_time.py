"""bench/compile_time.py: the first frame's compile plan, made on the CPU, is the engine's
(every kernel of the fused path, the head step and the exposure step) and each planned
specialisation compiles for a real GPU."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import compile_time  # noqa: E402


def test_the_plan_covers_every_kernel_of_the_first_frame():
    jobs = compile_time.plan(steps=3)
    kernels = {j["kernel"] for j in jobs}
    assert kernels == {"_conv3x3_kernel", "_conv3x3_narrow_kernel", "_upconv2x2_kernel", "_head_step_kernel",
                       "_exposure_fwd_kernel"}
    assert 40 <= len(jobs) <= 80
    # the planned specialisations are the JIT's: frame sizes never declared divisible, strides of 1 constexprs
    for job in jobs:
        assert not {"B", "H", "W"} & set(job["aligned"])
        assert all(v != 1 or job["signature"][k] == "constexpr" for k, v in job["constexprs"].items())
    head = [j for j in jobs if j["kernel"] == "_head_step_kernel"]
    assert all(j["constexprs"]["PIXEL_STRIDE"] == 8 and j["constexprs"]["sx_c" if j["constexprs"]["HAS_NEXT"]
                                                                        else "sx_w"] == 1 for j in head)


def test_planned_kernels_compile_for_sm90(tmp_path):
    """The command itself (a fresh process, the plan made under the interpreter, the
    compilations in worker processes without it), one planned kernel of each kind."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "bench/compile_time.py", "--sample", "1", "--steps", "2", "--json",
                          str(tmp_path / "c.json")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["kernels"] == 5 and report["failures"] == [] and report["sample"] == 1
    assert "wall time" in out.stdout
