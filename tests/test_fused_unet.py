"""engine.models.fused_unet: the SID UNet run by our fused kernels, against the PyTorch UNet
(random weights, every input / output channel count, odd widths), and inside the
multi-step loop with the head fused into the exposure step.

The Triton path is forced (TRITON_DEVICE: the interpreter on CPU) at the smallest
spatial sizes the UNet takes (multiples of 16). Tolerances: the fused network stores
fp16 activations, rounded once per layer; against the same chain of fp16-rounding
PyTorch references (``backend="torch"``) it agrees to a few fp16 units (5e-3), against
the fp32 UNet to the accumulated fp16 storage error (3e-2 absolute on outputs of size
~0.3, which is what the engine's 45 dB end-to-end bound allows).
"""
import pytest
import torch

from engine.inference.loop import exposure_schedule, run_exposure_diffusion
from engine.models.fused_unet import FusedUNet, HeadFeatures
from engine.models.unet import UNet
from tests.conftest import TRITON_DEVICE

DEV = TRITON_DEVICE


def network(cin, cout, widths, seed=0):
    torch.manual_seed(seed)
    net = UNet(cin, cout, widths=widths).eval()
    with torch.no_grad():
        for p in net.parameters():  # biases of both signs, so LeakyReLU's negative side is used
            if p.dim() == 1:
                p.uniform_(-0.2, 0.2)
    return net.to(DEV)


def first_input(B, cin, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, cin, h, w, generator=g).to(DEV)


@pytest.mark.parametrize("cin, cout, widths, B", [
    (8, 9, (16, 16, 32, 32, 32), 1),
    (4, 4, (8, 16, 16, 16, 32), 2),
    (12, 9, (16, 24, 16, 16, 16), 1),
])
def test_fused_unet_matches_the_pytorch_unet(cin, cout, widths, B):
    net = network(cin, cout, widths, seed=cin)
    x = first_input(B, cin, 16, 32, seed=cout)
    xh = x.half().contiguous(memory_format=torch.channels_last)
    fused = FusedUNet(net, torch.float16, backend="triton")
    chain = FusedUNet(net, torch.float16, backend="torch")  # the kernels' references, same roundings
    out = fused.forward_reference_head(xh)
    assert out.shape == (B, cout, 16, 32) and not torch.isnan(out).any()
    torch.testing.assert_close(out.cpu(), chain.forward_reference_head(xh).cpu(), atol=5e-3, rtol=5e-3)
    with torch.no_grad():
        expected = net(xh.float())
    torch.testing.assert_close(out.cpu(), expected.cpu(), atol=3e-2, rtol=3e-2)


def test_head_is_left_to_the_exposure_step():
    net = network(8, 9, (16, 16, 16, 16, 16))
    fused = FusedUNet(net, torch.float16, backend="triton")
    out = fused(first_input(1, 8, 16, 16).half().contiguous(memory_format=torch.channels_last))
    assert isinstance(out, HeadFeatures) and out.features.shape == (1, 16, 16, 16)
    assert out.features.is_contiguous(memory_format=torch.channels_last)


def test_loop_with_the_fused_unet_matches_the_module():
    """Three deterministic steps: the fused network + fused head step against the PyTorch
    UNet + the exposure step, fp16 inputs between steps as on the GPU."""
    net = network(8, 9, (16, 16, 16, 16, 16), seed=3)
    B = 2
    ratio = torch.tensor([100.0, 300.0], device=DEV)
    K = torch.tensor([2.0, 0.5], device=DEV)
    rho = exposure_schedule(ratio, 3)
    a_t = first_input(B, 4, 16, 16, seed=5) * 0.5
    x = torch.cat([a_t, a_t / (ratio * K).view(-1, 1, 1, 1)], 1).half().contiguous(memory_format=torch.channels_last)
    kw = dict(ratio=ratio, K=K, rho=rho, with_photon=True, concat_origin=False, stochastic=False,
              next_dtype=torch.float16, memory_format=torch.channels_last, backend="triton")
    fused = run_exposure_diffusion(FusedUNet(net, torch.float16, backend="triton"), x, **kw)
    with torch.no_grad():
        module = run_exposure_diffusion(lambda t: net(t.float()), x, **kw)
    assert fused.shape == (B, 4, 16, 16) and fused.dtype == torch.float32
    torch.testing.assert_close(fused.cpu(), module.cpu(), atol=3e-2, rtol=3e-2)
    assert (fused - module).abs().mean() < 3e-3


