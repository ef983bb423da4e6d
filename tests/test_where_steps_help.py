"""The where-steps-help analysis (training/recipes/where_steps_help.py): its bands add up to the
error, its texture thirds split the blocks evenly, and its report finds a gain where one was made."""
import torch

from training.recipes import where_steps_help as analysis


def test_bands_add_up_to_the_error():
    e = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    parts = analysis.bands(e)
    assert len(parts) == len(analysis.BAND_SCALES)
    torch.testing.assert_close(sum(parts), e, rtol=0, atol=1e-5)


def test_texture_thirds_split_the_blocks_evenly_and_follow_the_contrast():
    g = torch.Generator().manual_seed(1)
    amplitude = torch.linspace(0, 1, 12).repeat_interleave(8)  # 12 block columns of rising contrast
    clean = 0.5 + 0.3 * amplitude * torch.randn(1, 1, 96, 96, generator=g).expand(1, 4, 96, 96)
    cls = analysis.texture_classes(clean)
    counts = torch.bincount(cls.flatten(), minlength=3)
    assert counts.min() > 0.3 * cls.numel() and counts.max() < 0.37 * cls.numel()
    assert (cls[..., :8] == 0).all() and (cls[..., -8:] == 2).all()


def test_report_finds_the_gain_where_it_was_made():
    g = torch.Generator().manual_seed(2)
    clean = torch.rand(2, 4, 64, 64, generator=g)
    one = clean + 0.1 * torch.randn(clean.shape, generator=g)
    three = clean + analysis.box_blur(one - clean, 2)  # finest band of the error removed, the rest kept
    lines = analysis.report(clean, one, three)
    finest = float(lines[1].split("gain ")[1].split(" dB")[0])
    coarsest = float(lines[6].split("gain ")[1].split(" dB")[0])
    assert lines[1].startswith("band from  1 px") and lines[6].startswith("band from 32 px")
    assert finest > 10 and abs(coarsest) < 0.5  # the box blurs nest only approximately (bilinear)
    assert abs(analysis.gain_db(2.0, 1.0) - 3.0103) < 1e-4 and analysis.gain_db(1.0, 1.0) == 0.0
