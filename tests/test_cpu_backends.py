"""engine.inference.cpu_backends: every installed CPU candidate computes the backbone the
PyTorch module computes; the Pipeline chooses among them on a CPU (held to 45 dB of fp32),
caches the choice per CPU model, thread count and model, can be forced to one, and falls
back when one fails. Optional runtimes' tests skip, saying so, where they are not installed
(``pip install ".[onnx,openvino]"``; CI installs them)."""
import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

from engine import BackboneConfig, Pipeline
from engine.inference import cpu_backends
from engine.inference.backbone_choice import BackboneFallbackWarning
from engine.inference.cpu_backends import CPU_BACKENDS, REDUCED_PRECISION, build, cpu_candidates, installed

ARR = dict(pattern="RGGB", black_level=512, white_level=16383, K=2.0)
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPOSURE_DIFFUSION_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    return cfg.build().eval(), cfg


def _needs(name):
    if not installed(name):
        pytest.skip(f"{name}: {cpu_backends.install_hint(name)}")


@pytest.mark.parametrize("name", [n for n in CPU_BACKENDS if n != "compile"])
def test_every_candidate_computes_the_backbone(model, name):
    """fp32 candidates equal the module to float rounding at two shapes and batch sizes;
    reduced-precision ones stay near it (their bound is the choice's 45 dB check)."""
    _needs(name)
    net, cfg = model
    backbone = build(name, net, cfg)
    for shape in ((1, 8, 32, 48), (2, 8, 48, 32)):
        x = torch.rand(shape).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            expected, got = net(x), backbone(x)
        assert got.shape == expected.shape and got.dtype == torch.float32
        if name in REDUCED_PRECISION:
            assert torch.isfinite(got).all() and (got - expected).abs().mean() < 0.05 * expected.abs().mean() + 1e-3
        else:
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_compile_candidate_computes_the_backbone(model):
    """torch.compile (inductor with freezing) where a C++ compiler is present."""
    import shutil

    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on a CPU needs a C++ compiler")
    net, cfg = model
    x = torch.rand(1, 8, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(build("compile", net, cfg)(x), net(x), atol=1e-4, rtol=1e-4)


def test_candidates_follow_what_is_installed(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("onnxruntime", "openvino") else real(n, *a))
    assert not {n for n in cpu_candidates() if "onnx" in n or "openvino" in n}
    assert cpu_candidates()[0] == "eager" and "compile" in cpu_candidates() and "compile" not in cpu_candidates(False)
    assert "pip install 'exposure-diffusion[openvino]'" in cpu_backends.install_hint("openvino")
    assert "pip install 'exposure-diffusion[onnx]'" in cpu_backends.install_hint("onnxruntime")
    cfg = BackboneConfig(options={"widths": (8, 8, 8, 8, 8)})
    with pytest.raises(ValueError, match=r"backbone_path='openvino' is not available here: the openvino package"):
        Pipeline(cfg.build(), cfg, device="cpu", backbone_path="openvino")


def test_the_graphs_are_made_once_and_cached(model, cache):
    _needs("onnxruntime")
    net, cfg = model
    path = cpu_backends.onnx_graph(net, cfg)
    assert path.parent == cache / "models" and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert cpu_backends.onnx_graph(net, cfg) == path and path.stat().st_mtime_ns == stamp
    other = cfg.build()
    assert cpu_backends.onnx_graph(other, cfg) != path  # other weights, another graph


def _frame():
    return np.random.default_rng(0).integers(512, 3000, (64, 96)).astype(np.uint16)


def test_the_pipeline_chooses_on_a_cpu_and_caches_the_choice(model, cache, monkeypatch):
    """backbone_path="auto" on a CPU: every installed candidate (compile left out here: it
    compiles for ~10 s) is built, checked against fp32 and timed; the result is within 45 dB
    of the PyTorch module's; a second pipeline reads the choice from disk."""
    net, cfg = model
    monkeypatch.setattr(cpu_backends, "cpu_candidates", lambda compile_candidate=True: [
        n for n in CPU_BACKENDS if installed(n) and n != "compile"])
    import engine.inference.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "cpu_candidates", cpu_backends.cpu_candidates)
    kw = dict(ratio=50, steps=2, stochastic=False, **ARR)
    expected = Pipeline(net, cfg, device="cpu", backbone_path="eager")(_frame(), **kw).raw
    first = Pipeline(net, cfg, device="cpu", backbone_path="auto")
    got = first(_frame(), **kw).raw
    mse = float(torch.mean((got.double() - expected.double()) ** 2))
    assert mse == 0 or 10 * math.log10(1 / mse) >= 45
    if len(cpu_backends.cpu_candidates()) == 1:  # no optional runtime here: nothing to choose
        assert first.backbone_timings == {}
        return
    (timings,) = first.backbone_timings.values()
    assert set(timings) <= set(cpu_backends.cpu_candidates()) and "eager" in timings
    stored = json.loads((cache / "backbone_choice.json").read_text())
    (entry,) = stored.values()
    assert entry["choice"] in timings
    second = Pipeline(net, cfg, device="cpu", backbone_path="auto")
    second(_frame(), **kw)
    assert second.backbone_timings == {}  # read from disk


