"""Textured-leaves scenes (training.textured_leaves): determinism, textures with the scales they
are meant to have, the bank, the dataset, and the training source."""
import math

import numpy as np
import pytest
import torch

from training.data import build_training_dataset
from training.deadleaves_scenes import DeadLeavesDataset, finish_scene, image_seed
from training.scene_stats import scene_statistics
from training.textured_leaves import (TEXTURES, TexturedLeavesDataset, _fractal_field, leaf_texture, main,
                                      render_bank, render_textured_leaves)


def test_an_image_is_a_pure_function_of_its_seed():
    a = render_textured_leaves(3, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_textured_leaves(3, 64))
    assert not np.array_equal(a, render_textured_leaves(4, 64))


@pytest.mark.parametrize("kind", TEXTURES)
def test_every_texture_fills_its_box_with_colours_in_range(kind):
    rng = np.random.default_rng(0)
    colour = np.array([0.6, 0.4, 0.3], np.float32)
    t = leaf_texture(rng, kind, 40, 56, colour)
    assert t.shape == (40, 56, 3) and t.dtype == np.float32
    assert t.min() >= 0 and t.max() <= 1
    if kind != "flat":  # a texture has structure: a visible spread of luminance
        assert t.mean(axis=2).std() > 0.02, kind


def test_an_unknown_texture_is_refused():
    with pytest.raises(ValueError, match="texture must be one of"):
        leaf_texture(np.random.default_rng(0), "velvet", 8, 8, np.ones(3, np.float32))


@pytest.mark.parametrize("beta", [1.5, 2.5])
def test_the_fractal_field_has_the_power_spectrum_asked_for(beta):
    field = torch.from_numpy(np.stack([_fractal_field(np.random.default_rng(s), 128, 128, beta) for s in range(4)]))
    assert float(field.std()) == pytest.approx(1.0, rel=1e-3)
    grey = (0.5 + 0.1 * field)[:, None].expand(4, 4, 128, 128)
    assert scene_statistics(grey)["spectrum_slope"] == pytest.approx(beta, abs=0.25)


@pytest.mark.parametrize("seed", [0, 4])
def test_the_weave_holds_its_variance_at_the_thread_scale(seed):
    # threads every `period` px along two axes, crossing over and under: most of the luminance's
    # power lies between 0.4 / period (the over-under repeat and its shading) and 2.2 / period
    period = math.exp(np.random.default_rng(seed).uniform(math.log(3.0), math.log(20.0)))  # the weave's first draw
    t = leaf_texture(np.random.default_rng(seed), "weave", 128, 128, np.array([0.7, 0.5, 0.4], np.float32)).mean(axis=2)
    power = np.abs(np.fft.fft2(t - t.mean())) ** 2
    f = np.hypot(np.fft.fftfreq(128)[:, None], np.fft.fftfreq(128)[None, :])
    ring = (f >= 0.4 / period) & (f <= 2.2 / period)
    assert power[ring].sum() > 0.5 * power.sum() and ring.mean() < 0.35


def test_textured_leaves_put_more_variance_at_fine_scales_than_flat_leaves(monkeypatch):
    # the family's purpose (module docstring): detail inside the leaves. The same layouts with every
    # leaf flat hold less of their variance in the 3 finest octaves (2-16 packed pixels).
    import training.textured_leaves as tl

    def scenes():
        return torch.stack([finish_scene(torch.from_numpy(tl.render_textured_leaves(s, 128)),
                                         torch.Generator().manual_seed(s), 64) for s in range(6)])

    textured = scene_statistics(scenes())
    monkeypatch.setattr(tl, "TEXTURE_WEIGHTS", (1.0, 0, 0, 0, 0, 0))
    monkeypatch.setattr(tl, "SMALL_TEXTURES", ("flat", "flat"))
    flat = scene_statistics(scenes())
    assert sum(textured["band_energy"][:3]) > sum(flat["band_energy"][:3]) + 0.05


