"""Test-wide setup.

Without a GPU, the Triton kernels run through Triton's CPU interpreter: it must be
switched on before ``triton.jit`` decorates anything, hence before ``kernels`` is
imported. On a CUDA machine the real kernels run (and the interpreter stays off).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The device the Triton path is tested on: CUDA when present, else the interpreter on CPU.
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def triton_device() -> torch.device:
    return TRITON_DEVICE



@pytest.fixture(scope="module")
def one_thread():
    """Small CPU convolutions: one thread is as fast and does not stall on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
