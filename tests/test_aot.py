"""Every shipped kernel compiles for real GPUs (sm_80, sm_90) without spilling.

The Triton interpreter runs code that the GPU compiler may refuse, so this compiles
each kernel specialisation through ``triton.compile`` to PTX and cubin in a separate
process (the interpreter must be off there) and reads ptxas' register/spill report.
"""
import json
import os
import subprocess
import sys

import pytest

from kernels import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def aot_report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.aot"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"kernels.aot printed no report (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return report


def test_every_kernel_compiles_for_sm80_and_sm90(aot_report):
    assert aot_report["failures"] == [], json.dumps(aot_report["failures"], indent=1)
    compiled = {(r["kernel"], r["arch"]) for r in aot_report["results"]}
    for mod in aot.KERNEL_MODULES:
        __import__(mod)
    expected = {(s.name, f"sm_{a}") for s in aot.all_specs() for a in aot.ARCHS}
    assert expected and expected <= compiled


def test_no_register_spills(aot_report):
    spilling = [r for r in aot_report["results"] if r["spill_stores"] or r["spill_loads"]]
    assert spilling == [], json.dumps(spilling, indent=1)


def test_every_kernel_module_is_registered():
    """A kernel module left out of KERNEL_MODULES would escape the compile check."""
    kdir = os.path.join(REPO, "kernels")
    modules_with_kernels = set()
    for name in os.listdir(kdir):
        if name.endswith(".py") and not name.startswith("_") and name != "aot.py":
            with open(os.path.join(kdir, name)) as f:
                if "@triton.jit" in f.read():
                    modules_with_kernels.add(f"kernels.{name[:-3]}")
    assert modules_with_kernels <= set(aot.KERNEL_MODULES)


def test_tensor_core_kernels_use_hopper_warpgroup_mma(aot_report):
    """On sm_90 the convolution kernels (and the head kernel's programs of a warpgroup or
    more) must issue HGMMA (wgmma), not only the Ampere-style HMMA; on sm_80 HMMA (the
    SASS from Triton's bundled cuobjdump). One-warp head programs use HMMA on both."""
    gemms = [r for r in aot_report["results"] if r.get("tensor_cores")]
    assert {r["kernel"].split("_")[0] for r in gemms} >= {"conv3x3", "upconv2x2", "head"}
    assert any(r["kernel"].startswith("conv3x3_first") for r in gemms)
    assert all(r["tensor_cores"] == "wgmma" for r in gemms if r["kernel"].startswith(("conv3x3", "upconv2x2")))
    assert any(r["tensor_cores"] == "wgmma" for r in gemms if r["kernel"].startswith("head"))
    for r in gemms:
        if r["arch"] == "sm_90" and r["tensor_cores"] == "wgmma":
            assert r["hgmma"] > 0, r
        else:
            assert r["hmma"] > 0 and r["hgmma"] == 0, r


def test_poisson_sampler_machine_code():
    """docs/architecture.md: a random kernel is memory-bound only if its sampler is cheap. Read from the
    sm_90 SASS of every configuration autotune may pick for ``poisson``: no fp64 instruction,
    the logs are MUFU.LG2 (not libdevice's polynomial), the inversion is unrolled (the only
    loop is PTRS's rejection loop) and one-warp programs have no barrier."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-m", "kernels.aot", "--sass", "poisson["], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    from kernels.poisson import CONFIGS

    assert len(report) == len(CONFIGS)
    for r in report:
        assert r["fp64"] == 0, r["kernel"]
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r["kernel"]
        assert len(r["loops"]) == 1, (r["kernel"], r["loops"])
        assert r["loops"][0]["mufu"].get("MUFU.LG2", 0) > 0, r["kernel"]
        if r["num_warps"] == 1:
            assert r["barriers"] == 0, r["kernel"]


# ---------------------------------------------------------------- SASS gates (issue 20)
# What a fast tensor-core loop looks like in the machine code, read on a CPU-only machine:
# operands by cp.async (LDGSTS) or TMA, never a synchronous LDG inside the loop; a wgmma wait
# that leaves a group in flight; 16-byte (or TMA) stores; room for two CTAs per SM.
VECTOR_STORE_KERNELS = ("conv3x3", "upconv2x2")


def _tensor_core_results(report):
    return [r for r in report["results"] if r.get("tensor_cores")]


def test_tensor_core_main_loops_issue_no_synchronous_load(aot_report):
    problems = []
    for r in _tensor_core_results(aot_report):
        loop = r["gemm"]["main_loop"]
        name = f"{r['kernel']} {r['arch']}"
        if not loop:
            problems.append(f"{name}: no loop issues the MMAs (unrolled: nothing is pipelined)")
            continue
        if loop["sync_loads"]:
            problems.append(f"{name}: {loop['sync_loads']} synchronous global loads in the MMA loop")
        if not loop["async_copies"] + loop["tma_loads"]:
            problems.append(f"{name}: no cp.async / TMA operand loads in the MMA loop")
        if r["arch"] == "sm_90" and r["tensor_cores"] == "wgmma" and (
                not loop["wgmma_waits"] or min(loop["wgmma_waits"]) < 1):
            problems.append(f"{name}: wgmma waits {loop['wgmma_waits']} (0 idles the tensor cores every K step)")
    assert not problems, "\n".join(problems)


def test_tensor_core_epilogues_store_vectors(aot_report):
    """The convolutions store 16-byte vectors (a pixel's channels). The fused head step stores
    each thread's share of an output in as few vectors as its size and alignment allow: the
    estimate's planes (fp32, 4 pixels per 16 bytes) and the next input (a pixel's 4 / 8 / 12
    fp16 channels: 8-, 16-, 8-byte aligned), at most 16 bytes each; so 2 stores where a thread
    holds 16 bytes of each, never one per element (STG.E.U16)."""
    specs = {s.name: s for s in aot.all_specs()}
    problems = []
    for r in _tensor_core_results(aot_report):
        stores = r["gemm"]["stores"]
        if r["gemm"]["tma_stores"]:
            continue
        if r["kernel"].startswith(VECTOR_STORE_KERNELS) and not set(stores) <= {"STG.E.128"}:
            problems.append(f"{r['kernel']} {r['arch']}: {stores} (16-byte vectors expected)")
        if r["kernel"].startswith("head_step"):
            const = specs[r["kernel"]].constexprs
            threads = 32 * r["num_warps"]
            shares = [(const["BLOCK"] * 4 * 4 // threads, 16)]  # the estimate: (bytes per thread, alignment)
            if const["HAS_NEXT"]:
                channels = 4 + 4 * const["WITH_PHOTON"] + 4 * const["CONCAT_ORIGIN"]
                shares.append((const["BLOCK"] * channels * 2 // threads, min(16, (channels * 2) & -(channels * 2))))
            fewest = sum(-(-share // min(16, share, align)) for share, align in shares)
            if sum(stores.values()) > fewest or any(op.endswith((".U16", ".U8", ".S16", ".S8")) for op in stores):
                problems.append(f"{r['kernel']} {r['arch']}: {stores} (at most {fewest} vector stores expected)")
    assert not problems, "\n".join(problems)


# The SID UNet's 3x3 layers: (input channels, skip channels, output channels, pooled).
SID_UNET_CONVS = ([(32, 0, 32, True), (32, 0, 64, False), (64, 0, 64, True), (64, 0, 128, False),
                   (128, 0, 128, True), (128, 0, 256, False), (256, 0, 256, True), (256, 0, 512, False),
                   (512, 0, 512, False)]
                  + [(c, c, c, False) for c in (256, 128, 64, 32)] + [(c, 0, c, False) for c in (256, 128, 64, 32)])


def _kept_conv_specs(c1, c2, cout, pool):
    """The spec names (sm_90 report) of the configurations the autotuner tries for a layer."""
    from kernels.conv_kernels import _conv3x3_kernel, prune_conv

    variant = "skip" if c2 else ("pool" if pool else "plain")
    kept = prune_conv(_conv3x3_kernel.configs, {"C1": c1, "C2": c2, "COUT": cout})
    return [(cfg, f"conv3x3_{variant}_cfg{_conv3x3_kernel.configs.index(cfg)}") for cfg in kept]


def test_every_level_has_a_wide_tile_with_two_ctas_per_sm(aot_report):
    """Each layer of the SID UNet is tried with at least one tile of BLOCK_N >= 128 (the layer's
    own width where it is narrower) that fits two CTAs per SM on sm_90 without spilling, so one
    CTA's loads overlap another's MMAs; 256- and 512-channel layers also get BLOCK_N = 256."""
    sm90 = {r["kernel"]: r for r in aot_report["results"] if r["arch"] == "sm_90"}
    for c1, c2, cout, pool in SID_UNET_CONVS:
        kept = _kept_conv_specs(c1, c2, cout, pool)
        wide = [sm90[name] for cfg, name in kept if cfg.kwargs["BLOCK_N"] >= min(128, cout)]
        assert any(r["ctas_per_sm"] >= 2 and not r["spill_stores"] for r in wide), (c1, c2, cout, wide)
        if cout >= 256:
            assert any(cfg.kwargs["BLOCK_N"] == 256 for cfg, _ in kept), (c1, c2, cout)


def test_level_one_reuses_its_input_through_l1(aot_report):
    """Level 1 (32 channels) reads each input pixel for 9 taps: the autotuner is offered
    configurations whose input copies allocate in L1 (LDGSTS without .BYPASS)."""
    sm90 = {r["kernel"]: r for r in aot_report["results"] if r["arch"] == "sm_90"}
    for c1, c2, cout, pool in SID_UNET_CONVS:
        if cout == 32:
            assert any(sm90[name]["gemm"]["main_loop"]["l1_copies"] for _, name in _kept_conv_specs(c1, c2, cout, pool))


def test_specs_declare_only_what_production_launches(monkeypatch):
    """Every AOT spec compiles the specialisation production launches for a 12 MP frame: no
    argument the JIT does not specialise (B, H, W) is declared divisible by 16, and every
    argument declared divisible is a multiple of 16 (pointers: 16-byte aligned) in the
    launches of the SID UNet at a frame size of the same divisibility (sizes multiple of 16,
    as the engine pads every frame), and the spec's heuristic flags are production's."""
    import torch

    import kernels.conv as conv
    from engine.models.fused_unet import FusedUNet
    from engine.models.unet import UNet
    from kernels.conv_kernels import FRAME_SIZES

    specs = {s.name: s for s in aot.all_specs()}
    for spec in specs.values():
        assert not set(spec.divisible_by_16) & set(FRAME_SIZES), spec.name
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # record the Triton launches on the CPU
    fused = FusedUNet(UNet(8, 9, (32, 64, 128, 256, 512)), torch.float16, backend="triton")
    x = torch.zeros(1, 8, 64, 80, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    with conv.recorded_launches() as launches:
        fused.features(x)
    for kernel, args, _ in launches:
        named = dict(zip(kernel.arg_names, args))
        for cfg, spec_name in _production_spec_names(kernel, named):
            _assert_spec_is_the_launch(specs[spec_name], named, conv.launch_options(kernel, args, cfg))


def _assert_spec_is_the_launch(spec, named, constexprs):
    """``spec`` compiles what the JIT compiles for this launch: the same constexprs; every
    integer the JIT turns into the constexpr 1 declared so; every pointer and integer it
    specialises declared divisible by 16 exactly when it is."""
    import torch

    from kernels.conv_kernels import FRAME_SIZES

    for name, ty in spec.signature.items():
        if name in constexprs:
            assert spec.constexprs[name] == constexprs[name], (spec.name, name)
            continue
        value = named[name]
        if ty == "constexpr" and value != 1:  # a constexpr argument (POOL, C, ...)
            assert spec.constexprs[name] == value, (spec.name, name, value)
            continue
        if isinstance(value, torch.Tensor):
            assert (name in spec.divisible_by_16) == (value.data_ptr() % 16 == 0), (spec.name, name)
        elif isinstance(value, int) and name not in FRAME_SIZES:
            if value == 1:
                assert ty == "constexpr" and spec.constexprs[name] == 1, (spec.name, name, "the JIT passes 1 as a constexpr")
            else:
                assert ty.startswith("i") and (name in spec.divisible_by_16) == (value % 16 == 0), (spec.name, name, value)
        elif name in FRAME_SIZES:
            assert name not in spec.divisible_by_16, (spec.name, name)


@pytest.mark.parametrize("stochastic, channels", [(False, 8), (True, 8), (False, 4), (False, 12)])
def test_head_step_specs_are_the_engines_launches(monkeypatch, stochastic, channels):
    """The fused head step as the engine's loop launches it (FusedUNet, a padded frame, the
    shipped model's 8-channel input in both photon modes, the 4- and 12-channel layouts, every
    step) is one of the specs the SASS gates read, exactly."""
    import torch

    import kernels.head_step as hs
    from engine.inference.loop import exposure_schedule, run_exposure_diffusion
    from engine.models.fused_unet import FusedUNet
    from engine.models.unet import UNet

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    launches = []
    real = hs._head_step_kernel

    class Recorder:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                launches.append((dict(zip(real.arg_names, args)), kwargs))
            return run

    monkeypatch.setattr(hs, "_head_step_kernel", Recorder())
    fused = FusedUNet(UNet(channels, 9, (32, 64, 128, 256, 512)), torch.float16, backend="triton")
    first = torch.rand(1, channels, 32, 48).half().contiguous(memory_format=torch.channels_last)
    ratio = torch.tensor([100.0])
    run_exposure_diffusion(fused, first, ratio=ratio, K=torch.tensor([2.0]), rho=exposure_schedule(ratio, 3),
                           with_photon=channels >= 8, concat_origin=channels == 12, stochastic=stochastic,
                           generator=torch.Generator().manual_seed(0), next_dtype=torch.float16,
                           memory_format=torch.channels_last, backend="triton")
    assert len(launches) == 3
    specs = [s for s in aot.all_specs() if s.name.startswith("head_step")]
    for named, kwargs in launches:
        block, warps = hs.BLOCK, hs.NUM_WARPS  # what every shipped configuration is compared at
        for meta, cfg_warps in (hs.CONFIGS if channels == 8 else [({"BLOCK": block}, warps)]):
            constexprs = {**{k: v for k, v in kwargs.items() if k != "num_warps"}, **meta}
            matching = [s for s in specs if s.num_warps == cfg_warps
                        and all(s.constexprs.get(k) == v for k, v in constexprs.items())]
            assert matching, (constexprs, cfg_warps)
            _assert_spec_is_the_launch(matching[0], named, constexprs)


def _production_spec_names(kernel, named):
    from kernels.conv_kernels import (_conv3x3_kernel, _conv3x3_narrow_kernel, _upconv2x2_kernel, prune_conv,
                                      prune_narrow, prune_upconv)

    if kernel is _conv3x3_kernel:
        variant = "skip" if named["HAS_SKIP"] else ("pool" if named["POOL"] else "plain")
        kept = prune_conv(kernel.configs, named)
        return [(c, f"conv3x3_{variant}_cfg{kernel.configs.index(c)}") for c in kept]
    if kernel is _conv3x3_narrow_kernel:
        kept = prune_narrow(kernel.configs, named)
        return [(c, f"conv3x3_first{named['C']}_cfg{kernel.configs.index(c)}") for c in kept]
    assert kernel is _upconv2x2_kernel
    return [(c, f"upconv2x2_cfg{kernel.configs.index(c)}") for c in prune_upconv(kernel.configs, named)]
