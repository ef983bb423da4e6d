"""How often the ops and loops read values back to the host (a device synchronisation on a GPU).

Every data-dependent check goes through ``kernels._common.host_read_bool``; counting its
calls on the CPU counts the synchronisations the same code makes on CUDA. An op call
reads once (all its checks together), the engine's n-step loop once (not once per step),
a training step never for checks, and nothing inside ``value_checks_disabled``.
"""
import pytest
import torch

from engine.models.backbones import BackboneConfig
from engine.inference.loop import exposure_schedule, run_exposure_diffusion
from kernels import (
    exposure_step, pack_bayer, poisson, render_srgb, sample_noise_params, synthesize_noise, unpack_bayer,
    value_checks_disabled,
)
from kernels import _common

from .test_trainer import ToyPatches, tiny_config


@pytest.fixture
def reads(monkeypatch):
    count = []
    real = _common.host_read_bool

    def counting(flag):
        count.append(1)
        return real(flag)

    monkeypatch.setattr(_common, "host_read_bool", counting)
    return count


def _step_inputs(B=2, h=16, w=16):
    g = torch.Generator().manual_seed(0)
    out = torch.randn(B, 9, h, w, generator=g)
    state = torch.rand(B, 4, h, w, generator=g)
    return out, state, state.clone()


def test_each_op_reads_the_host_once_per_call(reads):
    out, state, origin = _step_inputs()
    ratio, K = torch.tensor([100.0, 200.0]), torch.tensor([2.0, 3.0])
    exposure_step(out, state, origin, ratio=ratio, K=K, rho=torch.tensor([1.0, 1.0]),
                  rho_next=torch.tensor([30.0, 60.0]), with_photon=True, backend="torch")
    assert len(reads) == 1
    params = sample_noise_params(2, ["SonyA7S2"], model="P+G+r+u", generator=torch.Generator().manual_seed(1))
    synthesize_noise(state, "P+G+r+u", params=params, generator=torch.Generator().manual_seed(2), backend="torch")
    assert len(reads) == 2
    cfa = torch.randint(512, 16383, (2, 8, 8), dtype=torch.int32)
    packed = pack_bayer(cfa, "RGGB", torch.tensor([512.0] * 4), 16383, ratio=ratio, K=K, with_photon=True,
                        backend="torch")
    assert len(reads) == 3
    unpack_bayer(packed[:, :4], "RGGB", 512, 16383, ratio=ratio, backend="torch")
    assert len(reads) == 4
    poisson(torch.rand(8) * 5, backend="torch")
    assert len(reads) == 5
    render_srgb(packed[:, :4], "RGGB", wb=torch.tensor([2.0, 1.0, 1.5]), ccm=torch.eye(3), backend="torch")
    assert len(reads) == 6


def test_checks_disabled_read_nothing_and_failures_still_name_the_value(reads):
    out, state, origin = _step_inputs()
    with value_checks_disabled():
        exposure_step(out, state, origin, ratio=torch.tensor([100.0, 200.0]), K=torch.tensor([2.0, 3.0]),
                      rho=torch.tensor([1.0, 1.0]), rho_next=torch.tensor([30.0, 60.0]), backend="torch")
    assert reads == []
    with pytest.raises(ValueError, match=r"K must be > 0, got \[2.0, -3.0\]"):
        exposure_step(out, state, origin, ratio=torch.tensor([100.0, 200.0]), K=torch.tensor([2.0, -3.0]),
                      rho=torch.tensor([1.0, 1.0]), rho_next=torch.tensor([30.0, 60.0]), backend="torch")
    with pytest.raises(ValueError, match=r"rho_next must be > rho for every sample"):
        exposure_step(out, state, origin, ratio=torch.tensor([100.0, 200.0]), K=torch.tensor([2.0, 3.0]),
                      rho=torch.tensor([1.0, 70.0]), rho_next=torch.tensor([30.0, 60.0]), backend="torch")


@pytest.mark.parametrize("steps", [1, 4])
def test_engine_loop_reads_once_whatever_the_steps(reads, steps):
    config = BackboneConfig(arch="unet", with_photon=True, options={"widths": (4, 4, 4, 4, 4)})
    net = config.build().eval()
    ratio, K = torch.tensor([100.0]), torch.tensor([2.0])
    first = torch.rand(1, 8, 16, 16)
    with torch.no_grad():
        run_exposure_diffusion(net, first, ratio=ratio, K=K, rho=exposure_schedule(ratio, steps), with_photon=True,
                               concat_origin=False, generator=torch.Generator().manual_seed(0))
    assert len(reads) == 1


def test_engine_loop_refuses_bad_values_before_the_first_step():
    config = BackboneConfig(arch="unet", with_photon=True, options={"widths": (4, 4, 4, 4, 4)})
    calls = []
    net = config.build().eval()
    net.register_forward_hook(lambda *a: calls.append(1))
    first = torch.rand(1, 8, 16, 16)
    bad_rho = torch.tensor([[1.0, 50.0, 40.0, 100.0]])
    with pytest.raises(ValueError, match="rho must increase strictly"):
        run_exposure_diffusion(net, first, ratio=torch.tensor([100.0]), K=torch.tensor([2.0]), rho=bad_rho,
                               with_photon=True, concat_origin=False)
    with pytest.raises(ValueError, match=r"K must be finite, got \[nan\]"):
        run_exposure_diffusion(net, first, ratio=torch.tensor([100.0]), K=torch.tensor([float("nan")]),
                               rho=exposure_schedule(torch.tensor([100.0]), 3), with_photon=True, concat_origin=False)
    assert calls == []


def test_a_training_step_makes_no_check_reads(reads, tmp_path):
    from training.trainer import Trainer

    trainer = Trainer(tiny_config(noise_model="P+G+r+u", steps=3), ToyPatches(), tmp_path, device="cpu",
                      progress=False)
    trainer.fit(max_steps=2)
    assert reads == []
