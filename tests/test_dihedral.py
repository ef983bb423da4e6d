"""kernels.dihedral.normalise_dihedral: the fused kernel against its per-sample reference
and against training.augment's batched tensor-op path, for all 8 symmetries.

All deterministic: float32 results must be bit-identical (the same arithmetic)."""
import itertools

import pytest
import torch

from kernels import value_checks_disabled
from kernels.dihedral import normalise_dihedral, normalise_dihedral_reference
from tests.conftest import TRITON_DEVICE
from training.augment import apply_dihedral, normalise_packed

DEV = TRITON_DEVICE
ALL_FLAGS = torch.tensor(list(itertools.product([False, True], repeat=3)))  # [8, 3]


def batch(B, h, w, seed=0, dtype=torch.uint16):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(400, 16500, (B, 4, h, w), generator=g, dtype=torch.int32)  # some below black, some above white
    black = 500.0 + 30 * torch.rand(B, 4, generator=g)
    white = 16383.0 - 100 * torch.rand(B, generator=g)
    return raw.to(dtype).to(DEV), black.to(DEV), white.to(DEV)


@pytest.mark.parametrize("h, w", [(8, 8), (5, 5), (1, 1), (33, 33)])
def test_all_symmetries_equal_the_reference_and_the_tensor_op_path(h, w):
    raw, black, white = batch(8, h, w, seed=h)
    flags = ALL_FLAGS.to(DEV)
    ratio = torch.linspace(1.0, 3.0, 8, device=DEV)
    got = normalise_dihedral(raw, black, white, flags, ratio=ratio, backend="triton")
    ref = normalise_dihedral_reference(raw, black, white, flags, ratio=ratio)
    ops = apply_dihedral(normalise_packed(raw, black, white, ratio=ratio), flags)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, ref) and torch.equal(got, ops)


@pytest.mark.parametrize("dtype", [torch.int32, torch.float32])
def test_other_dtypes_and_strides(dtype):
    raw, black, white = batch(3, 6, 6, seed=4, dtype=dtype)
    raw = raw.transpose(-1, -2)  # non-contiguous
    flags = torch.tensor([[True, False, True], [False, True, False], [True, True, True]], device=DEV)
    got = normalise_dihedral(raw, black, white, flags, backend="triton")
    assert torch.equal(got, normalise_dihedral_reference(raw, black, white, flags))


def test_non_square_flips_and_refused_transpose():
    raw, black, white = batch(2, 4, 7, seed=5)
    flags = torch.tensor([[True, True, False], [False, True, False]], device=DEV)
    got = normalise_dihedral(raw, black, white, flags, backend="triton")
    assert torch.equal(got, normalise_dihedral_reference(raw, black, white, flags))
    with pytest.raises(ValueError, match="a transpose needs square patches, got 4x7"):
        normalise_dihedral(raw, black, white, torch.tensor([[False, False, True]] * 2, device=DEV), backend="triton")
    with value_checks_disabled():  # no host read: the sample is undefined but nothing is read out of bounds
        out = normalise_dihedral(raw, black, white, torch.tensor([[False, False, True]] * 2, device=DEV), backend="triton")
    assert out.shape == (2, 4, 4, 7) and not torch.isnan(out).any()


def test_every_output_written_and_empty_batch():
    raw, black, white = batch(2, 3, 3, seed=6)
    flags = torch.tensor([[False, True, True], [True, False, False]], device=DEV)
    got = normalise_dihedral(raw, black, white, flags, backend="triton")
    assert torch.equal(got, normalise_dihedral_reference(raw, black, white, flags))
    empty = normalise_dihedral(raw[:0], black[:0], white[:0], flags[:0], backend="triton")
    assert empty.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(raw=torch.zeros(2, 3, 4, 4, dtype=torch.uint16)), ValueError, r"raw must be a packed batch \[B, 4, h, w\]"),
    (dict(raw=torch.zeros(2, 4, 4, 4, dtype=torch.float16)), TypeError, r"raw must have dtype in"),
    (dict(flags=torch.zeros(2, 2, dtype=torch.bool)), ValueError, r"flags must be bool \[B, 3\]"),
    (dict(flags=torch.zeros(2, 3, dtype=torch.int32)), TypeError, r"flags must have dtype in \(bool\)"),
    (dict(black=torch.zeros(2, 3)), ValueError, r"black must be float32 \[B, 4\]"),
    (dict(black=torch.full((2, 4), 20000.0)), ValueError, r"black must be < white"),
    (dict(ratio=0.0), ValueError, r"ratio must be > 0"),
])
def test_refusals(kw, exc, match):
    args = dict(raw=torch.zeros(2, 4, 4, 4, dtype=torch.uint16), black=torch.zeros(2, 4), white=16383.0,
                flags=torch.zeros(2, 3, dtype=torch.bool), ratio=1.0)
    args.update(kw)
    with pytest.raises(exc, match=match):
        normalise_dihedral(args["raw"], args["black"], args["white"], args["flags"], ratio=args["ratio"])


def test_augment_and_normalise_uses_the_fused_pass_on_a_gpu_with_the_same_result(monkeypatch):
    """training.augment takes the fused op where Triton runs (CUDA; here forced through the
    interpreter): the same flags drawn, the same output bits as its tensor-op path."""
    import training.augment as augment

    raw, black, white = batch(6, 8, 8, seed=9)
    outs = []
    for fused in (False, True):
        monkeypatch.setattr(augment, "use_triton", lambda device, backend, fused=fused: fused)
        calls = []
        monkeypatch.setattr(augment, "normalise_dihedral", lambda *a, **k: calls.append(1) or normalise_dihedral(
            *a, backend="triton", **k))
        outs.append(augment.augment_and_normalise(raw, black, white, torch.Generator().manual_seed(3), ratio=2.0,
                                                  return_flags=True))
        assert len(calls) == int(fused)
    (a, fa), (b, fb) = outs
    assert torch.equal(fa, fb) and torch.equal(a, b)