def test_the_cpu_choice_runs_in_a_child_process(model, cache, monkeypatch):
    """By default the candidates are built, checked and timed in a child process: this
    process builds the chosen one alone (the others' runtimes never load here), the child's
    choice is on disk, and the result equals the chosen backend's."""
    net, cfg = model
    names = [n for n in CPU_BACKENDS if installed(n) and n != "compile"]
    if len(names) == 1:
        pytest.skip("no optional CPU runtime installed: nothing to choose (pip install '.[onnx,openvino]')")
    import engine.inference.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "cpu_candidates", lambda compile_candidate=True: names)
    built = []
    real_build = pipeline_module.build_cpu_backend
    monkeypatch.setattr(pipeline_module, "build_cpu_backend", lambda name, *a: built.append(name) or real_build(name, *a))
    kw = dict(ratio=50, steps=2, stochastic=False, **ARR)
    pipe = Pipeline(net, cfg, device="cpu", backbone_path="auto")
    assert pipe.isolate_choice
    got = pipe(_frame(), **kw).raw
    (choice,) = set(pipe._chosen.values())
    (timings,) = pipe.backbone_timings.values()
    assert choice in timings and set(timings) <= set(names)
    assert built == ([] if choice == "eager" else [choice])  # nothing else was built in this process
    (entry,) = json.loads((cache / "backbone_choice.json").read_text()).values()
    assert entry["choice"] == choice
    alone = Pipeline(net, cfg, device="cpu", backbone_path=choice)(_frame(), **kw).raw
    assert torch.equal(got, alone)


def test_a_crash_in_the_choice_process_falls_back_to_eager(model, cache, monkeypatch):
    """A candidate runtime that kills the choice's child (here the backbone itself, with
    SIGSEGV, in any process but this one) costs the caller nothing but a warning: the frame
    is made with the PyTorch module, and the failure is remembered on disk."""
    from tests.helpers import CrashesInAChildProcess

    net, cfg = model
    import engine.inference.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "cpu_candidates", lambda compile_candidate=True: ["eager", "eager-bf16"])
    crashing = CrashesInAChildProcess(net)
    kw = dict(ratio=50, steps=2, stochastic=False, **ARR)
    pipe = Pipeline(crashing, cfg, device="cpu", backbone_path="auto")
    with pytest.warns(BackboneFallbackWarning, match=r"choice \(in a child process\) failed: it ended with exit code "
                                                     r"-11.*going on with 'eager'"):
        got = pipe(_frame(), **kw).raw
    assert list(pipe._chosen.values()) == ["eager"]
    (entry,) = json.loads((cache / "backbone_choice.json").read_text()).values()
    assert entry["choice"] == "eager"
    torch.testing.assert_close(got, Pipeline(net, cfg, device="cpu", backbone_path="eager")(_frame(), **kw).raw)


@pytest.mark.parametrize("where", ["a function", "the caller's script", "no Python to start"])
def test_a_module_the_child_cannot_have_is_chosen_for_here(model, cache, monkeypatch, where):
    """A backbone whose class lives inside a function (it cannot be pickled) or in a module
    only the caller has (like a class in the user's own script, which another process cannot
    import), or a process that cannot start a child Python (a frozen application), is chosen
    for in this process, without a warning: nothing is lost but the isolation."""
    import types
    import warnings

    import engine.inference.choice_process as choice_process

    net, cfg = model

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    if where == "the caller's script":
        script = types.ModuleType("users_own_script")  # importable here only
        Wrapped.__module__, Wrapped.__qualname__ = script.__name__, "Wrapped"
        script.Wrapped = Wrapped
        monkeypatch.setitem(sys.modules, script.__name__, script)
    backbone = Wrapped(net)
    if where == "no Python to start":
        monkeypatch.setattr(choice_process.sys, "executable", "/nonexistent/python")
        backbone = torch.nn.Sequential(net)  # picklable and importable: only the start fails
    pipe = Pipeline(backbone, cfg, device="cpu", backbone_path="auto")
    pipe._candidate_names = ["eager", "twin"]
    pipe._builders["twin"] = lambda: pipe._net  # a stand-in that exists in this process only
    kw = dict(ratio=50, steps=2, stochastic=False, **ARR)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackboneFallbackWarning)
        got = pipe(_frame(), **kw).raw
    (timings,) = pipe.backbone_timings.values()
    assert set(timings) == {"eager", "twin"}  # timed here: the child would not know "twin"
    torch.testing.assert_close(got, Pipeline(net, cfg, device="cpu", backbone_path="eager")(_frame(), **kw).raw)


