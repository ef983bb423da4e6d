"""engine.inference.backbone_choice and the Pipeline's backbone paths: the fastest
candidate is kept per shape, the choice is cached on disk and read back by a new
pipeline; refusals. (The fused path itself: tests/test_fused_unet.py on CPU,
tests/test_cuda.py in the Pipeline on a GPU.)"""
import json

import numpy as np
import pytest
import torch

from engine import BackboneConfig, Pipeline
from engine.inference.backbone_choice import ChoiceCache, choose, time_candidates

ARR = dict(pattern="RGGB", black_level=512, white_level=16383, K=2.0)
CPU = torch.device("cpu")


class FakeClock:
    """A clock that each run of a candidate advances by that candidate's cost."""

    def __init__(self, costs):
        self.now, self.costs, self.runs = 0.0, costs, []

    def run(self, name):
        self.runs.append(name)
        self.now += self.costs[name]

    def __call__(self):
        return self.now


def test_the_fastest_candidate_is_chosen_and_cached(tmp_path):
    clock = FakeClock({"fused": 0.010, "eager": 0.030})
    cache = ChoiceCache(tmp_path / "choice.json")
    choice, timings = choose("k", ["fused", "eager"], clock.run, CPU, cache, clock=clock)
    assert choice == "fused" and timings == pytest.approx({"fused": 10.0, "eager": 30.0})
    assert clock.runs == ["fused"] * 4 + ["eager"] * 4  # one untimed run (compile, autotune) + 3 timed each
    clock.runs.clear()
    assert choose("k", ["fused", "eager"], clock.run, CPU, cache, clock=clock) == ("fused", {})
    assert clock.runs == []  # answered by the cache
    assert json.loads((tmp_path / "choice.json").read_text())["k"]["choice"] == "fused"
    # another key is timed again; a cached choice that is no longer a candidate is ignored
    assert choose("k", ["eager"], clock.run, CPU, cache, clock=clock) == ("eager", {})


def test_a_broken_or_unwritable_cache_is_only_a_cache(tmp_path):
    path = tmp_path / "choice.json"
    path.write_text("not json {")
    clock = FakeClock({"a": 0.002, "b": 0.001})
    assert choose("k", ["a", "b"], clock.run, CPU, ChoiceCache(path), clock=clock)[0] == "b"
    assert json.loads(path.read_text())["k"]["choice"] == "b"  # rewritten whole
    blocked = tmp_path / "file_not_folder"
    blocked.write_text("")
    assert choose("k", ["a", "b"], clock.run, CPU, ChoiceCache(blocked / "choice.json"), clock=clock)[0] == "b"


def test_time_candidates_reports_medians():
    clock = FakeClock({"x": 0.005})
    assert time_candidates(clock.run, ["x"], CPU, clock=clock) == {"x": pytest.approx(5.0)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    return cfg.build(), cfg


def test_pipeline_times_each_shape_once_and_a_new_pipeline_reads_the_cache(model, tmp_path, monkeypatch):
    """The Pipeline's glue, on a CPU: two candidates (the module, and the module made slow),
    chosen by timing at the first frame of each shape, reused for that shape, read back
    from disk by a second pipeline."""
    monkeypatch.setenv("EXPOSURE_DIFFUSION_CACHE", str(tmp_path))
    net, cfg = model
    calls = []

    def make(pipe):
        pipe._candidate_names = ["slow", "eager"]

        def slow(x):
            calls.append(x.shape)
            import time

            time.sleep(0.05)
            return pipe._net(x)

        pipe._builders["slow"] = lambda: slow
        return pipe

    frame = np.random.default_rng(0).integers(512, 3000, (64, 96)).astype(np.uint16)
    first = make(Pipeline(net, cfg, device="cpu", precision="fp32"))
    a = first(frame, ratio=50, steps=2, seed=1, **ARR).raw
    (timings,) = first.backbone_timings.values()
    assert set(timings) == {"slow", "eager"} and timings["slow"] > timings["eager"]
    assert list(first._chosen.values()) == ["eager"]
    first(frame, ratio=50, steps=2, seed=1, **ARR)
    assert len(first.backbone_timings) == 1  # the same shape is not timed again
    first(frame[:32], ratio=50, steps=2, seed=1, **ARR)
    assert len(first.backbone_timings) == 2  # a new shape is
    second = make(Pipeline(net, cfg, device="cpu", precision="fp32"))
    calls.clear()
    b = second(frame, ratio=50, steps=2, seed=1, **ARR).raw
    assert second.backbone_timings == {} and calls == []  # from the disk cache: no timing, slow never run
    assert torch.equal(a, b)


def test_backbone_path_refusals(model):
    net, cfg = model
    with pytest.raises(ValueError, match=r"backbone_path must be one of \('auto', 'fused', 'eager', 'compile'\)"):
        Pipeline(net, cfg, device="cpu", backbone_path="triton")
    with pytest.raises(ValueError, match="backbone_path='fused' runs the SID UNet on CUDA in fp16; this pipeline has "
                                         "unet on cpu in fp32"):
        Pipeline(net, cfg, device="cpu", precision="fp32", backbone_path="fused")
    nafnet = BackboneConfig(arch="nafnet", options={"width": 8, "enc_blocks": (1, 1, 1, 1), "middle_blocks": 1,
                                                    "dec_blocks": (1, 1, 1, 1)})
    with pytest.raises(ValueError, match="runs the SID UNet on CUDA in fp16; this pipeline has nafnet"):
        Pipeline(nafnet.build(), nafnet, device="cpu", precision="fp32", backbone_path="fused")
    assert Pipeline(net, cfg, device="cpu", precision="fp32")._candidate_names == ["eager"]  # CPU auto: the module
