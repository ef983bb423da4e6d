"""bench/gpu_check.sh's bookkeeping, without a GPU: part selection, per-part time limits,
failing test names in the summary (a stand-in python prints what pytest would)."""
import os
import re
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = """#!/usr/bin/env bash
# stands in for python: the environment report reads stdin; "pytest" fails one test or sleeps
if [[ "$*" == *"-m pytest"* ]]; then
  if [[ -n "${STUB_SLEEP:-}" ]]; then sleep "$STUB_SLEEP"; fi
  echo "FAILED tests/test_x.py::test_y - AssertionError: boom"
  echo "1 failed, 2 passed"
  exit 1
fi
cat > /dev/null
echo "python stub"
"""


def run_check(tmp_path, *parts, **env):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    full_env = {**os.environ, "PYTHON": str(stub), "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *parts], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_failing_tests_are_named_in_the_summary_and_the_status(tmp_path):
    r = run_check(tmp_path, "cuda", "kernels")
    summary = r.stdout.split("=== gpu_check summary")[1]
    assert r.returncode == 1
    assert "cuda: FAILED (exit 1)" in summary and "kernels: FAILED (exit 1)" in summary
    assert summary.count("FAILED tests/test_x.py::test_y") == 2
    assert (tmp_path / "out" / "pytest_cuda.log").exists() and (tmp_path / "out" / "env.txt").exists()


def test_a_part_past_its_limit_is_stopped_and_the_next_still_runs(tmp_path):
    r = run_check(tmp_path, "kernels", "cuda", KERNELS_S="1", STUB_SLEEP="5")
    summary = r.stdout.split("=== gpu_check summary")[1]
    assert "kernels: STOPPED at its 1 s limit" in summary
    assert "cuda: FAILED (exit 1)" in summary  # ran after the stopped part (its sleep ends at the limit too)
    assert r.returncode == 1


def test_unknown_part_is_refused(tmp_path):
    r = run_check(tmp_path, "nonsense")
    assert r.returncode == 2 and "unknown part 'nonsense'" in r.stdout


def test_the_call_budget_cuts_the_parts_and_names_what_it_did_not_reach(tmp_path):
    """One device call of at most BUDGET_S seconds (issue 12: 9 minutes by default): a part
    runs under its own limit or what is left of the budget, and a part with no time left is
    named as not run."""
    r = run_check(tmp_path, "kernels", "cuda", BUDGET_S="18", KERNELS_S="100", STUB_SLEEP="60")
    summary = r.stdout.split("=== gpu_check summary")[1]
    assert re.search(r"kernels: STOPPED at its 1[0-3] s limit", summary), summary
    assert "cuda: NOT RUN (the call's 18 s budget is spent)" in summary
    assert r.returncode == 1


def test_default_parts_fit_one_nine_minute_call():
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    assert 'parts=" ${*:-cuda kernels bench} "' in text and "BUDGET_S=${BUDGET_S:-540}" in text
    assert "--skip batch" in text  # the file-to-file stage is the folder part's, a call of its own
