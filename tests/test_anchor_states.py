"""States anchored to the data in training (``train --anchor-states``, ``training.objective``'s
``anchor``): the network input is the one the fused synthesis writes, the loss without anchoring is
SPEC's, the anchoring moves only the later steps' states, its correction has no gradient, and the
option is checked and reaches the run."""
import pytest
import torch

from engine.inference.fidelity import low_frequency_fidelity, low_pass
from engine.inference.loop import exposure_schedule
from engine.models.unet import UNet
from kernels import sample_noise_params, synthesize_noise
from kernels._common import DEFAULT_DN_SCALE
from tests.test_trainer import ToyPatches, tiny_config
from training.cli import main
from training.objective import anchored_estimate, network_input, unrolled_loss
from training.trainer import Trainer


def _net(seed=0):
    torch.manual_seed(seed)
    return UNet(8, 9, widths=(4, 4, 8, 8, 8)).eval()


def _batch(seed=1, size=32):
    g = torch.Generator().manual_seed(seed)
    gt = 0.05 + 0.3 * torch.rand(2, 4, size, size, generator=g)
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([2.0, 5.0])
    unclipped = gt + 0.08 * torch.randn(gt.shape, generator=g)
    return gt, unclipped, network_input(unclipped, ratio, K, True, False), ratio, K


@pytest.mark.parametrize("with_photon, concat_origin", [(True, False), (False, False), (True, True)])
def test_network_input_is_what_the_synthesis_writes(with_photon, concat_origin):
    clean = torch.rand(3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    p = sample_noise_params(3, None, model="P+G+r+u", generator=torch.Generator().manual_seed(3))
    written = synthesize_noise(clean, "P+G+r+u", params=p, with_photon=with_photon, concat_origin=concat_origin,
                               generator=torch.Generator().manual_seed(4))
    dn = synthesize_noise(clean, "P+G+r+u", params=p, output="dn", black_level=0.0,
                          generator=torch.Generator().manual_seed(4))
    unclipped = dn * p.ratio.view(-1, 1, 1, 1) / DEFAULT_DN_SCALE
    assert torch.equal(network_input(unclipped, p.ratio, p.K, with_photon, concat_origin), written)


def test_anchored_estimate_takes_the_datas_local_means_without_their_gradient():
    g = torch.Generator().manual_seed(3)
    estimate = (0.2 + 0.1 * torch.rand(1, 4, 64, 64, generator=g)).requires_grad_()
    unclipped = 0.3 + 0.05 * torch.randn(1, 4, 64, 64, generator=g)
    out = anchored_estimate(estimate, unclipped, scale=32)
    torch.testing.assert_close(out.detach(), low_frequency_fidelity(estimate.detach(), unclipped, 32), rtol=0,
                               atol=1e-6)
    torch.testing.assert_close(low_pass(out.detach(), 32)[..., 16:48, 16:48], low_pass(unclipped, 32)[..., 16:48, 16:48],
                               rtol=0, atol=2e-3)  # all weights 1 here: the box means are the data's
    out.sum().backward()
    assert torch.equal(estimate.grad, torch.ones_like(estimate))


def _losses(anchor, stochastic, steps=3):
    gt, unclipped, first, ratio, K = _batch()
    rho = exposure_schedule(ratio, steps, "linspace")
    weights = torch.full((steps,), 1.0 / steps)
    return unrolled_loss(_net(), first, gt, ratio=ratio, K=K, rho=rho, weights=weights, with_photon=True,
                         concat_origin=False, mean_weight=2.0, stochastic=stochastic,
                         generator=torch.Generator().manual_seed(5), memory_format=torch.contiguous_format,
                         anchor=unclipped if anchor else None)


@pytest.mark.parametrize("stochastic", [False, True])
def test_anchoring_moves_only_the_later_steps(stochastic):
    plain_total, plain_steps = _losses(False, stochastic)
    total, steps = _losses(True, stochastic)
    assert steps[0] == plain_steps[0]  # the first estimate comes from the noisy input alone
    assert (steps[1:] - plain_steps[1:]).abs().min() > 1e-6
    assert total != plain_total
    one_plain, one = _losses(False, stochastic, steps=1), _losses(True, stochastic, steps=1)
    assert torch.equal(one[0], one_plain[0])  # nothing to anchor in a 1-step run


def test_anchored_loss_trains_the_network_through_the_states():
    gt, unclipped, first, ratio, K = _batch()
    net = _net()
    rho = exposure_schedule(ratio, 2, "linspace")
    total, _ = unrolled_loss(net, first, gt, ratio=ratio, K=K, rho=rho, weights=torch.tensor([0.0, 1.0]),
                             with_photon=True, concat_origin=False, stochastic=False, anchor=unclipped,
                             memory_format=torch.contiguous_format)
    total.backward()  # the last step's loss alone reaches the first layer through both evaluations
    assert net.conv1_1.weight.grad.abs().sum() > 0


def test_trainer_with_anchored_states_keeps_the_synthesis_and_records_the_option(tmp_path):
    anchored = Trainer(tiny_config(steps=3, anchor_states=True), ToyPatches(), tmp_path / "a", device="cpu",
                       progress=False)
    plain = Trainer(tiny_config(steps=3), ToyPatches(), tmp_path / "p", device="cpu", progress=False)
    _, batch = anchored._micro_batches(anchored._epoch_order(0), 0, 0)[0]
    x, y = anchored.prepare_inputs(batch, 0), plain.prepare_inputs(batch, 0)
    assert torch.equal(x.first, y.first) and y.unclipped is None  # the same draws, the same network input
    assert torch.equal(x.unclipped.clamp(0, 1), x.first[:, :4]) and (x.unclipped < 0).any()
    anchored.fit(max_steps=2)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["config"]["anchor_states"] is True
    with pytest.raises(ValueError, match="anchor_states .* needs steps >= 2"):
        tiny_config(steps=1, anchor_states=True)


def test_train_anchor_states_option(tmp_path, capsys):
    tiny = ["--widths", "8", "8", "16", "16", "16", "--patch", "32", "--batch", "2", "--noise-model", "P+g",
            "--ratio-range", "50", "100", "--procedural", "--device", "cpu", "-q", "--epochs", "1",
            "--iters-per-epoch", "1"]
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--anchor-states", *tiny]) == 0
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]["anchor_states"] is True
    assert main(["train", "--out", str(tmp_path / "bad"), "--steps", "1", "--anchor-states", *tiny]) == 2
    assert "needs steps >= 2" in capsys.readouterr().err


def test_gpu_recipe_refuses_anchor_states_with_one_step_before_rendering(tmp_path, capsys):
    from training.recipes.gpu_train import main as gpu_main

    with pytest.raises(SystemExit) as e:
        gpu_main(["--out", str(tmp_path / "run"), "--steps", "1", "--anchor-states", "--device", "cpu"])
    assert e.value.code == 2 and "needs steps >= 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