def test_refusals():
    net = network(8, 9, (16, 16, 16, 16, 16))
    with pytest.raises(TypeError, match="FusedUNet runs engine.models.unet.UNet, got Conv2d"):
        FusedUNet(torch.nn.Conv2d(8, 9, 1))
    with pytest.raises(TypeError, match="dtype must be float16 or bfloat16"):
        FusedUNet(net, torch.float32)
    fused = FusedUNet(net, torch.float16)
    with pytest.raises(ValueError, match="FusedUNet needs a spatial size that is a multiple of 16, got 16x20"):
        fused(torch.zeros(1, 8, 16, 20, dtype=torch.float16, device=DEV))
    with pytest.raises(ValueError, match="FusedUNet was built for 8 input channels, got 4"):
        fused(torch.zeros(1, 4, 16, 16, dtype=torch.float16, device=DEV))
    with pytest.raises(TypeError, match="FusedUNet was built for torch.float16 inputs, got torch.float32"):
        fused(torch.zeros(1, 8, 16, 16, device=DEV))


def test_precompile_plan_is_small_enough_for_a_quick_first_frame():
    """Before autotuning, the fused UNet compiles every configuration the autotuner will
    try, in parallel. Sizes are not specialised on, so one shape covers all; the pruned
    configurations of the SID UNet's 22 launches come down to a few dozen distinct
    kernels (the first-frame budget of issue 11 is 60 s). The plan holds every constexpr of
    a launch, the heuristics' flags included (JIT warm-up needs them all)."""
    import kernels.conv as conv

    net = network(8, 9, (32, 64, 128, 256, 512))
    fused = FusedUNet(net, torch.float16, backend="triton")
    x = first_input(1, 8, 64, 64).half().contiguous(memory_format=torch.channels_last)
    with conv.recorded_launches() as launches:
        out = fused.features(x)
    assert len(launches) == 22 and out.shape == (1, 32, 64, 64)
    plan = conv.precompile_plan(launches)
    assert 20 <= len(plan) <= 50, len(plan)
    for kernel, args, cfg, options in plan:
        assert "EVEN_N" in options and set(cfg.kwargs) <= set(options)
    assert {k.fn.fn.__name__ for k, *_ in plan} == {"_conv3x3_kernel", "_conv3x3_narrow_kernel", "_upconv2x2_kernel"}
    assert fused.precompile(x) == len(plan)  # on a CPU only the plan is made: it must not fail


def test_the_first_frame_compiles_every_kernel_of_the_loop_in_one_batch():
    """What the engine precompiles in parallel at the first frame of a shape (before timing):
    every autotuned kernel the candidates' loops launch, the fused path's convolutions and
    head step and the PyTorch path's exposure step, with every configuration each tuner tries."""
    from engine.inference.loop import exposure_schedule, run_exposure_diffusion
    from kernels._tuning import precompile_plan, recorded_launches

    net = network(8, 9, (32, 64, 128, 256, 512))
    fused = FusedUNet(net, torch.float16, backend="triton")
    first = first_input(1, 8, 32, 48).half().contiguous(memory_format=torch.channels_last)
    ratio = torch.tensor([100.0])
    kw = dict(ratio=ratio, K=torch.tensor([2.0]), rho=exposure_schedule(ratio, 3), with_photon=True,
              concat_origin=False, stochastic=False, next_dtype=torch.float16, memory_format=torch.channels_last,
              backend="triton")
    eager = lambda x: net.half()(x)  # noqa: E731 - the PyTorch candidate (runs for real while recording)
    with recorded_launches() as launches:
        for candidate in (fused, eager):
            run_exposure_diffusion(candidate, first, **kw)
    kernels = {}
    for tuner, args, cfg, options in precompile_plan(launches):
        name = tuner.fn.__name__ if hasattr(tuner.fn, "__name__") else tuner.fn.fn.__name__
        kernels[name] = kernels.get(name, 0) + 1
    # 3 steps: head step with and without a next step (x 3 configurations), the same for the
    # exposure step (x its 6); the convolutions as planned for the first frame above
    assert kernels["_head_step_kernel"] == 2 * 3 and kernels["_exposure_fwd_kernel"] == 2 * 6
    assert {"_conv3x3_kernel", "_conv3x3_narrow_kernel", "_upconv2x2_kernel"} <= set(kernels)
    assert sum(kernels.values()) == len(precompile_plan(launches)) and not launches[0][2].get("num_warps")
