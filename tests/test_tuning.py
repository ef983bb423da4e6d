"""kernels._tuning: autotune results kept per GPU model (not per architecture, as Triton's
own cache keys them: an H100 and an H200 are both sm_90), launches recorded for the
first frame's parallel precompilation."""
import json
import types

import pytest
import torch
import triton

from kernels import _tuning
from kernels._tuning import load_tuning, save_tuning, tuning_store_path


def fake_tuner():
    configs = [triton.Config({"BLOCK": 32}, num_warps=1, num_stages=3), triton.Config({"BLOCK": 64}, num_warps=4,
                                                                                     num_stages=3)]
    return types.SimpleNamespace(configs=configs, cache={})


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPOSURE_DIFFUSION_CACHE", str(tmp_path))
    return tmp_path


def test_results_are_kept_per_gpu_model():
    tuned = fake_tuner()
    key = (2848, 4256, True, "torch.float16", "torch.float32")  # sizes, flags and dtypes, as Triton keys them
    tuned.cache[key] = tuned.configs[1]
    path = save_tuning("NVIDIA H100 80GB HBM3", {"_head_step_kernel": tuned})
    assert path == tuning_store_path("NVIDIA H100 80GB HBM3") and path.parent.name == "autotune"
    assert "H100" in path.name and triton.__version__ in path.name
    fresh = fake_tuner()
    assert load_tuning("NVIDIA H200", {"_head_step_kernel": fresh}) == 0 and fresh.cache == {}  # another model
    assert load_tuning("NVIDIA H100 80GB HBM3", {"_head_step_kernel": fresh}) == 1
    assert fresh.cache == {key: fresh.configs[1]}  # the tuner's own Config object
    # an entry already tuned in this process is not overwritten
    mine = fake_tuner()
    mine.cache[key] = mine.configs[0]
    load_tuning("NVIDIA H100 80GB HBM3", {"_head_step_kernel": mine})
    assert mine.cache[key] is mine.configs[0]


def test_saving_merges_and_a_bad_store_is_only_a_cache(cache_dir):
    a, b = fake_tuner(), fake_tuner()
    a.cache[(1,)] = a.configs[0]
    b.cache[(2,)] = b.configs[1]
    save_tuning("GPU", {"a": a})
    save_tuning("GPU", {"b": b})
    data = json.loads(tuning_store_path("GPU").read_text())
    assert set(data) == {"a", "b"}
    # entries whose configuration no longer exists, unparsable keys, foreign content: ignored
    data["a"]["(3,)"] = {"kwargs": {"BLOCK": 4096}, "num_warps": 8, "num_stages": 1}
    data["a"]["not a key("] = data["a"]["(1,)"]
    tuning_store_path("GPU").write_text(json.dumps(data))
    fresh = fake_tuner()
    assert load_tuning("GPU", {"a": fresh}) == 1 and list(fresh.cache) == [(1,)]
    tuning_store_path("GPU").write_text("{ not json")
    assert load_tuning("GPU", {"a": fake_tuner()}) == 0
    assert save_tuning("GPU", {"a": a}) is not None  # rewritten whole
    blocked = cache_dir / "autotune"
    for f in blocked.iterdir():
        f.unlink()
    blocked.rmdir()
    blocked.write_text("a file where the folder should be")
    assert save_tuning("GPU", {"a": a}) is None  # unwritable: made again next time


def test_every_autotuned_kernel_is_registered():
    import kernels.conv  # noqa: F401
    import kernels.exposure  # noqa: F401
    import kernels.head_step  # noqa: F401
    import kernels.noise  # noqa: F401
    import kernels.poisson  # noqa: F401

    assert {"_conv3x3_kernel", "_conv3x3_narrow_kernel", "_upconv2x2_kernel", "_head_step_kernel",
            "_exposure_fwd_kernel", "_synthesize_kernel", "_poisson_kernel"} <= set(_tuning.TUNERS)


def test_launches_are_recorded_not_run():
    from kernels.exposure import exposure_step
    from kernels._tuning import recorded_launches

    net = torch.rand(1, 9, 4, 8)
    state, origin = torch.rand(1, 4, 4, 8), torch.rand(1, 4, 4, 8)
    with recorded_launches() as launches:
        est, nxt = exposure_step(net, state, origin, ratio=100.0, K=1.0, rho=1.0, rho_next=50.0, stochastic=False,
                                 backend="triton")
    ((tuner, args, flags),) = launches
    assert tuner is kernels_exposure()._exposure_fwd_tuned and flags["HAS_NEXT"] and not flags["STOCHASTIC"]
    assert est.shape == (1, 4, 4, 8) and nxt.shape == (1, 4, 4, 8)


def kernels_exposure():
    import kernels.exposure

    return kernels.exposure
