"""The anchored-states screen (training/recipes/step_fidelity_screen.py): with the anchoring taken
out it is the ordinary unrolled loss and the ordinary restoration, a 1-step run is never changed,
and the anchoring moves the later states (its correction carries no gradient)."""
import pytest
import torch

from engine.inference.fidelity import low_pass
from engine.inference.loop import exposure_schedule
from engine.models.backbones import BackboneConfig
from engine.models.unet import UNet
from training.evaluate import restore
from training.objective import unrolled_loss
from training.recipes import step_fidelity_screen as screen

CONFIG = BackboneConfig(with_photon=True)


def _net(seed=0):
    torch.manual_seed(seed)
    return UNet(8, 9, widths=(4, 4, 8, 8, 8)).eval()


def _inputs(seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    gt = 0.05 + 0.3 * torch.rand(2, 4, size, size, generator=g)
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([2.0, 5.0])
    unclipped = gt + 0.08 * torch.randn(gt.shape, generator=g)
    a_t = unclipped.clamp(0, 1)
    first = torch.cat([a_t, a_t / (ratio * K).view(-1, 1, 1, 1)], 1)
    return gt, unclipped, first, ratio, K


@pytest.fixture
def no_anchoring(monkeypatch):
    monkeypatch.setattr(screen, "anchored", lambda estimate, unclipped, scale=32: estimate)


@pytest.mark.parametrize("stochastic", [False, True])
def test_without_anchoring_the_loss_is_the_unrolled_loss(no_anchoring, stochastic):
    gt, unclipped, first, ratio, K = _inputs()
    rho = exposure_schedule(ratio, 3, "linspace")
    common = dict(ratio=ratio, K=K, rho=rho, weights=torch.tensor([0.2, 0.3, 0.5]), with_photon=True,
                  concat_origin=False, mean_weight=2.0, stochastic=stochastic,
                  memory_format=torch.contiguous_format)
    net = _net()
    ref = unrolled_loss(net, first, gt, generator=torch.Generator().manual_seed(5), **common)
    got = screen.unrolled_loss_anchored(net, first, gt, unclipped, generator=torch.Generator().manual_seed(5), **common)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=0)


def test_without_anchoring_the_restoration_is_the_ordinary_one(no_anchoring):
    _, unclipped, first, ratio, K = _inputs(size=40)  # not a multiple of 16: padded and cropped
    net = _net()
    ref = restore(net, CONFIG, first, ratio=ratio, K=K, steps=3, stochastic=False)
    got = screen.restore_anchored(net, CONFIG, first, unclipped, ratio=ratio, K=K, steps=3, stochastic=False)
    assert got.shape == (2, 4, 40, 40)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_one_step_is_never_anchored():
    _, unclipped, first, ratio, K = _inputs()
    net = _net()
    ref = restore(net, CONFIG, first, ratio=ratio, K=K, steps=1, stochastic=False)
    got = screen.restore_anchored(net, CONFIG, first, unclipped, ratio=ratio, K=K, steps=1, stochastic=False)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_anchoring_changes_the_later_steps():
    _, unclipped, first, ratio, K = _inputs()
    net = _net()
    ref = restore(net, CONFIG, first, ratio=ratio, K=K, steps=3, stochastic=False)
    got = screen.restore_anchored(net, CONFIG, first, unclipped, ratio=ratio, K=K, steps=3, stochastic=False)
    assert (got - ref).abs().max() > 1e-3


def test_anchored_estimate_takes_the_datas_local_means_without_their_gradient():
    g = torch.Generator().manual_seed(3)
    estimate = (0.2 + 0.1 * torch.rand(1, 4, 64, 64, generator=g)).requires_grad_()
    unclipped = 0.3 + 0.05 * torch.randn(1, 4, 64, 64, generator=g)
    out = screen.anchored(estimate, unclipped, scale=32)
    # away from the borders the box means of the result are the data's (all weights 1 here)
    torch.testing.assert_close(low_pass(out.detach(), 32)[..., 16:48, 16:48],
                               low_pass(unclipped, 32)[..., 16:48, 16:48], rtol=0, atol=2e-3)
    out.sum().backward()
    assert torch.equal(estimate.grad, torch.ones_like(estimate))
