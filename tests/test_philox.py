"""kernels._philox: the project's Philox-4x32-10 against Triton's, bit for bit.

``philox4`` computes each round's multiplies as 32 x 32 -> 64-bit products (one machine
instruction instead of two); it must give exactly ``tl.random.philox``'s words for every
counter: int32 and int64 (sample in the high word) indices, constant and run-time
iterations, and keys with both halves set.
"""
import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import kernels
from kernels._philox import philox4, philox4_triton, sample_index
from tests.conftest import TRITON_DEVICE

pytestmark = pytest.mark.skipif(
    TRITON_DEVICE.type == "cpu" and not kernels._common.triton_interpreter_enabled(),
    reason="needs CUDA or TRITON_INTERPRET=1")


@triton.jit
def _both(seed_ptr, idx_ptr, out_ptr, n, iteration, sample, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    seed = tl.load(seed_ptr)
    idx = tl.load(idx_ptr + offs, mask=mask, other=0)
    if WIDE:
        index = sample_index(sample, idx)
    else:
        index = idx
    got = philox4(seed, index, iteration, 3)
    want = philox4_triton(seed, index, iteration, 3)
    for j in tl.static_range(4):
        tl.store(out_ptr + j * 2 * n + offs, got[j].to(tl.int64) & 0xFFFFFFFF, mask=mask)
        tl.store(out_ptr + (j * 2 + 1) * n + offs, want[j].to(tl.int64) & 0xFFFFFFFF, mask=mask)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("seed", [0, 12345, -(2**63) + 977, 2**62 + 2**33 + 5])
def test_philox4_equals_tritons_philox(wide, seed):
    g = torch.Generator().manual_seed(1)
    idx = torch.cat([torch.tensor([0, 1, 2**31 - 1]), torch.randint(0, 2**31 - 1, (509,), generator=g)]).to(torch.int32)
    n = idx.numel()
    seed_t = torch.tensor([seed], dtype=torch.int64, device=TRITON_DEVICE)
    for iteration, sample in ((0, 0), (7, 3), (2**31 - 1, 65534)):
        out = torch.empty(8 * n, dtype=torch.int64, device=TRITON_DEVICE)
        _both[(triton.cdiv(n, 128),)](seed_t, idx.to(TRITON_DEVICE), out, n, iteration, sample, WIDE=wide, BLOCK=128)
        words = out.view(4, 2, n).cpu().numpy()
        np.testing.assert_array_equal(words[:, 0], words[:, 1])
        assert len(np.unique(words[0, 0])) > n - 2  # not a constant
