"""engine.inference.backbone_choice and the Pipeline's backbone paths: the fastest
candidate is kept per shape, the choice is cached on disk and read back by a new
pipeline; refusals. (The fused path itself: tests/test_fused_unet.py on CPU,
tests/test_cuda.py in the Pipeline on a GPU.)"""
import json

import numpy as np
import pytest
import torch

from engine import BackboneConfig, Pipeline
import engine.inference.backbone_choice as bc
from engine.inference.backbone_choice import BackboneFallbackWarning, ChoiceCache, choose, time_candidates

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
    # one untimed run each (compile, autotune, cuDNN's search), then interleaved rounds until
    # MIN_SECONDS of timing (1 s / 40 ms = 25 rounds here), at least MIN_ROUNDS
    rounds = (len(clock.runs) - 2) // 2
    assert clock.runs[:2] == ["fused", "eager"] and clock.runs[2:] == ["fused", "eager"] * rounds
    assert bc.MIN_ROUNDS <= rounds <= bc.MAX_ROUNDS and rounds == 25
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
    clock = FakeClock({"x": 2.0})  # slow candidates: MIN_ROUNDS, not MIN_SECONDS, bound the work
    time_candidates(clock.run, ["x"], CPU, clock=clock)
    assert len(clock.runs) == bc.MIN_ROUNDS


def test_a_candidate_that_fails_is_dropped_with_a_warning(tmp_path):
    """A Triton compile error, OutOfResources or a launch failure in the fused candidate
    must not stop the user's run: it is dropped, named with its error, the others go on."""
    clock = FakeClock({"fused": 0.010, "eager": 0.030})

    def run(name):
        if name == "fused":
            raise RuntimeError("Triton Error [CUDA]: an illegal instruction was encountered")
        clock.run(name)

    with pytest.warns(BackboneFallbackWarning, match=r"'fused' dropped: it failed \(RuntimeError: Triton Error"):
        assert choose("k", ["fused", "eager"], run, CPU, ChoiceCache(tmp_path / "c.json"), clock=clock) == ("eager", {})
    assert json.loads((tmp_path / "c.json").read_text())["k"]["choice"] == "eager"  # a new process skips it too


def test_a_candidate_that_fails_while_timed_is_dropped(tmp_path):
    clock = FakeClock({"fused": 0.010, "eager": 0.030})
    calls = {"fused": 0}

    def run(name):
        if name == "fused":
            calls["fused"] += 1
            if calls["fused"] == 3:
                raise RuntimeError("launch failed")
        clock.run(name)

    with pytest.warns(BackboneFallbackWarning, match="failed while being timed"):
        choice, timings = choose("k", ["fused", "eager"], run, CPU, ChoiceCache(None), clock=clock)
    assert choice == "eager" and set(timings) == {"eager"}


def test_a_candidate_with_a_wrong_output_is_dropped():
    """Before a candidate can be chosen, its output must agree with the PyTorch backbone's
    (>= 45 dB PSNR in the deterministic mode)."""
    torch.manual_seed(0)
    truth = torch.rand(1, 4, 16, 16)
    outputs = {"eager": truth, "good": truth + 1e-4, "garbage": torch.rand(1, 4, 16, 16), "nan": truth * float("nan")}
    clock = FakeClock({"eager": 0.03, "good": 0.02, "garbage": 0.001, "nan": 0.001})
    with pytest.warns(BackboneFallbackWarning) as caught:
        choice, timings = choose("k", ["garbage", "good", "nan", "eager"], clock.run, CPU, ChoiceCache(None),
                                 clock=clock, check=outputs.__getitem__)
    assert choice == "good" and set(timings) == {"good", "eager"}
    messages = [str(w.message) for w in caught]
    assert any("'garbage' dropped: its output is" in m and "dB PSNR from the 'eager' backbone's (needs >= 45)" in m
               for m in messages)
    assert any("'nan' dropped: its output is -inf dB" in m for m in messages)


def test_the_reference_failing_and_out_of_memory_propagate():
    def broken_eager(name):
        if name == "eager":
            raise RuntimeError("cuDNN error")

    with pytest.raises(RuntimeError, match="cuDNN error"):
        choose("k", ["fused", "eager"], broken_eager, CPU, ChoiceCache(None))

    def oom(name):
        if name == "fused":
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):  # the engine tiles the frame instead
        choose("k", ["fused", "eager"], oom, CPU, ChoiceCache(None))


def test_cudnn_benchmark_is_on_inside_and_restored():
    before = torch.backends.cudnn.benchmark
    with bc.cudnn_benchmark():
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    return cfg.build(), cfg


def test_pipeline_times_once_per_cpu_and_model_and_a_new_pipeline_reads_the_cache(model, tmp_path, monkeypatch):
    """The Pipeline's glue, on a CPU: two candidates (the module, and the module made slow),
    chosen by timing on a crop of the first frame, once per CPU model, thread count and
    model (not per frame shape: the ranking does not depend on it), read back from disk by
    a second pipeline."""
    monkeypatch.setenv("EXPOSURE_DIFFUSION_CACHE", str(tmp_path))
    net, cfg = model
    calls = []

    def make(pipe):
        pipe._candidate_names = ["slow", "eager"]
        pipe.isolate_choice = False  # the stand-in candidate exists in this process only

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
    first(frame[:32], ratio=50, steps=2, seed=1, **ARR)
    assert len(first.backbone_timings) == 1  # neither the same shape nor a new one is timed again
    first(frame, ratio=50, steps=3, seed=1, **ARR)
    assert len(first.backbone_timings) == 2  # another loop is
    second = make(Pipeline(net, cfg, device="cpu", precision="fp32"))
    calls.clear()
    b = second(frame, ratio=50, steps=2, seed=1, **ARR).raw
    assert second.backbone_timings == {} and calls == []  # from the disk cache: no timing, slow never run
    assert torch.equal(a, b)


