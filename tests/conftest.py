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
# Pipelines run the PyTorch module unless a test asks for the backbone choice
# (backbone_path="auto"): on a CPU the choice times every installed runtime at the first
# frame (seconds to a minute), which would dominate the suite and make its outputs depend on
# which runtime won on the machine.
os.environ.setdefault("EXPOSURE_DIFFUSION_BACKEND", "eager")


def _interpreter_dot_reads_bf16():
    """Triton's interpreter stores bf16 blocks as raw uint16 bits and its ``tl.dot`` only
    widens fp8 operands, so a bf16 ``tl.dot`` multiplies bit patterns as integers. Widen
    bf16 operands to fp32 as the tensor cores do (bf16 products are exact in fp32) before
    the interpreter's matmul. A fix of the test tool only: GPU builds never run this."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_widens_bf16", False):
        return
    original = builder.create_dot

    def widen(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = (handle.data.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot._widens_bf16 = True
    builder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _interpreter_dot_reads_bf16()

# The device the Triton path is tested on: CUDA when present, else the interpreter on CPU.
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True, scope="session")
def _engine_cache(tmp_path_factory):
    """The engine's disk cache (backbone choices) in a temporary folder, never the user's."""
    os.environ["EXPOSURE_DIFFUSION_CACHE"] = str(tmp_path_factory.mktemp("engine_cache"))


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
