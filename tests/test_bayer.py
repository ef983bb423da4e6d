"""kernels.bayer: pack / unpack Bayer frames, Triton path against the PyTorch reference.

Tolerances: float32 outputs of pack are compared exactly (kernel and reference do the
same float32 operations in the same order); float16 outputs within 1 fp16 ulp; float DN
from unpack within rtol 1e-6 (a GPU may fuse the multiply-add); uint16 DN exactly.
Outputs are poisoned (NaN / 65535) through ``out=`` so unwritten elements show.
"""
import math

import pytest
import torch

from kernels.bayer import (PATTERNS, pack_bayer, pack_bayer_reference, parse_pattern, unpack_bayer,
                           unpack_bayer_reference)
from tests.conftest import TRITON_DEVICE
from tests.helpers import poison_

DEV = TRITON_DEVICE
OTHER_DEVICE = "cpu" if DEV.type == "cuda" else "meta"  # a device the data is not on
WHITE = 16383
BLACK = [512.0, 530.0, 500.0, 545.0]  # by colour code 0..3, all different
# rawpy raw_pattern arrays; the last two use code 1 for both greens.
RAWPY = {
    "RGGB": [[0, 1], [3, 2]], "BGGR": [[2, 3], [1, 0]], "GRBG": [[1, 0], [2, 3]], "GBRG": [[3, 2], [0, 1]],
    "RGGB-1": [[0, 1], [1, 2]], "GBRG-1": [[1, 2], [0, 1]],
}
ALL_PATTERNS = list(PATTERNS) + ["gbrg"] + list(RAWPY.values())
SHAPES = [(2, 2), (3, 5), (7, 10), (2, 6, 9), (2, 19, 131)]  # last: several tiles in h and w


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_cfa(shape, gen, dtype=torch.uint16, low=1, high=WHITE + 300):
    """Random DN, never zero, some below black and some above white (clip both ends)."""
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int32).to(dtype).to(DEV)