def test_a_bank_and_its_dataset(tmp_path):
    path = render_bank(tmp_path / "bank.npy", 3, size=48, seed=1)
    bank = np.load(path)
    assert bank.shape == (3, 48, 48, 3) and bank.dtype == np.uint8
    assert np.array_equal(bank[0], np.load(render_bank(tmp_path / "again.npy", 1, size=48, seed=1))[0])
    ds = TexturedLeavesDataset(path, 10, patch=16, seed=1)
    a = ds[(0, 3)]
    assert a["raw"].shape == (4, 16, 16) and a["raw"].dtype == torch.uint16
    assert a["source"] == "textured leaves" and torch.equal(a["raw"], ds[(0, 3)]["raw"])
    assert not torch.equal(a["raw"], ds[(1, 3)]["raw"])
    # a seed stream of its own: the same bank served as dead leaves gives other scenes
    assert not torch.equal(a["raw"], DeadLeavesDataset(path, 10, patch=16, seed=1)[(0, 3)]["raw"])
    with pytest.raises(ValueError, match="smaller than 2 x patch"):
        TexturedLeavesDataset(path, 10, patch=32)
    with pytest.raises(ValueError, match="n >= 1 images of size >= 16"):
        render_bank(tmp_path / "none.npy", 0)


def test_the_training_set_mixes_dead_and_textured_leaves(tmp_path):
    path = render_bank(tmp_path / "bank.npy", 2, size=48)
    data = build_training_dataset(deadleaves_bank=path, textured_bank=path, procedural=False, patch=16)
    sources = {data[(0, i)]["source"] for i in range(len(data))}
    assert sources == {"deadleaves", "textured leaves"}
    alone = build_training_dataset(textured_bank=path, procedural=False, patch=16)
    assert {alone[(0, i)]["source"] for i in range(8)} == {"textured leaves"}


def test_the_command_writes_a_bank_and_keeps_an_existing_one(tmp_path, capsys):
    out = tmp_path / "bank.npy"
    assert main(["--out", str(out), "--n", "2", "--size", "32"]) == 0
    assert np.load(out).shape == (2, 32, 32, 3)
    before = out.read_bytes()
    assert main(["--out", str(out), "--n", "1", "--size", "32"]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["--out", str(out), "--n", "1", "--size", "32", "--overwrite"]) == 0
    assert np.load(out).shape == (1, 32, 32, 3)


def test_textured_scenes_as_an_evaluation_set(tmp_path, capsys):
    from training.holdout_eval import holdout_clean

    x = holdout_clean("textured", 3, 16, seed=2)
    assert x.shape == (3, 4, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, holdout_clean("textured", 3, 16, seed=2))
    assert not torch.equal(x, holdout_clean("textured", 3, 16, seed=3))
    # the evaluate command takes them by name
    from engine import BackboneConfig
    from engine.models.checkpoint import save_checkpoint
    from training.cli import main as cli_main

    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    save_checkpoint(cfg.build(), cfg, tmp_path / "m.pt")
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--scenes", "textured", "--holdout", "2",
                     "--patch", "16", "--steps", "1", "--baselines", "none", "--ratios", "100", "-q"]) == 0
    assert "textured hold-out: 2 scenes" in capsys.readouterr().out


def test_no_evaluation_scene_is_a_training_image(tmp_path):
    # the textured hold-out draws its images from a stream (tag 207) that neither a bank (206)
    # nor the GPU recipe's pool (its own tag) draws from: the same (seed, index) gives other images
    import training.textured_leaves as tl
    from training.recipes import gpu_train

    bank = np.load(render_bank(tmp_path / "bank.npy", 3, size=32, seed=0))
    held = [tl.render_textured_leaves(image_seed(0, tl._TAG_TEXTURED_HOLDOUT, i), 32) for i in range(3)]
    assert all(not np.array_equal(b, h) for b in bank for h in held)
    assert len({tl._TAG_TEXTURED, tl._TAG_TEXTURED_HOLDOUT, gpu_train._TAG_POOL}) == 3
