"""engine.inference.fidelity and the engine's true colour: flat grey and coloured patches at
several levels and ratios come back with their per-plane means (the issue's bounds: |bias| <=
2% at 20% and 50% of white, x100 and x300; <= 5% at 5% of white, x100), measured as the mean
over noise draws of large patches, with the shipped model at 3 steps in its own mode."""
import numpy as np
import pytest
import torch

from engine import Pipeline
from engine.inference.fidelity import low_frequency_fidelity
from engine.scene import BLACK_LEVEL, WHITE_LEVEL, clean_packed, noise_parameters, short_exposure_cfa

PATCHES = {"grey": (1.0, 1.0, 1.0), "red": (1.0, 0.4, 0.3), "blue": (0.3, 0.5, 1.0)}
CASES = [(0.2, 100, 0.02), (0.5, 100, 0.02), (0.2, 300, 0.02), (0.5, 300, 0.02), (0.05, 100, 0.05)]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_checkpoint(device="cpu", backbone_path="eager")


@pytest.mark.parametrize("level, ratio, bound", CASES)
@pytest.mark.parametrize("colour", list(PATCHES))
def test_flat_patches_keep_their_colour(pipe, colour, level, ratio, bound):
    """Mean over 3 noise draws of a 384 x 384 Bayer-site patch (a flat patch's noise then
    moves a plane's mean by well under 1%); without the fidelity step the same model is off by
    up to 10-50% on the dim planes (the test fails with ``fidelity_scale=None``)."""
    img = torch.tensor(PATCHES[colour], dtype=torch.float32)[:, None, None].expand(3, 384, 384) * level
    clean = clean_packed(img)[0]
    K = noise_parameters()["K"]
    means = []
    for seed in range(3):
        cfa = short_exposure_cfa(clean[None], ratio=ratio, noise_seed=seed)
        out = pipe(cfa, ratio=ratio, steps=3, K=K, pattern="RGGB", black_level=BLACK_LEVEL, white_level=WHITE_LEVEL)
        means.append(out.raw.mean((1, 2)))
    bias = torch.stack(means).mean(0) / clean.mean((1, 2)) - 1
    assert bias.abs().max() <= bound, f"per-plane bias {np.round(100 * bias.numpy(), 1)}% (bound {100 * bound:g}%)"


def test_the_correction_keeps_detail_and_leaves_saturation_alone():
    torch.manual_seed(0)
    truth = 0.2 + 0.1 * torch.rand(1, 4, 64, 64)
    noisy = truth + 0.05 * torch.randn(1, 4, 64, 64)  # unbiased data, unclipped
    biased = (truth * 0.8).clamp(0, 1)  # an estimate with the right detail, 20% too dark
    fixed = low_frequency_fidelity(biased, noisy, 32)
    assert (fixed.mean((2, 3)) / truth.mean((2, 3)) - 1).abs().max() < 0.01
    assert (fixed - truth).abs().mean() < 0.25 * (biased - truth).abs().mean()
    # where the estimate is at the end of the near-white ramp, or the sensor clipped, the estimate is kept as it is
    bright = torch.full((1, 4, 32, 32), 0.99)
    assert torch.equal(low_frequency_fidelity(bright, bright * 0.5, 16), bright)
    clipped = torch.zeros(1, 4, 64, 64, dtype=torch.bool)
    clipped[..., :32, :] = True
    kept = low_frequency_fidelity(biased, noisy, 32, sensor_clipped=clipped)
    assert torch.equal(kept[..., :32, :], biased[..., :32, :]) and not torch.equal(kept[..., 32:, :], biased[..., 32:, :])
    with pytest.raises(ValueError, match="same shape"):
        low_frequency_fidelity(biased, noisy[..., :32], 16)
    with pytest.raises(ValueError, match="scale must be an integer >= 2"):
        low_frequency_fidelity(biased, noisy, 1)
    for bad in [(0.99, 0.95), (0.0, 0.9), (0.9, 0.9)]:
        with pytest.raises(ValueError, match="0 < start < end"):
            low_frequency_fidelity(biased, noisy, 16, near_white=bad)


def test_near_white_estimates_are_corrected_in_proportion_to_a_ramp():
    """A flat patch of true 0.894 (the bench chart's white patch) estimated 0.93: below the
    ramp it is brought all the way back, inside it in part, at its end not at all; and the output
    is a continuous function of the estimate (two runtimes' rounding near a threshold moves the
    output by about as much as the estimate, not by the whole correction)."""
    from engine.inference.fidelity import NEAR_WHITE, near_white_weight

    start, end = NEAR_WHITE
    assert 0.9 < start < end < 1.0
    estimate = torch.tensor([0.5, start, (start + end) / 2, end, 1.0])
    assert torch.allclose(near_white_weight(estimate), torch.tensor([1.0, 1.0, 0.5, 0.0, 0.0]))
    data = torch.full((1, 4, 32, 32), 0.894)
    fixed = low_frequency_fidelity(torch.full_like(data, 0.93), data, 16)
    assert torch.allclose(fixed, data, atol=1e-5)
    middle = (start + end) / 2
    half = low_frequency_fidelity(torch.full_like(data, middle), data, 16)
    assert torch.allclose(half, torch.full_like(data, middle - 0.5 * (middle - 0.894)), atol=1e-5)
    nudged = low_frequency_fidelity(torch.full_like(data, middle + 1e-4), data, 16)
    assert (nudged - half).abs().max() < 1e-3


def test_the_pipelines_default_is_the_loop_then_the_fidelity_step():
    """``Pipeline`` (default ``fidelity_scale=32``) = the loop's estimate through
    ``low_frequency_fidelity`` with the frame's unclipped planes; ``fidelity_scale=None`` is
    the loop alone (what tests of the loop's maths compare)."""
    from engine import BackboneConfig
    from kernels import pack_bayer

    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    net = cfg.build()
    cfa = np.random.default_rng(0).integers(512, 700, (64, 96)).astype(np.uint16)
    kw = dict(ratio=50.0, steps=2, K=2.0, stochastic=False, pattern="RGGB", black_level=512, white_level=16383)
    plain = Pipeline(net, cfg, device="cpu", backbone_path="eager", fidelity_scale=None)(cfa, **kw).raw
    default = Pipeline(net, cfg, device="cpu", backbone_path="eager")(cfa, **kw).raw
    noisy = pack_bayer(torch.from_numpy(cfa.astype(np.int32)), "RGGB", 512.0, 16383.0, 50.0, clip=False)
    expected = low_frequency_fidelity(plain[None], noisy, 32, sensor_clipped=noisy >= 50.0 * 0.999)[0]
    assert torch.equal(default, expected) and not torch.equal(default, plain)
    with pytest.raises(ValueError, match="fidelity_scale"):
        Pipeline(net, cfg, device="cpu", fidelity_scale=1)