def assert_close_dtype(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert not torch.isnan(actual.float()).any(), "unwritten (poisoned) elements"
    if actual.dtype == torch.float16:  # within 1 fp16 ulp (relative 2**-10, subnormal 2**-24)
        torch.testing.assert_close(actual, expected, rtol=2**-10, atol=2**-24)
    else:
        assert torch.equal(actual, expected), (actual - expected).abs().max()


def poisoned(shape, dtype):
    return poison_(torch.empty(shape, dtype=dtype, device=DEV))


# ------------------------------------------------------------------ pack against reference


@pytest.mark.parametrize("pattern", ALL_PATTERNS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_matches_reference(pattern, shape):
    cfa = random_cfa(shape, _gen(sum(shape)))
    ref = pack_bayer_reference(cfa, pattern, BLACK, WHITE, ratio=1.7)
    out = poisoned(ref.shape, torch.float32)
    got = pack_bayer(cfa, pattern, BLACK, WHITE, ratio=1.7, out=out, backend="triton")
    assert got is out and ref.shape == (1 if len(shape) == 2 else shape[0], 4, shape[-2] // 2, shape[-1] // 2)
    assert_close_dtype(got, ref)
    if ref.numel() >= 64:  # inputs exercise both clips
        assert (ref == 0).any() and (ref == 1).any() and 0 < ref.mean() < 1


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("cfa_dtype", [torch.uint16, torch.int32, torch.float32, torch.float16], ids=str)
def test_pack_dtypes(cfa_dtype, out_dtype):
    high = 2048 if cfa_dtype == torch.float16 else WHITE  # exact integers in fp16
    cfa = random_cfa((2, 9, 14), _gen(3), dtype=cfa_dtype, high=high)
    if cfa_dtype.is_floating_point:
        cfa = cfa + 0.25  # fractional DN must be kept
    ref = pack_bayer_reference(cfa, "GRBG", [10, 20, 30, 40], high, ratio=[1.0, 3.0], out_dtype=out_dtype)
    got = pack_bayer(cfa, "GRBG", [10, 20, 30, 40], high, ratio=[1.0, 3.0], out_dtype=out_dtype,
                     out=poisoned(ref.shape, out_dtype), backend="triton")
    assert_close_dtype(got, ref)


def test_pack_per_sample_levels():
    """Per-sample black [B, 4] (by colour code), white [B] and ratio [B] tensors."""
    g = _gen(4)
    cfa = random_cfa((3, 10, 12), g, high=4200)
    black = torch.tensor([[60, 61, 62, 63], [200, 180, 190, 170], [0, 5, 10, 15]], dtype=torch.float32, device=DEV)
    white = torch.tensor([1023.0, 4095.0, 4000.0], device=DEV)
    ratio = torch.tensor([1.0, 2.5, 0.5], device=DEV)
    pattern = RAWPY["BGGR"]
    ref = pack_bayer_reference(cfa, pattern, black, white, ratio)
    got = pack_bayer(cfa, pattern, black, white, ratio, out=poisoned(ref.shape, torch.float32), backend="triton")
    assert_close_dtype(got, ref)
    # Independent formula for one sample and one plane (B of BGGR at (0, 0), black code 2).
    d = cfa[1, 0::2, 0::2].float()
    torch.testing.assert_close(got[1, 2], ((d - 190) / (4095 - 190) * 2.5).clamp(0, 1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("with_photon,concat_origin", [(True, False), (False, True), (True, True)])
def test_network_input(with_photon, concat_origin, out_dtype):
    cfa_dim = random_cfa((2, 11, 20), _gen(5), low=500, high=620)  # dim frame: amplified, mostly unclipped
    ratio = torch.tensor([100.0, 250.0], device=DEV)
    K = torch.tensor([0.7, 12.0], device=DEV)
    kw = dict(K=K, with_photon=with_photon, concat_origin=concat_origin, out_dtype=out_dtype)
    ref = pack_bayer_reference(cfa_dim, "RGGB", BLACK, WHITE, ratio, **kw)
    got = pack_bayer(cfa_dim, "RGGB", BLACK, WHITE, ratio, out=poisoned(ref.shape, out_dtype), backend="triton", **kw)
    assert got.shape == (2, 4 * (1 + with_photon + concat_origin), 5, 10)
    assert_close_dtype(got, ref)
    state = pack_bayer_reference(cfa_dim, "RGGB", BLACK, WHITE, ratio).to(out_dtype)
    assert_close_dtype(got[:, :4], state)
    assert 0.05 < state.float().mean() < 0.95
    if with_photon:  # A_T * rho_0 / (ratio * K) with rho_0 = 1
        state32 = pack_bayer_reference(cfa_dim, "RGGB", BLACK, WHITE, ratio)
        expect = (state32 / (ratio * K)[:, None, None, None]).to(out_dtype)
        tol = dict(rtol=2**-10, atol=2**-24) if out_dtype == torch.float16 else dict(rtol=1e-6, atol=0)
        torch.testing.assert_close(got[:, 4:8], expect, **tol)
    if concat_origin:
        assert_close_dtype(got[:, -4:], state)


def test_pack_non_contiguous_views():
    g = _gen(6)
    base = random_cfa((2, 24, 18), g)
    views = [base.transpose(1, 2), base[:, 1:22, 2::1][:, :, :15], base[:, ::2, ::3], base[1].t()]
    for cfa in views:
        assert not cfa.is_contiguous()
        ref = pack_bayer_reference(cfa, "BGGR", BLACK, WHITE, 2.0)
        got = pack_bayer(cfa, "BGGR", BLACK, WHITE, 2.0, out=poisoned(ref.shape, torch.float32), backend="triton")
        assert_close_dtype(got, ref)
    # channels-last output buffer (what an fp16 channels_last backbone wants)
    cfa = base
    ref = pack_bayer_reference(cfa, "GBRG", BLACK, WHITE, 3.0, K=2.0, with_photon=True, out_dtype=torch.float16)
    out = poisoned((2, 12, 9, 8), torch.float16).permute(0, 3, 1, 2)
    got = pack_bayer(cfa, "GBRG", BLACK, WHITE, 3.0, K=2.0, with_photon=True, out_dtype=torch.float16, out=out, backend="triton")
    assert got is out and not got.is_contiguous()
    assert_close_dtype(got, ref)


def test_backend_dispatch():
    cfa = random_cfa((6, 8), _gen(7))
    ref = pack_bayer_reference(cfa, "RGGB", 100, WHITE)
    back = unpack_bayer_reference(ref, "RGGB", 100, WHITE)
    for backend in ("auto", "torch", "triton"):
        assert_close_dtype(pack_bayer(cfa, "RGGB", 100, WHITE, out=poisoned(ref.shape, ref.dtype), backend=backend), ref)
        got = unpack_bayer(ref[0], "RGGB", 100, WHITE, out=poisoned((6, 8), torch.uint16), backend=backend)
        assert torch.equal(got, back[0])


@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("with_photon,concat_origin", [(False, False), (True, False), (False, True), (True, True)])
def test_the_plane_by_plane_torch_path_equals_the_reference_bit_for_bit(with_photon, concat_origin, out_dtype, clip):
    # backend="torch" packs one plane at a time into the output (a 12 MP frame's
    # temporaries: one plane instead of ~0.6 GB): the same float32 arithmetic as the
    # reference, so the same bits, whatever the output's layout; odd sizes, per-sample levels.
    cfa = random_cfa((2, 13, 22), _gen(11), low=0, high=WHITE + 300)
    black = torch.tensor([[60, 61, 62, 63], [200, 180, 190, 170]], dtype=torch.float32, device=DEV)
    kw = dict(K=torch.tensor([0.7, 12.0], device=DEV), with_photon=with_photon, concat_origin=concat_origin,
              out_dtype=out_dtype)
    ratio = torch.tensor([3.0, 0.5], device=DEV)
    if not clip:
        kw = dict(out_dtype=torch.float32, clip=False)
    ref = pack_bayer_reference(cfa, "GRBG", black, WHITE, ratio, **kw)
    B, C, h, w = ref.shape
    for out in (poisoned(ref.shape, ref.dtype), poisoned((B, h, w, C), ref.dtype).permute(0, 3, 1, 2)):
        got = pack_bayer(cfa.cpu(), "GRBG", black.cpu(), WHITE, ratio.cpu(), out=out.cpu(), backend="torch",
                         **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
        assert torch.equal(got, ref.cpu())
    if not clip:
        assert (ref < 0).any() and (ref > 1).any()  # the unclipped form keeps both tails


# ------------------------------------------------------------------ pattern handling, independently


def _site_plane(pattern):
    """plane index (0 R, 1 G1, 2 B, 3 G2) of each 2x2 site, from the pattern's definition."""
    if isinstance(pattern, str):
        letters = [[pattern[0], pattern[1]], [pattern[2], pattern[3]]]
    else:
        letters = [["RGBG"[v] for v in row] for row in pattern]
    r_row = 0 if "R" in letters[0] else 1
    names = {"R": 0, "B": 2}
    return [[names.get(letters[y][x], 1 if y == r_row else 3) for x in range(2)] for y in range(2)]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("pattern", list(PATTERNS) + list(RAWPY.values()), ids=str)
def test_planes_land_in_place(pattern, backend):
    """Each DN encodes (plane, y, x): D = 1000 * (plane + 1) + 10 * y + x."""
    planes = _site_plane(pattern)
    H, W = 6, 8
    cfa = torch.tensor([[1000 * (planes[y % 2][x % 2] + 1) + 10 * y + x for x in range(W)] for y in range(H)],
                       dtype=torch.int32).to(torch.uint16).to(DEV)
    x = pack_bayer(cfa, pattern, 0, 8000, backend=backend)[0]
    d = torch.round(x.double() * 8000).long().cpu()
    assert torch.equal(d // 1000 - 1, torch.arange(4).view(4, 1, 1).expand(4, 3, 4)), "wrong colour in a plane"
    y, xx = d % 1000 // 10, d % 10
    assert torch.equal(y[0], y[1]) and torch.equal(y[2], y[3]), "planes 0,1 / 2,3 must share a CFA row"
    assert torch.equal(xx[0], xx[3]) and torch.equal(xx[1], xx[2])
    assert torch.equal(y[0] // 2, torch.arange(3).view(3, 1).expand(3, 4))
    assert torch.equal(xx[0] // 2, torch.arange(4).view(1, 4).expand(3, 4))
    # and back: unpack restores the sensor's own mosaic
    assert torch.equal(unpack_bayer(x, pattern, 0, 8000, backend=backend).int().cpu(), cfa.int().cpu())


def test_black_level_indexed_by_colour_code():
    """rawpy order: black_level[k] applies to the sites whose raw_pattern code is k."""
    cfa = torch.full((4, 4), 1000, dtype=torch.int32).to(torch.uint16).to(DEV)
    black = [100, 200, 300, 400]
    for pattern, expect in [("GBRG", [100, 200, 300, 400]), ([[3, 2], [0, 1]], [100, 200, 300, 400]),
                            ([[1, 2], [0, 3]], [100, 400, 300, 200]), ([[1, 2], [0, 1]], [100, 200, 300, 200])]:
        x = pack_bayer(cfa, pattern, black, 2000, backend="triton")[0, :, 0, 0]
        want = torch.tensor([(1000 - b) / (2000 - b) for b in expect], device=DEV)
        torch.testing.assert_close(x, want, rtol=1e-6, atol=0)
    assert parse_pattern([[1, 2], [0, 3]]) == (1, 0, (0, 3, 2, 1))


# ------------------------------------------------------------------ unpack


@pytest.mark.parametrize("pattern", list(PATTERNS) + [RAWPY["GRBG"], RAWPY["RGGB-1"]], ids=str)
@pytest.mark.parametrize("to_dn,out_dtype", [(True, None), (True, torch.float32), (False, None), (False, torch.float16)])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float16], ids=str)
def test_unpack_matches_reference(pattern, to_dn, out_dtype, in_dtype):
    g = _gen(8)
    packed = torch.rand((2, 4, 9, 66), generator=g).to(in_dtype).to(DEV) * 1.1  # a few > 1: unclipped
    ratio = torch.tensor([1.0, 4.0], device=DEV)
    ref = unpack_bayer_reference(packed, pattern, BLACK, WHITE, ratio=ratio, to_dn=to_dn, out_dtype=out_dtype)
    got = unpack_bayer(packed, pattern, BLACK, WHITE, ratio=ratio, to_dn=to_dn, out_dtype=out_dtype,
                       out=poisoned(ref.shape, ref.dtype), backend="triton")
    assert got.shape == (2, 18, 132) and got.dtype == (out_dtype or (torch.uint16 if to_dn else torch.float32))
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    else:
        assert_close_dtype(got, ref)


def test_unpack_3d_non_contiguous_and_clamp():
    g = _gen(9)
    net_in = torch.rand((1, 12, 10, 7), generator=g).to(DEV) * 3 - 1  # beyond [0, 1]: DN clamped to uint16
    views = [net_in[0, 4:8], net_in[0, :4].transpose(1, 2), net_in[:, 8:12, ::2]]
    for packed in views:
        ref = unpack_bayer_reference(packed, "BGGR", 4000, 60000, ratio=0.5)
        got = unpack_bayer(packed, "BGGR", 4000, 60000, ratio=0.5, out=poisoned(ref.shape, torch.uint16), backend="triton")
        assert got.dim() == packed.dim() - 1 and torch.equal(got, ref)
    assert ref.int().min() == 0 and ref.int().max() == 65535


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("pattern", list(PATTERNS) + list(RAWPY.values()), ids=str)
def test_round_trip_exact(pattern, backend):
    """pack -> unpack returns every DN in [black, white] exactly (ratio 1, and ratio 4 below white / 4)."""
    g = _gen(10)
    per_site = torch.zeros(2, 2)
    r_row, r_col, codes = parse_pattern(pattern)
    sites = [(r_row, r_col), (r_row, 1 - r_col), (1 - r_row, 1 - r_col), (1 - r_row, r_col)]
    for (y, x), code in zip(sites, codes):
        per_site[y, x] = BLACK[code]
    black_map = per_site.repeat(5, 7)[None].expand(2, 10, 14)
    for ratio in (1.0, 4.0):
        span = (WHITE - black_map) / ratio  # above black + span the amplified value clips
        cfa = (black_map + torch.floor(torch.rand((2, 10, 14), generator=g) * (span + 1))).clamp(max=WHITE)
        cfa = cfa.to(torch.int32).to(torch.uint16).to(DEV)
        x = pack_bayer(cfa, pattern, BLACK, WHITE, ratio, backend=backend)
        back = unpack_bayer(x, pattern, BLACK, WHITE, ratio=ratio, backend=backend)
        assert back.dtype == torch.uint16 and torch.equal(back.int(), cfa.int())
        norm = unpack_bayer(x, pattern, BLACK, WHITE, ratio=ratio, to_dn=False, backend=backend)
        torch.testing.assert_close(norm.cpu(), ((cfa.cpu().float() - black_map) / (WHITE - black_map)), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ refusals (one per check)


def _pack(**over):
    args = dict(cfa=random_cfa((2, 6, 8), _gen(11)), pattern="RGGB", black_level=BLACK, white_level=WHITE)
    args.update(over)
    return pack_bayer(args.pop("cfa"), args.pop("pattern"), args.pop("black_level"), args.pop("white_level"),
                      backend="triton", **args)


def test_refuses_wrong_cfa_dtype():
    with pytest.raises(TypeError, match=r"cfa must have dtype in \(uint16, int32, float32, float16\), got uint8"):
        _pack(cfa=torch.ones((4, 4), dtype=torch.uint8, device=DEV))


def test_refuses_wrong_out_dtype():
    with pytest.raises(TypeError, match="out_dtype must be torch.float32 or torch.float16"):
        _pack(out_dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="out_dtype must be one of"):
        unpack_bayer(torch.rand(4, 2, 2, device=DEV), "RGGB", 0, 100, out_dtype=torch.int32, backend="triton")


def test_refuses_wrong_packed_dtype():
    with pytest.raises(TypeError, match="packed must have dtype in"):
        unpack_bayer(torch.ones((1, 4, 2, 2), dtype=torch.int32, device=DEV), "RGGB", 0, 100, backend="triton")


def test_refuses_wrong_rank():
    with pytest.raises(ValueError, match=r"cfa must have 2 or 3 dimensions, got shape \(1, 2, 6, 8\)"):
        _pack(cfa=random_cfa((1, 2, 6, 8), _gen(12)))
    with pytest.raises(ValueError, match="packed must have 3 or 4 dimensions"):
        unpack_bayer(torch.rand(8, 8, device=DEV), "RGGB", 0, 100, backend="triton")


def test_refuses_wrong_plane_count():
    with pytest.raises(ValueError, match=r"packed must have 4 planes"):
        unpack_bayer(torch.rand(1, 8, 3, 3, device=DEV), "RGGB", 0, 100, backend="triton")


def test_refuses_too_small_frame():
    with pytest.raises(ValueError, match="at least one 2x2 cell"):
        _pack(cfa=random_cfa((1, 9), _gen(13)))


def test_refuses_unknown_pattern():
    with pytest.raises(ValueError, match=r"unknown Bayer pattern 'RGBX'"):
        _pack(pattern="RGBX")


def test_refuses_xtrans_pattern():
    xtrans = [[1, 1, 0, 1, 1, 2], [1, 1, 2, 1, 1, 0], [2, 0, 1, 0, 2, 1]] * 2
    with pytest.raises(ValueError, match="X-Trans 6x6 sensors are not supported"):
        _pack(pattern=xtrans)


def test_refuses_bad_pattern_values():
    with pytest.raises(ValueError, match=r"one R \(0\), one B \(2\) and two greens"):
        _pack(pattern=[[0, 0], [1, 2]])
    with pytest.raises(ValueError, match=r"one R \(0\), one B \(2\) and two greens"):
        _pack(pattern=[[0, 1], [5, 2]])


def test_refuses_non_bayer_layout():
    with pytest.raises(ValueError, match="R and B must sit diagonally"):
        _pack(pattern=[[0, 2], [1, 3]])


def test_refuses_black_not_below_white():
    with pytest.raises(ValueError, match="black_level must be < white_level"):
        _pack(black_level=[100, 200, 300, 1023], white_level=1023)


def test_refuses_negative_or_non_finite_black():
    with pytest.raises(ValueError, match="black_level must be finite and >= 0"):
        _pack(black_level=-1)
    with pytest.raises(ValueError, match="black_level must be finite and >= 0"):
        _pack(black_level=[0, math.nan, 0, 0])


def test_refuses_non_finite_white():
    with pytest.raises(ValueError, match="white_level must be finite"):
        _pack(white_level=math.inf)


def test_refuses_ratio_not_positive():
    with pytest.raises(ValueError, match=r"ratio must be > 0, got \[1.0, 0.0\]"):
        _pack(ratio=torch.tensor([1.0, 0.0], device=DEV))
    with pytest.raises(ValueError, match="ratio must be > 0"):
        unpack_bayer(torch.rand(4, 2, 2, device=DEV), "RGGB", 0, 100, ratio=-2.0, backend="triton")


def test_refuses_K_not_positive():
    with pytest.raises(ValueError, match="K must be > 0"):
        _pack(with_photon=True, K=torch.tensor([3.0, -1.0], device=DEV))


def test_refuses_missing_K():
    with pytest.raises(ValueError, match="K .* is required when with_photon=True"):
        _pack(with_photon=True)


def test_refuses_mismatched_batch():
    with pytest.raises(ValueError, match="ratio has 3 values but the batch has 2 samples"):
        _pack(ratio=torch.ones(3, device=DEV))
    with pytest.raises(ValueError, match="K has 3 values but the batch has 2 samples"):
        _pack(with_photon=True, K=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="white_level has 3 values"):
        _pack(white_level=torch.full((3,), 4000.0, device=DEV))
    with pytest.raises(ValueError, match=r"black_level must be .* \[B, 4\] with B = 2, got shape \(3, 4\)"):
        _pack(black_level=torch.zeros(3, 4, device=DEV))


def test_refuses_bad_out_buffer():
    with pytest.raises(ValueError, match=r"out must be \(2, 4, 3, 4\) torch.float32"):
        _pack(out=torch.empty(2, 4, 3, 4, dtype=torch.float16, device=DEV))


@pytest.mark.parametrize("name", ["ratio", "K", "white_level", "black_level", "out"])
def test_refuses_device_mix(name):
    other = {
        "ratio": dict(ratio=torch.ones(2, device=OTHER_DEVICE)),
        "K": dict(with_photon=True, K=torch.ones(2, device=OTHER_DEVICE)),
        "white_level": dict(white_level=torch.full((2,), 4000.0, device=OTHER_DEVICE)),
        "black_level": dict(black_level=torch.zeros(4, device=OTHER_DEVICE)),
        "out": dict(out=torch.empty(2, 4, 3, 4, device=OTHER_DEVICE)),
    }[name]
    with pytest.raises(ValueError, match=rf"{name} (is on|must be).*{OTHER_DEVICE}"):
        _pack(**other)
