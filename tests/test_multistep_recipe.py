"""Issue 14, the multi-step recipe: what is right can be said exactly.

- A model that outputs the clean image makes every step's estimate the clean image, at
  every step count, with draws or with means: the loop adds no drift of its own.
- The next state's mean is the SPEC §4 expectation (reference and accumulating forms), and
  each state's photon channel is ``A_i rho_i / (r K)``.
- The local-mean (brightness) term of the objective measures a bias and ignores zero-mean
  detail, and enters the loss with its weight at every step.

Statistical tests use fixed seeds and 5-sigma bounds (false-failure rate < 1e-6 each).
"""
import math

import pytest
import torch
from torch import nn

from engine.inference.loop import exposure_schedule, run_exposure_diffusion
from kernels import exposure_step, synthesize_noise
from kernels._common import DEFAULT_DN_SCALE
from training.objective import local_mean_error, unrolled_loss


class Oracle(nn.Module):
    """Outputs the clean image (4-channel head) or, with ``head9``, a certain mask on the
    clean image as x0 (9-channel head); records every network input it is given."""

    def __init__(self, clean, head9=False, bias=0.0):
        super().__init__()
        self.clean, self.head9, self.bias, self.inputs = clean, head9, bias, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        y = (self.clean + self.bias).expand(x.shape[0], -1, -1, -1)
        if not self.head9:
            return y.clone()
        logit = torch.full_like(y[:, :1], 40.0)  # sigmoid = 1 in float32
        return torch.cat([logit, y, torch.zeros_like(y)], 1)