def test_a_forced_cpu_backend_runs_alone(model):
    _needs("onnxruntime")
    net, cfg = model
    kw = dict(ratio=50, steps=2, stochastic=False, **ARR)
    forced = Pipeline(net, cfg, device="cpu", backbone_path="onnxruntime")
    assert forced._candidate_names == ["onnxruntime"]
    expected = Pipeline(net, cfg, device="cpu", backbone_path="eager")(_frame(), **kw).raw
    torch.testing.assert_close(forced(_frame(), **kw).raw, expected, atol=1e-4, rtol=1e-4)


def test_a_failing_cpu_candidate_falls_back(model, monkeypatch):
    net, cfg = model
    import engine.inference.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "cpu_candidates", lambda compile_candidate=True: ["eager", "openvino"])

    def broken(name, *a):
        raise RuntimeError(f"{name}: could not load the plugin")

    monkeypatch.setattr(pipeline_module, "build_cpu_backend", broken)
    pipe = Pipeline(net, cfg, device="cpu", backbone_path="auto", isolate_choice=False)  # the failure is this process's
    kw = dict(ratio=50, steps=2, stochastic=False, **ARR)
    with pytest.warns(BackboneFallbackWarning, match=r"'openvino' dropped: it failed \(RuntimeError: openvino: could"):
        got = pipe(_frame(), **kw).raw
    torch.testing.assert_close(got, Pipeline(net, cfg, device="cpu", backbone_path="eager")(_frame(), **kw).raw)


def test_an_explicit_precision_runs_the_module_in_it(model):
    net, cfg = model
    assert Pipeline(net, cfg, device="cpu", precision="fp32", backbone_path="auto")._candidate_names == ["eager"]
    assert Pipeline(net, cfg, device="cpu", backbone_path="auto")._candidate_names == cpu_candidates()


def test_a_frame_over_the_memory_budget_runs_the_backbone_in_tiles(model, monkeypatch):
    """On a CPU a frame whose backbone activations would not fit ``memory_budget`` runs the
    backbone tile by tile (one radius of context per step); the result stays far within the
    45 dB bound of the untiled one. ``memory_budget=None`` never tiles."""
    import engine.inference.pipeline as pipeline_module
    from engine.inference.tiling import TiledBackbone

    net, cfg = model
    frame = np.random.default_rng(5).integers(512, 3000, (1024, 1280)).astype(np.uint16)
    kw = dict(ratio=50, steps=2, stochastic=False, **ARR)
    whole = Pipeline(net, cfg, device="cpu", backbone_path="eager", memory_budget=None, fidelity_scale=None)(frame, **kw).raw
    tiles = []
    real = TiledBackbone.__call__

    def counting(self, x):
        tiles.append(self.tile)
        return real(self, x)

    monkeypatch.setattr(TiledBackbone, "__call__", counting)
    budget = pipeline_module.PROCESS_BASE_BYTES + 512 * 640 * 4 * pipeline_module.LOOP_TENSOR_CHANNELS + 10e6
    # 10 MB for activations
    tiled = Pipeline(net, cfg, device="cpu", backbone_path="eager", memory_budget=budget,
                     fidelity_scale=None)(frame, **kw).raw  # the loop alone: the fidelity step would hide the tiles
    assert tiles and all(t < 640 for t in tiles)  # the 512 x 640 packed frame did not fit whole
    mse = float(torch.mean((tiled.double() - whole.double()) ** 2))
    assert mse > 0 and 10 * math.log10(1 / mse) >= 55
    tiles.clear()
    Pipeline(net, cfg, device="cpu", backbone_path="eager", memory_budget=None)(frame, **kw)
    assert tiles == []
    with pytest.raises(ValueError, match="memory_budget"):
        Pipeline(net, cfg, device="cpu", memory_budget=0)


