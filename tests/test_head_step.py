"""kernels.head_step: the final 1x1 convolution fused into the exposure step.

Deterministic mode against the reference (1x1 convolution in PyTorch, then
``exposure_step_reference``): fp32 features to 1e-5, fp16 features to 2e-3 (the next
input is stored in fp16). Stochastic mode: with features and weights whose products and
sums are exact in fp32 (small multiples of powers of two), the fused head gives exactly
the unfused head's output, so the fused step must draw exactly what the unfused Triton
``exposure_step`` draws from the same key: bit-identical outputs.
"""
import pytest
import torch
from torch import nn

from kernels._common import philox_seed
from kernels.exposure import exposure_step
from kernels.head_step import head_exposure_step, head_output_reference, prepare_head
from tests.conftest import TRITON_DEVICE
from tests.helpers import poison_

DEV = TRITON_DEVICE
LAYOUTS = [(False, False), (True, False), (False, True), (True, True)]


def inputs(B=2, C=32, h=5, w=7, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = (torch.randn(B, C, h, w, generator=g) * 0.5).to(DEV, dtype).contiguous(memory_format=torch.channels_last)
    state = torch.rand(B, 4, h, w, generator=g).to(DEV, dtype)
    origin = (torch.rand(B, 4, h, w, generator=g) * 1.2 - 0.1).to(DEV, dtype)
    return feats, state, origin


def head(C=32, cout=9, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    conv = nn.Conv2d(C, cout, 1)
    return prepare_head(conv.weight.to(DEV), conv.bias.to(DEV), dtype=dtype)


def params(B=2):
    return dict(ratio=torch.tensor([100.0, 250.0][:B], device=DEV), K=torch.tensor([1.5, 0.3][:B], device=DEV),
                rho=torch.tensor([1.0, 3.5][:B], device=DEV), rho_next=torch.tensor([50.0, 80.0][:B], device=DEV))


@pytest.mark.parametrize("cout", [9, 4])
@pytest.mark.parametrize("with_photon, concat_origin", LAYOUTS)
@pytest.mark.parametrize("C", [32, 20])
def test_deterministic_matches_reference(cout, with_photon, concat_origin, C):
    feats, state, origin = inputs(C=C, seed=cout + C)
    hw = head(C, cout, seed=C)
    kw = dict(params(), stochastic=False, with_photon=with_photon, concat_origin=concat_origin)
    got = head_exposure_step(feats, hw, state, origin, backend="triton", **kw)
    ref = head_exposure_step(feats, hw, state, origin, backend="torch", **kw)
    for g, r in zip(got, ref):
        assert not torch.isnan(g).any()
        torch.testing.assert_close(g.cpu(), r.cpu(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("B, h, w", [(1, 1, 1), (1, 16, 16), (2, 13, 11), (3, 3, 130)])
def test_shapes_and_the_last_step(B, h, w):
    feats, state, origin = inputs(B, 32, h, w, dtype=torch.float16, seed=h)
    hw = head(dtype=torch.float16)
    p = {k: v[:1].expand(B).contiguous() for k, v in params(1).items()}
    for rho_next in (p["rho_next"], None):
        kw = dict(ratio=p["ratio"], K=p["K"], rho=p["rho"], rho_next=rho_next, stochastic=False, with_photon=True,
                  out_dtype=torch.float16, out_memory_format=torch.channels_last)
        got = head_exposure_step(feats, hw, state, origin, backend="triton", **kw)
        ref = head_exposure_step(feats, hw, state, origin, backend="torch", **kw)
        torch.testing.assert_close(got[0].cpu(), ref[0].cpu(), atol=2e-3, rtol=2e-3)
        if rho_next is None:
            assert got[1] is None and ref[1] is None
        else:
            assert got[1].is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(got[1].float().cpu(), ref[1].float().cpu(), atol=2e-3, rtol=2e-3)


def exact_inputs(B=2, C=32, h=6, w=9):
    """Features in {-1, 0, 1} / 8 and weights in multiples of 1 / 64 below 1: every product
    and partial sum is exact in fp32, so any summation order gives the same head output."""
    g = torch.Generator().manual_seed(7)
    feats = (torch.randint(-1, 2, (B, C, h, w), generator=g).float() / 8).to(DEV)
    weight = torch.randint(-32, 33, (9, C, 1, 1), generator=g).float() / 64
    bias = torch.randint(-16, 17, (9,), generator=g).float() / 64
    return feats.contiguous(memory_format=torch.channels_last), prepare_head(weight.to(DEV), bias.to(DEV),
                                                                            dtype=torch.float32)


def test_stochastic_draws_equal_the_unfused_step():
    feats, hw = exact_inputs()
    _, state, origin = inputs(2, 32, 6, 9, seed=3)
    net_out = head_output_reference(feats, hw)
    seed = philox_seed(torch.Generator().manual_seed(11), DEV)
    kw = dict(params(), stochastic=True, seed=seed, with_photon=True)
    fused = head_exposure_step(feats, hw, state, origin, backend="triton", **kw)
    unfused = exposure_step(net_out, state, origin, backend="triton", **kw)
    assert torch.equal(fused[0], unfused[0]) and torch.equal(fused[1], unfused[1])
    other = head_exposure_step(feats, hw, state, origin, backend="triton",
                               **{**kw, "seed": philox_seed(torch.Generator().manual_seed(12), DEV)})
    assert not torch.equal(other[1], fused[1])  # a new key draws new photons


def test_refusals():
    feats, state, origin = inputs()
    hw = head()
    kw = params()
    with pytest.raises(ValueError, match=r"features must have 32 channels \(the head's input\), got shape"):
        head_exposure_step(feats[:, :16], hw, state, origin, backend="triton", **kw)
    with pytest.raises(TypeError, match="head must come from prepare_head"):
        head_exposure_step(feats, hw.matrix, state, origin, backend="triton", **kw)
    with pytest.raises(TypeError, match="features are torch.float16 but the head was prepared as torch.float32"):
        head_exposure_step(feats.half(), hw, state, origin, backend="triton", **kw)
    with pytest.raises(ValueError, match=r"state must have shape \(2, 4, 5, 7\)"):
        head_exposure_step(feats, hw, state[:, :, :4], origin, backend="triton", **kw)
    with pytest.raises(ValueError, match="the head must be a 1x1 convolution to 9 .* or 4 channels"):
        prepare_head(torch.zeros(5, 32, 1, 1), torch.zeros(5))
    with pytest.raises(ValueError, match=r"ratio"):
        head_exposure_step(feats, hw, state, origin, backend="triton", **{**kw, "ratio": -1.0})


def test_poisoned_outputs_are_all_written(monkeypatch):
    import kernels.head_step as hs

    real = hs._allocate
    monkeypatch.setattr(hs, "_allocate", lambda *a: tuple(poison_(t) if t is not None else t for t in real(*a)))
    feats, state, origin = inputs(2, 32, 9, 10)
    est, nxt = head_exposure_step(feats, head(), state, origin, backend="triton", stochastic=False,
                                  concat_origin=True, with_photon=True, **params())
    assert not torch.isnan(est).any() and not torch.isnan(nxt).any()


@pytest.mark.parametrize("config", [c for c in __import__("kernels.head_step", fromlist=["CONFIGS"]).CONFIGS])
def test_draws_do_not_depend_on_the_launch_configuration(config, monkeypatch):
    """Autotune may pick any configuration on the user's GPU: the draws are keyed by the
    element's index, so every configuration gives the same bits."""
    import kernels.head_step as hs

    feats, state, origin = inputs(2, 32, 7, 9, dtype=torch.float16, seed=5)
    hw = head(dtype=torch.float16)
    kw = dict(params(), stochastic=True, seed=philox_seed(torch.Generator().manual_seed(3), DEV), with_photon=True)
    reference = head_exposure_step(feats, hw, state, origin, backend="triton", **kw)
    monkeypatch.setattr(hs, "LAUNCH_CONFIG", config)
    got = head_exposure_step(feats, hw, state, origin, backend="triton", **kw)
    assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