def _first_input(clean, ratio, K, seed=0):
    return synthesize_noise(clean, "P+G+r+u", ratio=ratio, K=K, sigma_g=3.0, sigma_TL=2.0, lam=0.1, sigma_r=0.5,
                            with_photon=True, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head9", [False, True])
@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_oracle_model_is_a_fixed_point_at_every_step(head9, stochastic, steps):
    torch.manual_seed(0)
    clean = torch.rand(1, 4, 32, 32) * 0.6 + 0.02
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([2.0, 0.7])
    first = _first_input(clean.expand(2, -1, -1, -1).contiguous(), ratio, K)
    net = Oracle(clean, head9)
    rho = exposure_schedule(ratio, steps)
    y = run_exposure_diffusion(net, first, ratio=ratio, K=K, rho=rho, with_photon=True, concat_origin=False,
                               stochastic=stochastic, generator=torch.Generator().manual_seed(1))
    assert torch.equal(y, clean.expand(2, -1, -1, -1))
    assert len(net.inputs) == steps
    origin = first[:, :4].clamp(0, 1)
    for i, x in enumerate(net.inputs):
        state, photon = x[:, :4], x[:, 4:8]
        r_i = rho[:, i].view(-1, 1, 1, 1)
        torch.testing.assert_close(photon, state * r_i / (ratio * K).view(-1, 1, 1, 1), rtol=1e-5, atol=1e-7)
        if not stochastic:  # the deterministic state is exactly the SPEC's expectation
            expected = (origin + (r_i - 1) * clean) / r_i
            torch.testing.assert_close(state, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accumulate", [False, True])
def test_next_state_mean_is_the_spec_expectation(accumulate):
    """E[A_next] = (clip(A_T) + (rho_next - 1) Y) / rho_next (reference form) or
    (A_i rho + (rho_next - rho) Y) / rho_next (accumulating form), for dark and bright Y."""
    B, h, w = 2, 128, 128
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([1.5, 3.0])
    rho, rho_next = torch.tensor([1.0, 40.0]), torch.tensor([34.0, 120.0])
    y = torch.tensor([0.002, 0.01, 0.1, 0.6]).view(1, 4, 1, 1).expand(B, 4, h, w).contiguous()
    net = torch.cat([torch.full((B, 1, h, w), 40.0), y, torch.zeros(B, 4, h, w)], 1)
    state = torch.rand(B, 4, h, w, generator=torch.Generator().manual_seed(0)) * 0.2
    origin = torch.rand(B, 4, h, w, generator=torch.Generator().manual_seed(1)) * 0.2
    _, nxt = exposure_step(net, state, origin, ratio=ratio, K=K, rho=rho, rho_next=rho_next, stochastic=True,
                           accumulate=accumulate, generator=torch.Generator().manual_seed(2))
    col = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    added = col(rho_next - rho) if accumulate else col(rho_next - 1)
    base = state * col(rho) if accumulate else origin.clamp(0, 1)
    expected = (base + added * y) / col(rho_next)
    # per pixel: Var(A_next) = (r K / s)^2 Var(P) / rho_next^2, Var(P) = mu = added * s * y / (r K)
    rk = col(ratio * K)
    var = (rk / DEFAULT_DN_SCALE) ** 2 * (added * DEFAULT_DN_SCALE * y / rk) / col(rho_next) ** 2
    n = h * w
    diff = (nxt[:, :4] - expected).mean((2, 3))
    bound = 5 * (var.mean((2, 3)) / n).sqrt()
    assert torch.all(diff.abs() < bound), (diff, bound)


def test_local_mean_error_sees_bias_not_detail():
    gt = torch.rand(2, 4, 32, 32)
    assert math.isclose(float(local_mean_error(gt - 0.01, gt, 8)), 0.01, rel_tol=1e-4)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2 - 1).float() * 0.05
    assert float(local_mean_error(gt + checker, gt, 8)) < 1e-7
    assert math.isclose(float(local_mean_error(gt + checker, gt, 1)), 0.05, rel_tol=1e-5)
    with pytest.raises(ValueError, match="pool must be >= 1"):
        local_mean_error(gt, gt, 0)


def test_mean_term_enters_every_step_with_its_weight():
    """A model biased by -0.01 everywhere: the loss grows by exactly
    mean_weight * 0.01 * sum(w) (clean values far from the clip bounds)."""
    torch.manual_seed(0)
    clean = torch.rand(2, 4, 32, 32) * 0.5 + 0.25
    ratio, K = torch.tensor([100.0, 200.0]), torch.tensor([1.0, 3.0])
    first = _first_input(clean, ratio, K)
    rho = exposure_schedule(ratio, 3)
    w = torch.tensor([0.2, 0.3, 0.5])
    kw = dict(ratio=ratio, K=K, rho=rho, weights=w, with_photon=True, concat_origin=False)
    losses = []
    for mw in (0.0, 2.0):
        net = Oracle(clean[:1], bias=-0.01)
        net.clean = clean - 0.01  # per-sample clean image, biased
        net.bias = 0.0
        total, per_step = unrolled_loss(net, first, clean, generator=torch.Generator().manual_seed(5), mean_weight=mw,
                                        mean_pool=8, **kw)
        losses.append(float(total))
        torch.testing.assert_close(per_step, torch.full((3,), 0.01), rtol=1e-4, atol=1e-6)
    assert math.isclose(losses[1] - losses[0], 2.0 * 0.01 * float(w.sum()), rel_tol=1e-3)


@pytest.mark.parametrize("detach_states, reached", [(False, [True, True, True]), (True, [False, False, True])])
def test_detached_states_train_each_evaluation_by_its_own_loss(detach_states, reached):
    """With only the last step's loss weighted: straight through (SPEC §4), its gradient reaches
    every network evaluation through the draws; with ``detach_states`` only the last one."""
    torch.manual_seed(0)
    clean = torch.rand(2, 4, 16, 16) * 0.5 + 0.25
    ratio, K = torch.tensor([100.0, 200.0]), torch.tensor([1.0, 3.0])
    first = _first_input(clean, ratio, K)
    conv = nn.Conv2d(8, 9, 1)
    grads = []

    def net(x):
        out = conv(x)
        i = len(grads)
        grads.append(False)
        out.register_hook(lambda g: grads.__setitem__(i, bool(g.abs().sum() > 0)))
        return out

    total, _ = unrolled_loss(net, first, clean, ratio=ratio, K=K, rho=exposure_schedule(ratio, 3),
                             weights=torch.tensor([0.0, 0.0, 1.0]), with_photon=True, concat_origin=False,
                             generator=torch.Generator().manual_seed(1), detach_states=detach_states)
    total.backward()
    assert grads == reached


def test_mean_photons_train_on_the_deterministic_loop():
    """``stochastic=False`` (``train --mean-photons``): every state is the SPEC's expectation,
    the same inputs the engine's ``stochastic=False`` loop gives the network, whatever the
    generator; with draws (SPEC §4) the later states differ from draw to draw."""
    torch.manual_seed(0)
    clean = torch.rand(2, 4, 16, 16) * 0.5 + 0.05
    ratio, K = torch.tensor([100.0, 200.0]), torch.tensor([1.0, 3.0])
    first = _first_input(clean, ratio, K)
    rho = exposure_schedule(ratio, 3)
    conv = nn.Conv2d(8, 9, 1)
    seen = {}
    for stochastic in (False, True):
        for seed in (1, 2):
            net = Oracle(clean, head9=True)
            unrolled_loss(lambda x: net(x) + 0 * conv(x), first, clean, ratio=ratio, K=K, rho=rho,
                          weights=torch.full((3,), 1 / 3), with_photon=True, concat_origin=False,
                          generator=torch.Generator().manual_seed(seed), stochastic=stochastic)
            seen[stochastic, seed] = net.inputs
    for a, b in zip(seen[False, 1], seen[False, 2]):
        assert torch.equal(a, b)
    assert not torch.equal(seen[True, 1][1], seen[True, 2][1])
    engine_net = Oracle(clean, head9=True)
    run_exposure_diffusion(engine_net, first, ratio=ratio, K=K, rho=rho, with_photon=True, concat_origin=False,
                           stochastic=False)
    for trained, served in zip(seen[False, 1], engine_net.inputs):
        torch.testing.assert_close(trained, served, rtol=1e-6, atol=1e-7)
