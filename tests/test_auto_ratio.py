"""ratio="auto": the exposure ratio from the frame itself (engine.inference.auto_ratio).
The bench scene darkened by a known ratio is brightened by about that ratio again (its
normal exposure puts its median near the target); a normally exposed frame gets ratio 1, one
step and a warning, never a white picture; the ratio used is in the result and its metadata."""
import numpy as np
import pytest
import torch

from engine import Pipeline, RawInputWarning
import torch.nn.functional as F

from engine.inference.auto_ratio import HIGHLIGHT, MIDDLE, estimate_ratio
from engine.scene import BLACK_LEVEL, WHITE_LEVEL, clean_packed, noise_parameters, render_scene, short_exposure_cfa

ARR = dict(pattern="RGGB", black_level=BLACK_LEVEL, white_level=WHITE_LEVEL)


@pytest.fixture(scope="module")
def clean():
    return clean_packed(render_scene(512, 768, 0))


def _mosaic(packed: torch.Tensor) -> np.ndarray:
    """Clean packed planes in [0, 1] -> a noiseless uint16 RGGB mosaic at the scene's exposure."""
    dn = (packed[0] * (WHITE_LEVEL - BLACK_LEVEL) + BLACK_LEVEL).round()
    cfa = torch.empty(2 * dn.shape[1], 2 * dn.shape[2])
    cfa[0::2, 0::2], cfa[0::2, 1::2], cfa[1::2, 1::2], cfa[1::2, 0::2] = dn[0], dn[1], dn[2], dn[3]
    return cfa.numpy().astype(np.uint16)


@pytest.mark.parametrize("ratio", [20.0, 100.0, 300.0])
def test_a_darkened_frame_is_brought_back_to_a_normal_exposure(clean, ratio):
    """The noisy short exposure asks for ``ratio`` times what the clean scene's own statistic
    asks for (its median brought to MIDDLE, its highlights to HIGHLIGHT), within 25%."""
    luma = F.avg_pool2d(clean.mean(1, keepdim=True), 8).flatten()
    own = min(MIDDLE / float(luma.quantile(0.5)), HIGHLIGHT / float(luma.quantile(0.995)))
    dark = short_exposure_cfa(clean, ratio=ratio, noise_seed=1)
    got = estimate_ratio(torch.from_numpy(dark.astype(np.int32)), "RGGB", BLACK_LEVEL, WHITE_LEVEL)
    assert 0.75 < got / (ratio * own) < 1.33, (got, ratio, own)


def test_a_normally_exposed_frame_is_only_denoised_with_a_warning(clean):
    torch.manual_seed(0)
    cfg_pipe = Pipeline.from_checkpoint(device="cpu", backbone_path="eager")
    bright = _mosaic((clean * (0.5 / float(clean.mean()))).clamp(0, 1))  # the median well above the target
    with pytest.warns(RawInputWarning, match=r"already exposed normally \(ratio 'auto' found 1\)"):
        out = cfg_pipe(bright, ratio="auto", K=noise_parameters()["K"], **ARR)
    assert out.ratio == 1.0 and out.steps == 1
    assert float(out.raw.mean()) < 0.6  # not a white picture


def test_the_chosen_ratio_is_in_the_result_and_per_frame_in_a_batch(clean, tmp_path):
    pipe = Pipeline.from_checkpoint(device="cpu", backbone_path="eager")
    frames = [short_exposure_cfa(clean, ratio=r, noise_seed=2) for r in (50.0, 200.0)]
    kw = dict(K=noise_parameters()["K"], steps=2, stochastic=False, **ARR)
    batch = pipe(np.stack(frames), ratio="auto", **kw)
    alone = [pipe(f, ratio="auto", **kw) for f in frames]
    assert [b.ratio for b in batch] == [a.ratio for a in alone] and batch[1].ratio > 3 * batch[0].ratio
    assert all(torch.equal(b.raw, a.raw) for b, a in zip(batch, alone))
    path = alone[1].save(tmp_path / "x.png")
    from PIL import Image

    description = Image.open(path).getexif().get(270)
    assert f"exposure ratio {alone[1].ratio:g}" in description
    with pytest.raises(ValueError, match="ratio='auto' chooses the ratio per frame"):
        pipe(frames[0], ratio="auto", schedule=[1, 10, 50], **ARR)


def test_the_statistic_and_its_bounds():
    flat = torch.full((64, 64), BLACK_LEVEL + MIDDLE / 10 * (WHITE_LEVEL - BLACK_LEVEL))
    assert abs(estimate_ratio(flat, "RGGB", BLACK_LEVEL, WHITE_LEVEL) - 10) < 0.05
    black = torch.full((64, 64), float(BLACK_LEVEL))
    assert estimate_ratio(black, "RGGB", BLACK_LEVEL, WHITE_LEVEL) == 10000.0  # no signal: the largest ratio
