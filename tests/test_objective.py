"""training.objective (schedules, step weights, unrolled loss) and training.metrics."""
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from engine import BackboneConfig
from kernels import synthesize_noise
from training.metrics import center_crop, illuminance_correction, psnr, ssim
from training.objective import StepWeights, sample_inner_exposures, unrolled_loss


def test_inner_exposures_are_distinct_sorted_integers_in_range():
    g = torch.Generator().manual_seed(0)
    ratio = torch.tensor([300.0, 100.0, 20.0, 157.3] * 50)
    rho = sample_inner_exposures(ratio, 4, g)
    assert rho.shape == (200, 5)
    assert torch.all(rho[:, 0] == 1) and torch.equal(rho[:, -1], ratio)
    inner = rho[:, 1:-1]
    assert torch.all(inner == inner.round()) and torch.all(inner >= 2)
    assert torch.all(inner < ratio[:, None]) and torch.all(inner[:, 1:] > inner[:, :-1])
    # uniform over the candidates: every integer of [2, 19] appears for r = 20
    seen = set(inner[2::4].flatten().tolist())
    assert seen == set(float(v) for v in range(2, 20))
    assert torch.equal(sample_inner_exposures(ratio, 1), torch.stack([torch.ones(200), ratio], 1))


def test_inner_exposures_refuse_too_small_ratio():
    with pytest.raises(ValueError, match="leaves fewer than steps - 1 = 3 integer"):
        sample_inner_exposures(torch.tensor([4.0]), 4)


def test_step_weights():
    w = StepWeights(3)
    assert torch.allclose(w(), torch.full((3,), 1 / 3))
    with torch.no_grad():
        w.raw.copy_(torch.tensor([0.7, 0.6]))
    assert torch.allclose(w(), torch.tensor([0.7, 0.6, -0.3]))
    with torch.no_grad():
        w.raw.copy_(torch.tensor([-0.5, 2.0]))
    assert torch.allclose(w(), torch.tensor([0.0, 1.0, 0.0]))
    fixed = StepWeights(4, learnable=False)
    assert torch.allclose(fixed(), torch.full((4,), 0.25)) and not fixed.raw.requires_grad


def test_unrolled_loss_backpropagates_through_every_step():
    """With all the weight on the last step, the loss still depends on the first
    network evaluation: through the straight-through Poisson draw into later inputs."""
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    net = cfg.build()
    gt = torch.rand(2, 4, 32, 32) * 0.5
    ratio, K = torch.tensor([100.0, 200.0]), torch.tensor([1.0, 3.0])
    first = synthesize_noise(gt, "P+g", ratio=ratio, K=K, sigma_g=2.0, with_photon=True, generator=torch.Generator().manual_seed(1))
    rho = sample_inner_exposures(ratio, 3, torch.Generator().manual_seed(2))
    calls = []
    hook = net.conv1_1.register_forward_hook(lambda m, i, o: calls.append(o) or o.retain_grad())
    loss, per_step = unrolled_loss(net, first, gt, ratio=ratio, K=K, rho=rho, weights=torch.tensor([0.0, 0.0, 1.0]),
                                   with_photon=True, concat_origin=False, generator=torch.Generator().manual_seed(3))
    loss.backward()
    hook.remove()
    assert len(per_step) == 3 and len(calls) == 3
    assert calls[0].grad is not None and calls[0].grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_psnr_and_ssim_match_scikit_image():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 4, 40, 48, generator=g, dtype=torch.float64)
    y = (x + 0.05 * torch.randn(2, 4, 40, 48, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours_p, ours_s = psnr(x, y), ssim(x, y)
    for b in range(2):
        xa, ya = x[b].numpy(), y[b].numpy()
        assert ours_p[b].item() == pytest.approx(peak_signal_noise_ratio(xa, ya, data_range=1.0), abs=1e-9)
        ref = structural_similarity(xa, ya, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert ours_s[b].item() == pytest.approx(ref, abs=1e-6)


def test_illuminance_correction_and_crop():
    gt = torch.rand(1, 4, 600, 700) * 0.9
    y = gt * 0.5
    assert torch.allclose(illuminance_correction(y, gt), gt, atol=1e-6)
    assert center_crop(gt).shape[-2:] == (512, 512)
    assert torch.equal(center_crop(gt)[0, 0, 0, 0], gt[0, 0, 44, 94])
