"""A model's photon mode (``meta["photons"]``: Poisson draws, SPEC §4, or their means) is the
default of ``Pipeline(stochastic=None)``, of ``enhance``, of ``evaluate`` and of the
``steps="auto"`` calibration; an explicit choice wins; a malformed value is refused by name."""
import json

import numpy as np
import pytest
import torch

from engine import Pipeline
from engine.cli import main as cli_main
from engine.inference.loop import photon_mode_from_meta
from engine.models.backbones import BackboneConfig
from engine.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.dngfactory import make_bayer_dng

CFG = BackboneConfig(options={"widths": (4, 4, 8, 8, 8)})


def _checkpoint(path, photons=None):
    torch.manual_seed(0)
    model = CFG.build()
    with torch.no_grad():  # a residual head that passes the state on: outputs follow the photons
        model.conv10_1.bias[0] = -20.0
    save_checkpoint(model, CFG, path, meta={} if photons is None else {"photons": photons})
    return path


def _frame():
    rng = np.random.default_rng(0)
    return rng.integers(512, 3000, (64, 64)).astype(np.uint16)


def _run(pipe, seed, **kw):
    return pipe(_frame(), ratio=100, steps=3, K=2.0, seed=seed, pattern="RGGB", black_level=512,
                white_level=16383, **kw).raw


def test_meta_values():
    assert photon_mode_from_meta(None) == "draws" and photon_mode_from_meta({}) == "draws"
    assert photon_mode_from_meta({"photons": "means"}) == "means"
    with pytest.raises(ValueError, match=r"meta\['photons'\] must be one of \('draws', 'means'\), got 'mean'"):
        photon_mode_from_meta({"photons": "mean"})


def test_pipeline_runs_the_models_mode_unless_told(tmp_path):
    means = Pipeline.from_checkpoint(_checkpoint(tmp_path / "means.pt", "means"), device="cpu")
    draws = Pipeline.from_checkpoint(_checkpoint(tmp_path / "plain.pt"), device="cpu")
    assert (means.photons, draws.photons) == ("means", "draws")
    assert torch.equal(_run(means, 1), _run(means, 2))  # means: the seed does not matter
    assert not torch.equal(_run(draws, 1), _run(draws, 2))
    assert not torch.equal(_run(means, 1, stochastic=True), _run(means, 2, stochastic=True))
    assert torch.equal(_run(draws, 1, stochastic=False), _run(means, 3))
    with pytest.raises(ValueError, match="stochastic must be True, False or None"):
        _run(means, 1, stochastic="yes")


def test_a_malformed_mode_is_a_checkpoint_error(tmp_path):
    path = _checkpoint(tmp_path / "bad.pt", "sometimes")
    with pytest.raises(CheckpointError, match=r"checkpoint .*bad.pt: unusable metadata: meta\['photons'\]"):
        Pipeline.from_checkpoint(path, device="cpu")


def test_enhance_flags(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "means.pt", "means")
    make_bayer_dng(tmp_path / "a.dng", height=64, width=64, iso=3200)
    outputs = {}
    for name, extra in (("m1", ["--seed", "1"]), ("m2", ["--seed", "2"]), ("d1", ["--seed", "1", "--draws"]),
                        ("d2", ["--seed", "2", "--draws"])):
        assert cli_main(["enhance", str(tmp_path / "a.dng"), "--ratio", "100", "--checkpoint", str(ckpt),
                         "--format", "tiff", "-o", str(tmp_path / name), "--device", "cpu", "-q", *extra]) == 0
        outputs[name] = (tmp_path / name / "a.tiff").read_bytes()
    assert outputs["m1"] == outputs["m2"] and outputs["d1"] != outputs["d2"]
    with pytest.raises(SystemExit) as e:
        cli_main(["enhance", str(tmp_path / "a.dng"), "--ratio", "100", "--deterministic", "--draws", "-o",
                  str(tmp_path / "x")])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_evaluation_and_calibration_follow_the_mode(tmp_path, capsys):
    from training.auto_steps import main as calibrate
    from training.holdout_eval import evaluate_methods, holdout_clean, load_models, make_noisy_holdout

    ckpt = _checkpoint(tmp_path / "means.pt", "means")
    models = load_models([("m", ckpt)])
    assert models["m"][3] == "means"
    data = make_noisy_holdout(holdout_clean("photo", 2, 32), [100])
    scores = [evaluate_methods(data, models, steps=(3,), baselines=(), seed=s, stochastic=None)["ratios"][100.0]
              for s in (1, 2)]
    assert scores[0]["m 3"]["psnr"] == scores[1]["m 3"]["psnr"]  # means: the loop's seed does not matter
    drawn = [evaluate_methods(data, models, steps=(3,), baselines=(), seed=s, stochastic=True)["ratios"][100.0]
             for s in (1, 2)]
    assert drawn[0]["m 3"]["psnr"] != drawn[1]["m 3"]["psnr"]

    plain = _checkpoint(tmp_path / "plain.pt")
    common = ["--counts", "1", "2", "--ratios", "100", "--n", "2", "--patch", "16"]
    assert calibrate(["--checkpoint", str(plain), "--photons", "means", "--write", str(tmp_path / "auto.pt"),
                      "--measured", str(tmp_path / "m.json"), *common]) == 0
    assert load_checkpoint(tmp_path / "auto.pt")[2]["photons"] == "means"
    assert json.loads((tmp_path / "m.json").read_text())["photons"] == "means"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # measurements made with means cannot calibrate draws
        calibrate(["--checkpoint", str(plain), "--photons", "draws", "--measured", str(tmp_path / "m.json"),
                   *common])
    assert e.value.code == 2 and "was measured with Poisson means" in capsys.readouterr().err
    assert calibrate(["--checkpoint", str(tmp_path / "auto.pt"), "--measured", str(tmp_path / "m.json"),
                      *common]) == 0  # the checkpoint's own mode: means, as measured


def test_evaluate_and_calibration_name_a_malformed_mode(tmp_path, capsys):
    from training.auto_steps import main as calibrate
    from training.cli import main as training_main

    bad = _checkpoint(tmp_path / "bad.pt", 3)
    assert training_main(["evaluate", "--checkpoint", str(bad), "--holdout", "1", "--patch", "16",
                          "--baselines", "none", "-q"]) == 2
    assert "checkpoint " + str(bad) + ": unusable metadata: meta['photons']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        calibrate(["--checkpoint", str(bad), "--n", "1", "--patch", "16"])
    assert e.value.code == 2 and "meta['photons'] must be one of" in capsys.readouterr().err
