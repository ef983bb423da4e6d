"""Named inference schedules (``engine.inference.loop.SCHEDULES``): SPEC's linspace and the
geometric ``r ** (i / n)``. A model names the one it was trained for (``meta["schedule"]``);
``Pipeline(schedule=None)``, ``evaluate``, the ``steps="auto"`` calibration and the ONNX loop
follow it, an explicit choice wins, a malformed value is refused by name."""
import json

import numpy as np
import pytest
import torch

from engine import Pipeline
from engine.inference.loop import SCHEDULES, exposure_schedule, schedule_from_meta
from engine.models.backbones import BackboneConfig
from engine.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CFG = BackboneConfig(options={"widths": (4, 4, 8, 8, 8)})
ARR = dict(pattern="RGGB", black_level=512, white_level=16383)


def _checkpoint(path, schedule=None):
    torch.manual_seed(0)
    model = CFG.build()
    save_checkpoint(model, CFG, path, meta={"photons": "means", **({} if schedule is None else {"schedule": schedule})})
    return path


def _frame():
    return np.random.default_rng(0).integers(512, 620, (64, 64)).astype(np.uint16)  # below white at x100


def test_geometric_values_and_refusals():
    rho = exposure_schedule(torch.tensor([100.0, 300.0]), 3, "geometric")
    expected = torch.tensor([[1.0, 100 ** (1 / 3), 100 ** (2 / 3), 100.0], [1.0, 300 ** (1 / 3), 300 ** (2 / 3), 300.0]])
    torch.testing.assert_close(rho, expected)
    assert rho[:, 0].tolist() == [1.0, 1.0] and rho[:, -1].tolist() == [100.0, 300.0]  # the ends exactly
    assert torch.equal(exposure_schedule(torch.tensor([300.0]), 3, "linspace"), exposure_schedule(torch.tensor([300.0]), 3))
    assert exposure_schedule(torch.tensor([40.0]), 1, "geometric").tolist() == [[1.0, 40.0]]
    with pytest.raises(ValueError, match=r"schedule must be one of \('linspace', 'geometric'\) or the steps \+ 1"):
        exposure_schedule(torch.tensor([300.0]), 3, "cosine")
    assert schedule_from_meta(None) == "linspace" and schedule_from_meta({"schedule": "geometric"}) == "geometric"
    with pytest.raises(ValueError, match=r"meta\['schedule'\] must be one of .*got 'geo'"):
        schedule_from_meta({"schedule": "geo"})


def test_pipeline_runs_the_models_schedule_unless_told(tmp_path):
    geo = Pipeline.from_checkpoint(_checkpoint(tmp_path / "geo.pt", "geometric"), device="cpu")
    lin = Pipeline.from_checkpoint(_checkpoint(tmp_path / "lin.pt"), device="cpu")
    assert (geo.schedule, lin.schedule) == ("geometric", "linspace")
    run = dict(ratio=100, steps=3, K=2.0, **ARR)
    a, b = geo(_frame(), **run), lin(_frame(), **run)
    torch.testing.assert_close(torch.tensor(a.schedule), exposure_schedule(torch.tensor([100.0]), 3, "geometric")[0])
    assert not torch.equal(a.raw, b.raw)  # the same weights, another schedule
    assert torch.equal(lin(_frame(), schedule="geometric", **run).raw, a.raw)  # explicit wins
    assert torch.equal(geo(_frame(), schedule="linspace", **run).raw, b.raw)
    explicit = exposure_schedule(torch.tensor([100.0]), 3, "geometric")[0].tolist()
    assert torch.equal(lin(_frame(), schedule=explicit, **run).raw, a.raw)
    auto = geo(_frame(), ratio=100, steps="auto", K=2.0, **ARR)  # auto picks the count, the model the schedule
    torch.testing.assert_close(torch.tensor(auto.schedule),
                               exposure_schedule(torch.tensor([100.0]), auto.steps, "geometric")[0])
    with pytest.raises(ValueError, match=r"schedule must be one of \('linspace', 'geometric'\) or explicit"):
        geo(str(tmp_path / "no such file.dng"), ratio=100, schedule="log")  # refused before any file is read
    with pytest.raises(ValueError, match="give an integer steps with explicit exposure multiples"):
        geo(_frame(), ratio=100, steps="auto", K=2.0, schedule=explicit, **ARR)


