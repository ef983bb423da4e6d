"""The leaves scenes' illumination field: a whole frame (as every model so far was trained) or
a crop of one (``train --illumination crop``)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import deadleaves_scenes
from training.data import build_training_dataset
from training.deadleaves_scenes import DeadLeavesDataset, _field_window, _light_field, finish_scene
from training.textured_leaves import TexturedLeavesDataset, render_bank


def _field_before_the_option(g: torch.Generator, side: int) -> torch.Tensor:
    """The field as written before ``illumination`` existed (sessions 4-11), for comparison."""
    c = (torch.arange(side, dtype=torch.float32) + 0.5) / side - 0.5
    gy, gx = (2.0 * torch.rand(2, generator=g) - 1.0).tolist()
    coarse = torch.randn(1, 1, 4, 4, generator=g) * 0.5
    coarse = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)[0]
    return torch.exp(gy * 2.0 * c[:, None] + gx * 2.0 * c[None, :] + coarse)


@pytest.mark.parametrize("side", [32, 192, 256])
def test_the_frame_field_is_the_one_every_model_was_trained_on(side):
    for seed in range(4):
        g_new, g_old = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(_light_field(g_new, side), _field_before_the_option(g_old, side))
        # and it leaves the generator where it did: the lights and exposure after it are unchanged
        assert torch.equal(torch.rand(3, generator=g_new), torch.rand(3, generator=g_old))


@pytest.mark.parametrize("i0, j0", [(0, 0), (40, 8), (96, 96)])
def test_a_crop_sees_its_window_of_the_frame_field(i0, j0):
    side, width = 32, 128
    g = torch.Generator().manual_seed(11)
    gy, gx = (2.0 * torch.rand(2, generator=g) - 1.0).tolist()
    knots = torch.randn(1, 1, 4, 4, generator=g) * 0.5
    frame = _field_window(gy, gx, knots, width)
    window = _field_window(gy, gx, knots, side, side / width, i0 / width, j0 / width)
    torch.testing.assert_close(window, frame[:, i0:i0 + side, j0:j0 + side], rtol=2e-5, atol=0)


def test_crops_are_lit_more_evenly_than_frames():
    side, frame_sd, crop_sd = 192, [], []
    for seed in range(64):
        frame_sd.append(float(_light_field(torch.Generator().manual_seed(seed), side, "frame").log().std()))
        crop = _light_field(torch.Generator().manual_seed(seed), side, "crop")
        crop_sd.append(float(crop.log().std()))
        assert crop.shape == (1, side, side) and bool(torch.isfinite(crop).all()) and float(crop.min()) > 0
    # a crop is a window of the same frame field (the frame draws come first), mostly a small one:
    # log sd ~0.2 against ~0.6 (medians)
    assert np.median(crop_sd) < 0.5 * np.median(frame_sd)
    assert np.median(frame_sd) > 0.4


def test_a_crop_of_a_frame_as_wide_as_itself_is_the_frame(monkeypatch):
    monkeypatch.setattr(deadleaves_scenes, "MAX_FRAME_WIDTH", 64)
    for seed in range(3):
        crop = _light_field(torch.Generator().manual_seed(seed), 64, "crop")
        assert torch.equal(crop, _light_field(torch.Generator().manual_seed(seed), 64, "frame"))


def test_the_option_reaches_the_scenes_and_is_checked(tmp_path):
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    a = finish_scene(rgb, torch.Generator().manual_seed(5), 32, "crop")
    assert a.shape == (4, 32, 32) and torch.equal(a, finish_scene(rgb, torch.Generator().manual_seed(5), 32, "crop"))
    assert not torch.equal(a, finish_scene(rgb, torch.Generator().manual_seed(5), 32))
    with pytest.raises(ValueError, match=r"illumination must be one of \('frame', 'crop'\), got 'sun'"):
        finish_scene(rgb, torch.Generator().manual_seed(5), 32, "sun")
    path = render_bank(tmp_path / "bank.npy", 2, size=48)
    with pytest.raises(ValueError, match="illumination must be one of"):
        DeadLeavesDataset(path, 4, patch=16, illumination="Crop")
    data = build_training_dataset(deadleaves_bank=path, textured_bank=path, procedural=False, patch=16,
                                  illumination="crop")
    leaves = [s for s in data.sources if isinstance(s, DeadLeavesDataset)]
    assert len(leaves) == 2 and any(isinstance(s, TexturedLeavesDataset) for s in leaves)
    assert all(s.illumination == "crop" for s in leaves)
    frame = DeadLeavesDataset(path, 4, patch=16, seed=3)
    crop = DeadLeavesDataset(path, 4, patch=16, seed=3, illumination="crop")
    assert frame.illumination == "frame" and not torch.equal(frame[(0, 1)]["raw"], crop[(0, 1)]["raw"])


def test_the_train_command_refuses_an_unknown_illumination(capsys):
    from training.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--out", "unused", "--illumination", "window", "--max-steps", "1"])
    assert e.value.code == 2 and "invalid choice: 'window'" in capsys.readouterr().err


def test_the_gpu_recipe_pool_lights_its_leaves_as_asked(tmp_path):
    from training.recipes.gpu_train import main, render_pool

    bank = render_bank(tmp_path / "bank.npy", 2, size=32)
    frame = render_pool(6, 16, 1, str(bank), 1, textured=True)
    crop = render_pool(6, 16, 1, str(bank), 1, textured=True, illumination="crop")
    assert frame.shape == crop.shape == (6, 4, 16, 16) and frame.dtype == torch.uint16
    # scenes 0 and 3 are procedural (no illumination field), the others leaves
    for i in range(6):
        assert torch.equal(frame[i], crop[i]) == (i % 3 == 0), i
    assert torch.equal(crop, render_pool(6, 16, 1, str(bank), 1, textured=True, illumination="crop"))
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), "--illumination", "window"])
