"""engine.Pipeline end to end on DNG files the tests write, and its refusals."""
import platform
import sys

import numpy as np
import pytest
import rawpy
import tifffile
import torch
from PIL import Image

import engine.io.atomic
from engine import BackboneConfig, EnhancedFrame, Pipeline, read_raw
from engine.camera import DEFAULT_CAMERA, camera_to_srgb, match_camera
from engine.inference.pipeline import cpu_supports_bf16, default_precision
from kernels import load_profile, unpack_bayer
from tests.dngfactory import make_bayer_dng

PATTERNS = ["RGGB", "BGGR", "GRBG", "GBRG"]


def small_pipeline(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = BackboneConfig(arch="unet", options={"widths": (8, 16, 16, 32, 32)})
    return Pipeline(cfg.build(), cfg, device="cpu", **{"precision": "fp32", **kw})


@pytest.fixture(scope="module")
def pipe():
    return small_pipeline()


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dng_in_png_tiff_dng_out(tmp_path, pipe, pattern):
    src = tmp_path / f"in_{pattern}.dng"
    make_bayer_dng(src, height=64, width=96, pattern=pattern, black_level=(512, 510, 514, 508), iso=3200)
    res = pipe(str(src), ratio=100, steps=2, seed=0)
    assert isinstance(res, EnhancedFrame) and res.raw.shape == (4, 32, 48) and res.raw.dtype == torch.float32
    assert 0 <= res.raw.min() and res.raw.max() <= 1
    assert res.K == pytest.approx(load_profile("SonyA7S2").K_from_iso(3200))  # make/model Sony ILCE-7SM2

    png = res.save(tmp_path / "out.png")
    img = np.asarray(Image.open(png))
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8
    assert np.array_equal(img, res.srgb().numpy())

    tif = res.save(tmp_path / "out.tiff")
    t16 = tifffile.imread(tif)
    assert t16.shape == (64, 96, 3) and t16.dtype == np.uint16

    dng = res.save(tmp_path / "out.dng")
    with rawpy.imread(str(dng)) as raw:
        mosaic = raw.raw_image_visible.copy()
    frame = read_raw(str(dng))
    assert frame.pattern == pattern and frame.black_level == (512, 510, 514, 508) and frame.white_level == 16383
    expected = unpack_bayer(res.raw[None], pattern, torch.tensor([512.0, 510, 514, 508]), 16383.0)[0].numpy()
    assert np.array_equal(mosaic, expected)
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_rawpy_object_numpy_and_batch_inputs(tmp_path, pipe):
    src = tmp_path / "a.dng"
    cfa = make_bayer_dng(src, height=64, width=96, pattern="GRBG", black_level=(512, 512, 512, 512), iso=800)
    a = pipe(str(src), ratio=50, steps=2, stochastic=False)
    with rawpy.imread(str(src)) as raw:
        b = pipe(raw, ratio=50, steps=2, stochastic=False)
    c = pipe(cfa, ratio=50, steps=2, stochastic=False, pattern="GRBG", black_level=512, white_level=16383, K=a.K)
    assert torch.equal(a.raw, b.raw) and torch.allclose(a.raw, c.raw, atol=1e-6)
    batch = pipe([str(src), str(src)], ratio=50, steps=2, stochastic=False)
    assert isinstance(batch, list) and len(batch) == 2
    assert torch.allclose(batch[0].raw, a.raw, atol=1e-5) and torch.allclose(batch[1].raw, a.raw, atol=1e-5)


def test_seeded_batch_matches_itself_and_samples_differ(pipe):
    cfa = torch.randint(512, 3000, (2, 32, 64), generator=torch.Generator().manual_seed(5), dtype=torch.int32).to(torch.uint16)
    kw = dict(ratio=100, steps=3, K=2.0, pattern="RGGB", black_level=512, white_level=16383)
    r1, r2 = pipe(cfa, seed=7, **kw), pipe(cfa, seed=7, **kw)
    assert all(torch.equal(x.raw, y.raw) for x, y in zip(r1, r2))


def test_tiled_equals_untiled_in_deterministic_mode():
    """Tiles with margin >= steps x the UNet's influence radius, on the 16-pixel grid,
    reproduce the whole-frame result up to fp32 summation order."""
    cfa = torch.randint(512, 4000, (2 * 560, 2 * 528), generator=torch.Generator().manual_seed(6), dtype=torch.int32).to(torch.uint16)
    kw = dict(ratio=60, steps=2, K=1.5, stochastic=False, pattern="RGGB", black_level=512, white_level=16383)
    whole = small_pipeline(3)(cfa, **kw).raw
    tiled = small_pipeline(3, max_tile=512)(cfa, **kw).raw
    assert tiled.shape == whole.shape == (4, 560, 528)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_out_of_memory_falls_back_to_tiles(monkeypatch):
    """A simulated device OOM for frames above 300 packed pixels: the pipeline retries in
    tiles and returns the same result as an untiled run."""
    cfa = torch.randint(512, 4000, (2 * 400, 2 * 384), generator=torch.Generator().manual_seed(8), dtype=torch.int32).to(torch.uint16)
    kw = dict(ratio=60, steps=1, K=1.5, stochastic=False, pattern="RGGB", black_level=512, white_level=16383)
    expected = small_pipeline(4)(cfa, **kw).raw
    pipe = small_pipeline(4)
    original = Pipeline._run_whole
    calls = []

    def flaky(self, x, *a, **k):
        calls.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > 300:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return original(self, x, *a, **k)

    monkeypatch.setattr(Pipeline, "_run_whole", flaky)
    got = pipe(cfa, **kw).raw
    assert calls[0] == (400, 384) and len(calls) > 2 and all(max(c) <= 300 for c in calls[-2:])
    assert (got - expected).abs().max().item() < 1e-4


def test_camera_matching_and_colour():
    assert match_camera("SONY", "ILCE-7SM2") == "SonyA7S2"
    assert match_camera("NIKON CORPORATION", "NIKON D850") == "NikonD850"
    assert match_camera("Canon", "Canon EOS 5D Mark IV") == "CanonEOS5D4"
    assert match_camera("Fujifilm", "X-T4") is None
    ccm = camera_to_srgb(np.array([[0.6, -0.1, -0.05], [-0.4, 1.3, 0.1], [-0.05, 0.15, 0.6]]))
    assert np.allclose(ccm.sum(1), 1.0, atol=1e-9)  # neutral stays neutral
    assert np.array_equal(camera_to_srgb(None), np.eye(3))


def test_unknown_camera_defaults_to_documented_profile(pipe):
    cfa = torch.full((32, 32), 700, dtype=torch.uint16)
    res = pipe(cfa, ratio=10, steps=1, iso=1600, pattern="RGGB", black_level=512, white_level=16383)
    assert res.K == pytest.approx(load_profile(DEFAULT_CAMERA).K_from_iso(1600))
    named = pipe(cfa, ratio=10, steps=1, iso=1600, camera="NikonD850", pattern="RGGB", black_level=512, white_level=16383)
    assert named.K == pytest.approx(load_profile("NikonD850").K_from_iso(1600))


ARR = dict(pattern="RGGB", black_level=512, white_level=16383)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(ratio=0, K=1.0), ValueError, r"ratio must be a finite number in \(0, 10000\], got 0"),
        (dict(ratio=-5, K=1.0), ValueError, r"ratio must be a finite number in \(0, 10000\], got -5"),
        (dict(ratio=20000, K=1.0), ValueError, r"ratio must be a finite number in \(0, 10000\], got 20000"),
        (dict(ratio=float("nan"), K=1.0), ValueError, "ratio must be a finite number"),
        (dict(ratio=100, K=1.0, steps=0), ValueError, r"steps must be an integer in \[1, 100\], got 0"),
        (dict(ratio=1, K=1.0, steps=3), ValueError, "steps > 1 needs ratio > 1"),
        (dict(ratio=100, K=1.0, steps=2, schedule=[1, 150, 100]), ValueError, "schedule must increase strictly"),
        (dict(ratio=100, K=-2.0), ValueError, r"K must be a finite number in \[0.01, 10000\] DN per photo-electron"),
        (dict(ratio=100), ValueError, "the gain K is unknown"),
        (dict(ratio=100, iso=800, camera="NoSuchCam"), ValueError, "unknown camera 'NoSuchCam'"),
        (dict(ratio=100, K=1.0, seed=1, generator=torch.Generator()), ValueError, "give seed= or generator=, not both"),
    ],
)
def test_call_refusals(pipe, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pipe(torch.full((32, 32), 600, dtype=torch.uint16), **ARR, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(precision="fp16"), "precision 'fp16' needs a CUDA device"),
        (dict(precision="int8"), "precision must be one of"),
        (dict(cuda_graphs=True), "cuda_graphs=True needs a CUDA device"),
        (dict(max_tile=100), "max_tile must be a multiple of 16"),
        (dict(dn_scale=0), "dn_scale must be a finite number > 0"),
    ],
)
def test_constructor_refusals(kwargs, match):
    cfg = BackboneConfig()
    with pytest.raises(ValueError, match=match):
        Pipeline(cfg.build(), cfg, device="cpu", **kwargs)


