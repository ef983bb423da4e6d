"""The step-embedding screen (training/recipes/step_bias_screen.py): zero offsets leave the
network unchanged, each evaluation of a run gets its own offsets, the first anchor can be kept."""
import pytest
import torch

from engine.models.unet import UNet
from training.recipes import step_bias_screen as screen


def _net(seed=0):
    torch.manual_seed(seed)
    return UNet(8, 9, widths=(4, 4, 8, 8, 8)).eval()


def _rho(ratio=100.0, steps=3, batch=2):
    return 1 + (torch.full((batch, 1), ratio) - 1) * torch.linspace(0, 1, steps + 1)[None, :]


def test_anchor_weights_interpolate_between_the_steps_places():
    sb = screen.StepBias(_net(), anchors=3)
    w = sb.anchor_weights(torch.tensor([0.0, 1 / 6, 1 / 3, 2 / 3, 0.9]))
    expected = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(w, expected, atol=1e-6, rtol=0)


def test_zero_offsets_leave_the_network_unchanged():
    net, ref = _net(), _net()
    screen.attach(net)
    x = torch.rand(2, 8, 32, 32)
    screen.set_plan(net, _rho())
    with torch.no_grad():
        for _ in range(3):
            assert torch.equal(net(x), ref(x))


def test_each_evaluation_gets_its_own_offsets():
    net, ref = _net(), _net()
    sb = screen.attach(net)
    with torch.no_grad():
        sb.offsets["conv10_1"][1].fill_(0.01)  # the second step's place (t = 1/3) only
    x = torch.rand(2, 8, 32, 32)
    screen.set_plan(net, _rho())
    with torch.no_grad():
        first, second, third = net(x), net(x), net(x)
        base = ref(x)
    assert torch.equal(first, base)
    torch.testing.assert_close(third, base, atol=1e-6, rtol=0)  # t = 66 / 99 rounds next to anchor 2
    torch.testing.assert_close(second - base, torch.full_like(base, 0.01 * sb.scale), atol=1e-6, rtol=0)


def test_a_run_without_a_plan_is_refused():
    net = _net()
    screen.attach(net)
    with pytest.raises(RuntimeError, match="no step plan"):
        net(torch.rand(1, 8, 32, 32))


def test_kept_first_anchor_stays_zero_while_the_others_train():
    net = _net()
    sb = screen.attach(net)
    screen.keep_first_anchor(sb)
    opt = torch.optim.Adam(sb.parameters(), lr=1e-2)
    rho = _rho(batch=1)
    screen.set_plan(net, rho)
    x = torch.rand(1, 8, 32, 32)
    loss = sum(net(x).square().mean() for _ in range(3))
    loss.backward()
    opt.step()
    offsets = sb.offsets["conv1_1"]
    assert torch.count_nonzero(offsets[0]) == 0
    assert torch.count_nonzero(offsets[1]) > 0 and torch.count_nonzero(offsets[2]) > 0


def test_the_command_must_name_train_or_evaluate():
    with pytest.raises(SystemExit):
        screen.main(["--freeze-base"])
    with pytest.raises(SystemExit):
        screen.main(["--", "enhance", "x.ARW"])
