"""What setup.py promises and what README says about it agree (issue #12)."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_call() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}


def test_readme_states_the_torch_minimum_of_setup_py():
    torch_req = next(r for r in _setup_call()["install_requires"] if re.match(r"torch\b", r))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"`{torch_req}`" in readme, torch_req


def test_one_cupy_extra_per_cuda_major_version_each_in_the_readme():
    extras = _setup_call()["extras_require"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    cupy = {name: reqs for name, reqs in extras.items() if name.startswith("cupy")}
    assert set(cupy) == {"cupy12", "cupy13"}
    for name, reqs in cupy.items():
        major = name.removeprefix("cupy")
        assert len(reqs) == 1 and reqs[0].startswith(f"cupy-cuda{major}x"), (name, reqs)
        assert f'.[{name}]' in readme, name