def test_save_refusals(tmp_path, pipe):
    res = pipe(torch.full((32, 32), 600, dtype=torch.uint16), ratio=10, steps=1, K=1.0, **ARR)
    with pytest.raises(ValueError, match="cannot tell the output format"):
        res.save(tmp_path / "out.gif")
    with pytest.raises(ValueError, match="unknown output format 'bmp'"):
        res.save(tmp_path / "out.x", format="bmp")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        res.save(tmp_path / "missing" / "out.png")


def test_interrupted_write_keeps_existing_output(tmp_path, pipe, monkeypatch):
    res = pipe(torch.full((32, 32), 600, dtype=torch.uint16), ratio=10, steps=1, K=1.0, **ARR)
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def boom(*a, **k):
        raise KeyboardInterrupt

    # Interrupted once the encoded bytes are in the temporary file, before it takes the name.
    monkeypatch.setattr(engine.io.atomic.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        res.save(target, overwrite=True)
    assert target.read_bytes() == b"previous" and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() != "x86_64",
                    reason="/proc/cpuinfo's x86 flags are the reference")
def test_bf16_is_offered_on_a_cpu_only_with_native_bf16_instructions():
    """oneDNN says yes to bf16 on every AVX-512 CPU and then emulates it (0.23x fp32 measured on
    one without AVX512-BF16): the bf16 candidates of the CPU backbone choice must follow the
    instructions the kernel lists; fp32 is the reference every candidate is held to."""
    from engine.inference.cpu_backends import cpu_candidates

    flags = open("/proc/cpuinfo").read()
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    assert cpu_supports_bf16() == native
    assert ("eager-bf16" in cpu_candidates()) == native
    assert default_precision(torch.device("cpu")) == "fp32"