def test_the_memory_plan_depends_on_the_frame_shape_alone():
    """With the default budget the SID UNet (width 32) runs a 3 MP raw's packed frame whole and
    a 12 MP one in tiles, whatever the process holds: the plan reads no resident memory, so a
    frame gives the same output in a fresh process and in a long-running one."""
    import engine.inference.pipeline as pipeline_module
    from engine.inference.tiling import TiledBackbone

    cfg = BackboneConfig()
    net = cfg.build().eval()
    assert cfg.options["widths"][0] == 32
    pipe = Pipeline(net, cfg, device="cpu", backbone_path="eager")
    assert pipe.memory_budget == pipeline_module.CPU_MEMORY_BUDGET == 1.5e9
    assert not hasattr(pipeline_module, "resident_bytes")
    assert pipe._within_memory_budget(net, torch.empty(1, 8, 720, 1072)) is net  # 3 MP
    plans = [pipe._within_memory_budget(net, torch.empty(1, 8, 1424, 2128)) for _ in range(2)]  # 12 MP
    assert all(isinstance(p, TiledBackbone) for p in plans) and plans[0].tile == plans[1].tile < 1424
    # activations + loop tensors + the process's base stay within the budget
    tile = plans[0].tile
    planned = (pipeline_module.PROCESS_BASE_BYTES + 4 * 1424 * 2128 * pipeline_module.LOOP_TENSOR_CHANNELS
               + pipeline_module.ACTIVATION_BYTES["eager"] * tile * tile)
    assert planned <= pipe.memory_budget
    # each backend with its own activation figure: ONNX Runtime's arena needs smaller tiles
    ort = pipe._within_memory_budget(net, torch.empty(1, 8, 1424, 2128), "onnxruntime")
    assert isinstance(ort, TiledBackbone) and ort.tile < tile
    assert set(pipeline_module.ACTIVATION_BYTES) == set(CPU_BACKENDS)


@pytest.mark.parametrize("h, w", [(1424, 2128), (712, 1064), (600, 577)])
def test_tiles_are_cut_evenly_and_cover_the_frame_once_blended(h, w):
    """``run_tiled`` cuts each axis into as many equal cores as the largest tile needs (no
    last tile that mostly repeats its neighbour): at 12 MP with 672-pixel tiles (48 of
    context) the tiles hold < 1.45x the frame's pixels (1.8x with cores of the largest
    size); every pixel gets weight 1 in the blend, so a constant backbone stays constant."""
    from engine.inference.tiling import run_tiled

    shapes = []

    def backbone(t):
        shapes.append(tuple(t.shape[-2:]))
        return torch.full((1, 1, *t.shape[-2:]), 0.25)

    out = run_tiled(backbone, torch.zeros(1, 1, h, w), tile=672, margin=48, out_channels=1)
    assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-6)
    assert all(max(s) <= 672 for s in shapes)
    if (h, w) == (1424, 2128):
        assert len(shapes) == 12 and sum(a * b for a, b in shapes) / (h * w) < 1.45
    for sides in ({s[0] for s in shapes}, {s[1] for s in shapes}):  # per axis: equal up to the grid
        assert max(sides) - min(sides) <= 16 + 48  # and the margin a frame edge leaves out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the thread's signal stack through libc (Linux)")
def test_openvino_leaves_the_callers_signal_stack_alone(model):
    """OpenVINO's CPU plugin installs an alternate signal stack on the thread that runs it and
    frees it later without removing it; on the main thread the next handled signal (a child
    exiting under a DataLoader's SIGCHLD handler) then crashed the process (SIGSEGV, seen in the
    bench). The candidate runs OpenVINO on a thread of its own."""
    _needs("openvino")
    import ctypes

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    def altstack():
        current = StackT()
        ctypes.CDLL(None).sigaltstack(None, ctypes.byref(current))
        return current.ss_sp, current.ss_flags, current.ss_size

    net, cfg = model
    before = altstack()
    backbone = build("openvino", net, cfg)
    backbone(torch.rand(1, 8, 32, 32))
    assert altstack() == before


def test_cached_cpu_timings_are_keyed_by_the_instruction_sets(monkeypatch):
    # One generic model name ("Intel(R) Xeon(R) Processor") covers CPUs with and without AMX,
    # whose fastest backends differ: a timing cached on one must not decide for the other.
    from engine.inference import cpu_features
    from engine.inference.backbone_choice import device_fingerprint

    keys = []
    for flags in ({"avx2", "avx512f", "avx512_vnni"}, {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}):
        monkeypatch.setattr(cpu_features, "cpu_flags", lambda flags=flags: frozenset(flags | {"sse2", "fpu"}))
        monkeypatch.setattr(cpu_features, "cpu_model_name", lambda: "Intel(R) Xeon(R) Processor")
        cpu_features.cpu_isa_summary.cache_clear()
        keys.append(device_fingerprint(torch.device("cpu")))
    cpu_features.cpu_isa_summary.cache_clear()
    assert keys[0] != keys[1]
    assert "[avx2+avx512_vnni+avx512f]" in keys[0]  # only the speed-relevant flags, sorted
