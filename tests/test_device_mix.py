"""Device mixes, caught on a CPU-only machine (tests/device_mix.py's stand-in device).

Every public op (both backends) and the trainer's data side and unrolled loss run with
their data on the stand-in device and everything else as a user holds it on the host:
Python numbers and lists, a CPU ``torch.Generator`` (what ``torch.manual_seed`` users
pass), CPU colour matrices. They must not mix devices: the outputs land on the data's
device. The first test shows that the stand-in catches each kind of mix (planted), so the
others cannot pass vacuously.
"""
import importlib

import numpy as np
import pytest
import torch

import kernels
from tests.device_mix import DEVICE, DeviceMixError, second_device

BACKENDS = ["triton", "torch"]
poisson_module = importlib.import_module("kernels.poisson")  # the module (kernels.poisson is the op)


def host_generator(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)  # deliberately on the host, with data on DEVICE


def on(dev, *shape, dtype=torch.float32):
    return torch.rand(*shape, device=dev).to(dtype)


# ------------------------------------------------------------------ the stand-in itself
def planted_matrix(dev):
    return torch.einsum("ij,bjk->bik", torch.eye(3), on(dev, 2, 3, 5))  # host matrix, device data


def planted_generator(dev):
    return torch.randn(4, generator=host_generator(), device=dev)  # host generator, device draws


def planted_launch(dev):
    mu = on(dev, 8)
    out = torch.empty(8)  # host output buffer for a device kernel
    poisson_module._poisson_kernel[(1,)](mu, out, 8, torch.zeros(1, dtype=torch.int64, device=dev), BLOCK=8)


@pytest.mark.parametrize("planted, error", [
    (planted_matrix, "found at least two devices|found two different devices"),  # torch 2.13 | 2.11 wording
    (planted_generator, "Expected a 'meta' device type for generator but found 'cpu'"),
    (planted_launch, "argument out_ptr is on cpu"),
])
def test_stand_in_catches_a_planted_mix(planted, error):
    with second_device() as dev, pytest.raises((RuntimeError, DeviceMixError), match=error):
        planted(dev)


def test_stand_in_keeps_host_draws_real_and_lets_same_device_work():
    with second_device() as dev:
        key = int(torch.randint(0, 2**62, (1,), generator=host_generator(3)))  # host work: a real value
        x = torch.einsum("ij,bjk->bik", torch.eye(3, device=dev), on(dev, 2, 3, 5))
        y = torch.randn(4, generator=kernels._common.device_generator(dev, key), device=dev)
    assert key == int(torch.randint(0, 2**62, (1,), generator=host_generator(3)))
    assert x.device == DEVICE and y.device == DEVICE


# ------------------------------------------------------------------ the public ops
@pytest.mark.parametrize("backend", BACKENDS)
def test_bayer_ops(backend):
    with second_device() as dev:
        cfa = torch.randint(0, 4000, (2, 6, 8), device=dev).to(torch.int32)
        packed = kernels.pack_bayer(cfa, "GRBG", [512, 510, 508, 506], 16383, ratio=[100.0, 30.0], K=2.0,
                                    with_photon=True, concat_origin=True, backend=backend)
        mosaic = kernels.unpack_bayer(packed[:, :4], "GRBG", 512, 16383, ratio=100.0, backend=backend)
    assert packed.device == DEVICE and packed.shape == (2, 12, 3, 4)
    assert mosaic.device == DEVICE and mosaic.shape == (2, 6, 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_poisson(backend):
    with second_device() as dev:
        big = kernels.poisson(on(dev, 3, (1 << 17) + 5) * 50, host_generator(), backend=backend)
        default = kernels.poisson(on(dev, 7), backend=backend)
    assert big.device == DEVICE and default.device == DEVICE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model, kw", [
    ("P+G+r+u", dict(sigma_TL=[1.0, 2.0], lam=0.1, sigma_r=0.5)),
    ("p+g", dict(sigma_g=2.0)),
])
def test_synthesize_noise(backend, model, kw):
    with second_device() as dev:
        clean = on(dev, 2, 4, 3, 5)
        net = synthesize_noise_call(clean, model, kw, backend, with_photon=True, concat_origin=True)
        dn = synthesize_noise_call(clean, model, kw, backend, output="dn", black_level=[64.0, 512.0])
        params = kernels.sample_noise_params(2, generator=host_generator(1), device=dev)
        from_params = kernels.synthesize_noise(clean, params=params, generator=host_generator(2), backend=backend)
    assert all(t.device == DEVICE for t in (net, dn, from_params))
    assert net.shape == (2, 12, 3, 5) and dn.shape == from_params.shape == (2, 4, 3, 5)