def test_emulated_bf16_is_not_taken_for_native(monkeypatch):
    """An AVX-512 CPU without the bf16 instructions, as PyTorch's cpuinfo reports it, gets no
    bf16 candidate and refuses precision="bf16", even though oneDNN would accept bf16 there."""
    from engine.inference.cpu_backends import cpu_candidates

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_supports_bf16()
    assert not {"eager-bf16", "openvino-bf16"} & set(cpu_candidates())
    cfg = BackboneConfig(options={"widths": (8, 8, 8, 8, 8)})
    with pytest.raises(ValueError, match="native bf16"):
        Pipeline(cfg.build(), cfg, device="cpu", precision="bf16")
    with pytest.raises(ValueError, match="backbone_path='eager-bf16' is not available here: this CPU has no bf16"):
        Pipeline(cfg.build(), cfg, device="cpu", backbone_path="eager-bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert cpu_supports_bf16() and "eager-bf16" in cpu_candidates()


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no native bf16")
def test_cpu_bf16_stays_within_45_db_of_fp32():
    """The CPU may run the backbone in bf16 autocast only if its output stays within
    45 dB PSNR of fp32 (issue #3); the full-size UNet, deterministic mode, 3 steps."""
    torch.manual_seed(0)
    cfg = BackboneConfig()
    net = cfg.build()
    cfa = torch.randint(512, 1500, (128, 192), generator=torch.Generator().manual_seed(9), dtype=torch.int32).to(torch.uint16)
    kw = dict(ratio=100, steps=3, K=2.0, stochastic=False, **ARR)
    fp32 = Pipeline(net, cfg, device="cpu", precision="fp32", fidelity_scale=None)(cfa, **kw).raw
    bf16 = Pipeline(net, cfg, device="cpu", precision="bf16", fidelity_scale=None)(cfa, **kw).raw
    mse = torch.mean((fp32.double() - bf16.double()) ** 2).item()
    psnr = 10 * np.log10(1.0 / mse)
    assert psnr >= 45.0, f"bf16 PSNR vs fp32 {psnr:.1f} dB"
    assert mse > 0, "bf16 path did not run in bf16"


def test_pipeline_does_not_modify_the_callers_model():
    cfg = BackboneConfig(arch="unet", options={"widths": (8, 16, 16, 32, 32)})
    net = cfg.build()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    Pipeline(net, cfg, device="cpu", precision="bf16" if cpu_supports_bf16() else "fp32")
    assert all(torch.equal(before[k], v) and v.dtype == torch.float32 for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())