def test_a_malformed_schedule_is_a_checkpoint_error(tmp_path):
    path = _checkpoint(tmp_path / "bad.pt", "fast")
    with pytest.raises(CheckpointError, match=r"bad.pt: unusable metadata: meta\['schedule'\]"):
        Pipeline.from_checkpoint(path, device="cpu")


def test_the_onnx_loop_follows_the_schedule(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from engine.models.onnx_export import MeansLoop
    from training.cli import main

    path = _checkpoint(tmp_path / "geo.pt", "geometric")
    pipe = Pipeline.from_checkpoint(path, device="cpu", backbone_path="eager")
    cfa = _frame()
    d = torch.from_numpy(cfa.astype(np.float32))
    packed = ((torch.stack([d[0::2, 0::2], d[0::2, 1::2], d[1::2, 1::2], d[1::2, 0::2]]) - 512) / (16383 - 512))[None]
    expected = pipe(cfa, ratio=100.0, steps=3, K=1.5, **ARR).raw
    with torch.no_grad():
        got, other = (MeansLoop(pipe.backbone, pipe.config, 3, schedule=kind)(packed, torch.tensor([100.0]),
                                                                              torch.tensor([1.5]))
                      for kind in ("geometric", "linspace"))
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=1e-5)
    assert (other[0] - expected).abs().max() > 1e-3
    with pytest.raises(ValueError, match="schedule must be one of"):
        MeansLoop(pipe.backbone, pipe.config, 3, schedule="log")
    assert main(["export", "--checkpoint", str(path), "--onnx-loop", str(tmp_path / "l.onnx")]) == 0
    assert "on the geometric schedule" in capsys.readouterr().err
    s = ort.InferenceSession(str(tmp_path / "l.onnx"), providers=["CPUExecutionProvider"])
    out = s.run(None, {"raw": packed.numpy(), "ratio": np.array([100.0], np.float32),
                       "gain": np.array([1.5], np.float32)})[0]
    np.testing.assert_allclose(out[0], expected.numpy(), atol=1e-4, rtol=1e-4)


def test_evaluation_and_calibration_follow_the_schedule(tmp_path, capsys):
    from training.auto_steps import main as calibrate
    from training.evaluate import restore
    from training.holdout_eval import evaluate_methods, holdout_clean, load_models, make_noisy_holdout

    geo, lin = _checkpoint(tmp_path / "geo.pt", "geometric"), _checkpoint(tmp_path / "lin.pt")
    models = load_models([("g", geo), ("l", lin)])
    assert (models["g"][4], models["l"][4]) == ("geometric", "linspace")
    data = make_noisy_holdout(holdout_clean("photo", 2, 32), [100])
    table = evaluate_methods(data, models, steps=(1, 3), baselines=(), fidelity_scale=None)["ratios"][100.0]
    assert table["g 1"]["psnr"] == table["l 1"]["psnr"]  # one step: no schedule between steps
    assert table["g 3"]["psnr"] != table["l 3"]["psnr"]
    p = data.params[100.0]
    a_t = data.noisy[100.0]
    first = torch.cat([a_t, a_t / (p.ratio * p.K).view(-1, 1, 1, 1)], 1)
    model = models["g"][0].eval()
    for name, kind in (("g", "geometric"), ("l", "linspace")):
        y = restore(model, CFG, first, ratio=p.ratio, K=p.K, steps=3, stochastic=False, schedule=kind)
        from training.holdout_eval import _scores

        assert _scores(y, data.clean)[0] == table[f"{name} 3"]["psnr"]

    common = ["--counts", "1", "2", "--ratios", "100", "--n", "2", "--patch", "16"]
    assert calibrate(["--checkpoint", str(geo), "--write", str(tmp_path / "auto.pt"),
                      "--measured", str(tmp_path / "m.json"), *common]) == 0
    assert load_checkpoint(tmp_path / "auto.pt")[2]["schedule"] == "geometric"
    assert json.loads((tmp_path / "m.json").read_text())["schedule"] == "geometric"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # measured on geometric: cannot calibrate a linspace model
        calibrate(["--checkpoint", str(lin), "--measured", str(tmp_path / "m.json"), *common])
    assert e.value.code == 2 and "was measured on the geometric schedule" in capsys.readouterr().err


def test_schedules_constant():
    assert SCHEDULES == ("linspace", "geometric")