def synthesize_noise_call(clean, model, kw, backend, **more):
    return kernels.synthesize_noise(clean, model, ratio=[100.0, 250.0], K=2.0, generator=host_generator(),
                                    backend=backend, **kw, **more)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [True, False])
def test_exposure_step_forward_and_backward(backend, stochastic):
    with second_device() as dev:
        net = on(dev, 2, 9, 3, 4).requires_grad_()
        state, origin = on(dev, 2, 4, 3, 4), on(dev, 2, 4, 3, 4)
        est, nxt = kernels.exposure_step(net, state, origin, ratio=[100.0, 50.0], K=2.0, rho=1.0, rho_next=34.0,
                                         stochastic=stochastic, generator=host_generator(), with_photon=True,
                                         backend=backend)
        (est.sum() + nxt.sum()).backward()
        last, _ = kernels.exposure_step(net.detach(), state, origin, ratio=100.0, K=2.0, rho=34.0, backend=backend)
    assert est.device == nxt.device == net.grad.device == last.device == DEVICE


def test_exposure_step_with_device_keys():
    """The engine's form: one key per step on the device (Triton path; the reference reads
    keys back to the host, which the stand-in cannot)."""
    with second_device() as dev:
        n, s, o = on(dev, 1, 9, 3, 4, dtype=torch.float16), on(dev, 1, 4, 3, 4, dtype=torch.float16), on(dev, 1, 4, 3, 4, dtype=torch.float16)
        seed = kernels._common.philox_seed(host_generator(), dev)
        est, nxt = kernels.exposure_step(n, s, o, ratio=100.0, K=2.0, rho=1.0, rho_next=50.0, seed=seed)
    assert est.device == nxt.device == DEVICE


