"""engine.models.onnx_export: the backbone and the whole means-mode loop as ONNX graphs that
any ONNX runtime runs without Python of ours. ONNX Runtime's outputs are compared with
PyTorch's (fp32, within 1e-4) at two shapes, for every checkpoint format and architecture we
load; the loop graph with the engine's own result. Skips, saying so, without onnxruntime."""
import importlib.util

import numpy as np
import pytest
import torch

from engine import BackboneConfig, Pipeline
from engine.models.checkpoint import export_public, load_checkpoint, save_checkpoint
from engine.models.onnx_export import MeansLoop, export_backbone, export_loop

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                reason="onnxruntime is not installed (pip install '.[onnx]')")
ARR = dict(pattern="RGGB", black_level=512, white_level=16383)
SHAPES = [(1, 32, 48), (2, 48, 64)]


def session(data: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _unet():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 16, 16, 32, 32)})
    return cfg.build().eval(), cfg


def _nafnet():
    torch.manual_seed(1)
    cfg = BackboneConfig(arch="nafnet", options={"width": 8, "enc_blocks": (1, 1, 1, 1), "middle_blocks": 1,
                                                 "dec_blocks": (1, 1, 1, 1)})
    return cfg.build().eval(), cfg


@pytest.mark.parametrize("make, fmt", [(_unet, "ours"), (_unet, "public"), (_nafnet, "ours")])
def test_the_backbone_graph_equals_pytorch(make, fmt, tmp_path):
    net, cfg = make()
    path = tmp_path / "m.pt"
    if fmt == "ours":
        save_checkpoint(net, cfg, path)
    else:
        export_public(net, path)
    loaded, loaded_cfg, _ = load_checkpoint(path)
    data = export_backbone(loaded, loaded_cfg, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == data
    s = session(data)
    assert [i.name for i in s.get_inputs()] == ["input"] and [o.name for o in s.get_outputs()] == ["output"]
    assert s.get_inputs()[0].shape == ["N", cfg.in_channels, "H", "W"]
    import onnx

    assert onnx.load_from_string(data).opset_import[0].version >= 17
    for n, h, w in SHAPES:
        x = torch.rand(n, cfg.in_channels, h, w)
        with torch.no_grad():
            expected = loaded(x).numpy()
        got = s.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def _packed(cfa: np.ndarray) -> torch.Tensor:
    """The packed, black-subtracted, normalised planes R, G1, B, G2 of an RGGB mosaic."""
    d = torch.from_numpy(cfa.astype(np.float32))
    planes = torch.stack([d[0::2, 0::2], d[0::2, 1::2], d[1::2, 1::2], d[1::2, 0::2]])
    return ((planes - 512) / (16383 - 512))[None]


def test_the_loop_graph_equals_the_engine():
    """The shipped model's 3-step means-mode loop as one graph: ONNX Runtime gives what
    ``Pipeline(..., stochastic=False)`` gives from the same raw frame, at two frame sizes
    (one needing the graph's own padding)."""
    pipe = Pipeline.from_checkpoint(device="cpu", backbone_path="eager")
    net, cfg = pipe.backbone, pipe.config
    s = session(export_loop(net, cfg, steps=3))
    assert [i.name for i in s.get_inputs()] == ["raw", "ratio", "gain"]
    for h, w, ratio, gain in ((64, 96, 100.0, 2.0), (74, 106, 300.0, 0.7)):
        cfa = np.random.default_rng(h).integers(512, 900, (h, w)).astype(np.uint16)
        expected = pipe(cfa, ratio=ratio, steps=3, K=gain, stochastic=False, **ARR).raw
        got = s.run(None, {"raw": _packed(cfa).numpy(), "ratio": np.array([ratio], np.float32),
                           "gain": np.array([gain], np.float32)})[0]
        assert got.shape == (1, 4, h // 2, w // 2)
        np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-4, rtol=1e-4)


def test_the_loop_module_is_the_engine_loop_and_refuses_bad_steps():
    net, cfg = _unet()
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 100\], got 0"):
        MeansLoop(net, cfg, 0)
    pipe = Pipeline(net, cfg, device="cpu", backbone_path="eager")
    cfa = np.random.default_rng(3).integers(512, 900, (48, 64)).astype(np.uint16)
    for steps in (1, 2):
        expected = pipe(cfa, ratio=50.0, steps=steps, K=1.5, stochastic=False, **ARR).raw
        with torch.no_grad():
            got = MeansLoop(net, cfg, steps)(_packed(cfa), torch.tensor([50.0]), torch.tensor([1.5]))
        torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)


def test_the_export_command_writes_both_graphs(tmp_path, capsys):
    """``exposure-diffusion export --onnx / --onnx-loop`` (the shipped model by default): both
    files run in ONNX Runtime; a draws-mode model's loop, a missing output and an existing
    file are refused before any work."""
    from training.cli import main

    assert main(["export", "--onnx", str(tmp_path / "b.onnx"), "--onnx-loop", str(tmp_path / "l.onnx"),
                 "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "the backbone" in err and "the 2-step loop with Poisson means" in err
    raw = np.random.default_rng(0).uniform(0, 0.01, (1, 4, 40, 56)).astype(np.float32)
    out = session((tmp_path / "l.onnx").read_bytes()).run(
        None, {"raw": raw, "ratio": np.array([100.0], np.float32), "gain": np.array([2.0], np.float32)})[0]
    assert out.shape == (1, 4, 40, 56) and 0 <= out.min() and out.max() <= 1
    b = session((tmp_path / "b.onnx").read_bytes()).run(None, {"input": np.zeros((1, 8, 32, 32), np.float32)})[0]
    assert b.shape == (1, 9, 32, 32)
    assert main(["export", "--onnx", str(tmp_path / "b.onnx")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export"]) == 2
    assert "nothing to write" in capsys.readouterr().err
    net, cfg = _unet()
    save_checkpoint(net, cfg, tmp_path / "draws.pt")
    assert main(["export", "--checkpoint", str(tmp_path / "draws.pt"), "--onnx-loop", str(tmp_path / "d.onnx")]) == 2
    assert "runs with draws" in capsys.readouterr().err and not (tmp_path / "d.onnx").exists()