def test_backbone_path_refusals(model):
    net, cfg = model
    with pytest.raises(ValueError, match=r"backbone_path must be one of \('auto', 'fused', 'eager', 'compile', "
                                         r"'eager-bf16', 'onnxruntime', .*got 'triton'"):
        Pipeline(net, cfg, device="cpu", backbone_path="triton")
    with pytest.raises(ValueError, match="backbone_path='fused' runs the SID UNet on CUDA in fp16; this pipeline has "
                                         "unet on cpu in fp32"):
        Pipeline(net, cfg, device="cpu", precision="fp32", backbone_path="fused")
    nafnet = BackboneConfig(arch="nafnet", options={"width": 8, "enc_blocks": (1, 1, 1, 1), "middle_blocks": 1,
                                                    "dec_blocks": (1, 1, 1, 1)})
    with pytest.raises(ValueError, match="runs the SID UNet on CUDA in fp16; this pipeline has nafnet"):
        Pipeline(nafnet.build(), nafnet, device="cpu", precision="fp32", backbone_path="fused")
    assert Pipeline(net, cfg, device="cpu", precision="fp32")._candidate_names == ["eager"]  # CPU auto: the module


def _pipeline_with(model, name, candidate):
    """A CPU pipeline offered ``candidate`` (a callable backbone) beside the PyTorch module."""
    net, cfg = model
    pipe = Pipeline(net, cfg, device="cpu", precision="fp32", isolate_choice=False)  # a stand-in of this process
    pipe._candidate_names = [name, "eager"]
    pipe._builders[name] = lambda: candidate(pipe)
    return pipe


@pytest.mark.parametrize("stochastic", [False, True])
def test_the_pipeline_survives_a_failing_or_wrong_candidate(model, tmp_path, monkeypatch, stochastic):
    """Stand-ins for a broken fused path on a CPU: one that raises at its first run, one that
    returns garbage. Either is dropped with a warning and the frame comes out exactly as the
    PyTorch backbone alone makes it (the user's generator untouched by the attempts)."""
    monkeypatch.setenv("EXPOSURE_DIFFUSION_CACHE", str(tmp_path))
    net, cfg = model
    frame = np.random.default_rng(1).integers(512, 3000, (64, 96)).astype(np.uint16)
    kw = dict(ratio=50, steps=2, seed=3, stochastic=stochastic, **ARR)
    expected = Pipeline(net, cfg, device="cpu", precision="fp32")(frame, **kw).raw

    def raising(pipe):
        def run(x):
            raise RuntimeError("triton.runtime.errors.OutOfResources: out of resource: shared memory")
        return run

    def garbage(pipe):
        return lambda x: torch.randn(x.shape[0], 9, *x.shape[2:])

    for name, candidate, reason in (("fused", raising, "it failed"), ("fused", garbage, "its output is")):
        pipe = _pipeline_with(model, name, candidate)
        with pytest.warns(BackboneFallbackWarning, match=f"'fused' dropped: {reason}"):
            got = pipe(frame, **kw).raw
        assert torch.equal(got, expected)
        assert list(pipe._chosen.values()) == ["eager"]
        (tmp_path / "backbone_choice.json").unlink()


def test_a_chosen_candidate_that_fails_later_falls_back_for_good(model, tmp_path, monkeypatch):
    """A path chosen (here: by a cached choice from an earlier process) that fails on a frame
    is dropped for the rest of the pipeline's life; that frame is redone with the PyTorch
    backbone, drawing the same noise as if the failure never happened."""
    monkeypatch.setenv("EXPOSURE_DIFFUSION_CACHE", str(tmp_path))
    net, cfg = model
    frame = np.random.default_rng(2).integers(512, 3000, (64, 96)).astype(np.uint16)
    calls = []

    def flaky(pipe):
        def run(x):
            calls.append(1)
            if len(calls) > 3:  # good while chosen, broken afterwards (e.g. a new shape's launch)
                raise RuntimeError("CUDA error: unspecified launch failure")
            return pipe._net(x)
        return run

    pipe = _pipeline_with(model, "fused", flaky)
    import engine.inference.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "choose_by_running", lambda *a, **k: ("fused", {}))  # as an earlier process chose
    generator = torch.Generator().manual_seed(4)
    kw = dict(ratio=50, steps=2, generator=generator, stochastic=True, **ARR)
    with pytest.warns(BackboneFallbackWarning, match=r"'fused' dropped: it failed on a frame of shape"):
        got = [pipe(frame, **kw).raw for _ in range(3)]  # the second frame fails half-way
    assert pipe._candidate_names == ["eager"] and len(calls) == 4
    eager = Pipeline(net, cfg, device="cpu", precision="fp32")
    generator.manual_seed(4)
    expected = [eager(frame, **kw).raw for _ in range(3)]
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