@pytest.mark.parametrize("backend", BACKENDS)
def test_render_srgb_with_host_colour_constants(backend):
    with second_device() as dev:
        packed = on(dev, 2, 4, 3, 5)
        a = kernels.render_srgb(packed, "RGGB", [2.0, 1.0, 1.5], torch.eye(3), backend=backend)
        b = kernels.render_srgb(packed, "BGGR", torch.tensor([2.0, 1.0, 1.5, 1.0]), torch.eye(3).expand(2, 3, 3),
                                out_dtype=torch.float32, backend=backend)
    assert a.device == b.device == DEVICE and a.shape == b.shape == (2, 6, 10, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_unet_ops_and_head_step(backend):
    """The fused UNet's ops (kernels.conv) and the head fused into the exposure step, with
    weights prepared on the device and a host generator."""
    from kernels.conv import conv3x3, prepare_conv3x3, prepare_upconv2x2, upconv2x2
    from kernels.head_step import head_exposure_step, prepare_head

    with second_device() as dev:
        conv = prepare_conv3x3(torch.randn(16, 8, 3, 3, device=dev), torch.randn(16, device=dev))
        x = on(dev, 2, 8, 8, 8, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        y, pooled = conv3x3(x, conv, pool=True, backend=backend)
        up = upconv2x2(y, prepare_upconv2x2(torch.randn(16, 8, 2, 2, device=dev), torch.randn(8, device=dev)),
                       backend=backend)
        head = prepare_head(torch.randn(9, 16, 1, 1, device=dev), torch.randn(9, device=dev))
        state = on(dev, 2, 4, 8, 8, dtype=torch.float16)
        est, nxt = head_exposure_step(y, head, state, state, ratio=[100.0, 50.0], K=2.0, rho=1.0, rho_next=30.0,
                                      generator=host_generator(), backend=backend)
    assert all(t.device == DEVICE for t in (y, pooled, up, est, nxt))


# ------------------------------------------------------------------ training
def test_trainer_data_side_and_unrolled_loss():
    """Trainer.prepare_inputs (host generator, augmentation, synthesis, schedules) and the
    unrolled loss with its backward, as one micro-batch of a training step."""
    from types import SimpleNamespace

    from training.objective import StepWeights, unrolled_loss
    from training.patches import collate_patches
    from training.trainer import TrainConfig, Trainer

    cfg = TrainConfig(steps=3, patch=16, batch=2, widths=(4, 8, 16, 32, 64))
    rng = np.random.default_rng(0)
    items = [dict(raw=torch.from_numpy(rng.integers(512, 16383, (4, 16, 16)).astype(np.uint16)),
                  black=torch.full((4,), 512.0), white=16383.0, index=i) for i in range(2)]
    batch = collate_patches(items)
    model = cfg.backbone_config().build()
    with second_device() as dev:
        x = Trainer.prepare_inputs(SimpleNamespace(cfg=cfg, device=dev, global_step=0), batch, 0)
        net = model.to(dev)
        loss, _ = unrolled_loss(net, x.first, x.clean, ratio=x.ratio, K=x.K, rho=x.rho,
                                weights=StepWeights(3).to(dev)(), with_photon=cfg.with_photon,
                                concat_origin=cfg.concat_origin, generator=x.generator)
        loss.backward()
    assert all(t.device == DEVICE for t in (x.first, x.clean, x.ratio, x.K, x.rho, loss))


# ------------------------------------------------------------------ refusals
def _refusal(call):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return f"{type(info.value).__name__}: {info.value}"


@pytest.mark.parametrize("case", ["noise black_level [2, 3]", "noise K of 3", "exposure state shape",
                                  "exposure ratio of 3", "pack black_level [2, 3]", "render ccm 4x4"])
def test_a_bad_input_gets_the_same_refusal_on_every_device(case):
    """The bad tensor on the data's device (CPU) or on another (meta): one message, the
    shape's, whichever device a user's tensors happen to be on."""
    x, n, s = torch.rand(2, 4, 3, 3), torch.rand(2, 9, 3, 3), torch.rand(2, 4, 3, 3)
    calls = {
        "noise black_level [2, 3]": lambda d: kernels.synthesize_noise(
            x, "P", ratio=100.0, K=1.0, output="dn", black_level=torch.zeros(2, 3, device=d)),
        "noise K of 3": lambda d: kernels.synthesize_noise(x, "P", ratio=100.0, K=torch.ones(3, device=d)),
        "exposure state shape": lambda d: kernels.exposure_step(
            n, torch.rand(2, 4, 3, 5, device=d), s, ratio=100.0, K=1.0, rho=1.0, rho_next=2.0),
        "exposure ratio of 3": lambda d: kernels.exposure_step(
            n, s, s, ratio=torch.ones(3, device=d), K=1.0, rho=1.0, rho_next=2.0),
        "pack black_level [2, 3]": lambda d: kernels.pack_bayer(
            torch.zeros(2, 4, 4, dtype=torch.int32), "RGGB", torch.zeros(2, 3, device=d), 16383),
        "render ccm 4x4": lambda d: kernels.render_srgb(x, "RGGB", [1.0, 1.0, 1.0], torch.eye(4, device=d)),
    }
    same = _refusal(lambda: calls[case]("cpu"))
    other = _refusal(lambda: calls[case]("meta"))
    assert other == same
    assert "is on" not in same and "one device" not in same


@pytest.mark.parametrize("op", ["exposure_step", "synthesize_noise", "poisson", "render_srgb", "pack_bayer"])
def test_a_non_tensor_is_refused_before_the_backend_is_chosen(op, monkeypatch):
    """On a GPU machine the interpreter is off, so backend="triton" with no CUDA tensor
    cannot run; a list where a tensor belongs must still get its TypeError first."""
    monkeypatch.setattr(kernels._common, "triton_interpreter_enabled", lambda: False)
    calls = {
        "exposure_step": lambda: kernels.exposure_step([1.0], torch.rand(1, 4, 2, 2), torch.rand(1, 4, 2, 2), ratio=1.0,
                                                       K=1.0, rho=1.0, backend="triton"),
        "synthesize_noise": lambda: kernels.synthesize_noise([1.0], "P", ratio=1.0, K=1.0, backend="triton"),
        "poisson": lambda: kernels.poisson([1.0], backend="triton"),
        "render_srgb": lambda: kernels.render_srgb([1.0], "RGGB", [1.0, 1.0, 1.0], torch.eye(3), backend="triton"),
        "pack_bayer": lambda: kernels.pack_bayer([1], "RGGB", 0, 16383, backend="triton"),
    }
    with pytest.raises(TypeError, match=r"must be a torch.Tensor, got list"):
        calls[op]()
