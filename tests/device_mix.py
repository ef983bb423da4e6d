"""A second device on a CPU-only machine: catches device mixes without a GPU.

The bugs the first GPU run found (a CPU generator handed to a CUDA sampler, a CPU 3x3
matrix multiplied with CUDA data) cannot show on a machine whose only device is the CPU.
``second_device()`` runs code with the data on a stand-in device and fails where a real
GPU would fail:

- the data lives on ``DEVICE`` (``meta``) as FakeTensors (``torch._subclasses``'s
  FakeTensorMode): no memory, no values, but every operator checks that its tensors
  share one device, as CUDA kernels do (the plain meta device does not check einsum,
  matmul or convolutions, hence the fake mode);
- a sampler given a generator of another device raises CUDA's own error
  ("Expected a 'meta' device type for generator but found 'cpu'"), which neither the
  meta nor the fake mode checks;
- every Triton launch checks that each tensor argument lives on the data's device (a
  CPU pointer in a GPU kernel is an illegal address) and then does nothing;
- the ops treat the stand-in like CUDA: ``backend="auto"`` runs the Triton launcher.

Work without the data (host draws from a CPU generator, Python-side tables) runs for
real on the CPU, so keys and parameters drawn on the host keep their values. Two seams
of ``kernels._common`` are replaced, because a CPU build of torch cannot make a CUDA
generator: ``device_generator`` returns a CPU generator registered as one of the stand-in
device, and ``generator_device`` reports that registration. Value checks compute their
conditions on the fake data, but the final host read answers "all good" (fake tensors
hold no values).

What it cannot see: numerics, and code that branches on ``device.type == "cuda"``.
"""
from __future__ import annotations

import contextlib
import sys

import torch
import triton.runtime.jit as triton_jit
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

import kernels._common as common

DEVICE = torch.device("meta")


class DeviceMixError(RuntimeError):
    """A tensor handed to a Triton kernel is not on the data's device."""


def _mentions_device(leaves) -> bool:
    return any((isinstance(a, torch.device) and a.type == DEVICE.type) or (isinstance(a, str) and a == DEVICE.type)
               for a in leaves)


class _Rules(TorchFunctionMode):
    """Generator-device rule; host-only work runs for real (outside the fake mode)."""

    def __init__(self, registry: dict):
        super().__init__()
        self.registry = registry

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        tensors = [a for a in leaves if isinstance(a, torch.Tensor)]
        device = kwargs.get("device")
        op_device = torch.device(device) if device is not None else (tensors[0].device if tensors else torch.device("cpu"))
        for g in (a for a in leaves if isinstance(a, torch.Generator)):
            g_device = self.registry.get(id(g), (g, g.device))[1]
            if g_device.type != op_device.type:
                raise RuntimeError(f"Expected a '{op_device.type}' device type for generator but found '{g_device.type}'")
        if not any(isinstance(t, FakeTensor) for t in tensors) and not _mentions_device(leaves):
            with unset_fake_temporarily():  # host work: real values
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _checked_launch(kernel, grid):
    name = getattr(getattr(kernel, "fn", None), "__name__", repr(kernel))
    arg_names = list(getattr(kernel, "arg_names", []))

    def launch(*args, **kwargs):
        named = list(zip(arg_names, args)) + list(kwargs.items())
        for i, (arg_name, value) in enumerate(named):
            if isinstance(value, torch.Tensor) and value.device != DEVICE:
                raise DeviceMixError(f"Triton kernel {name}: argument {arg_name or i} is on {value.device}, "
                                     f"the data on {DEVICE}")
    return launch


@contextlib.contextmanager
def second_device():
    """Run the body with ``DEVICE`` standing in for a GPU (see the module docstring)."""
    registry: dict = {}

    def device_generator(device, key):
        g = torch.Generator().manual_seed(int(key))
        registry[id(g)] = (g, torch.device(device))  # keeps g alive, so its id stays unique
        return g

    def use_triton(device, backend, _orig=common.use_triton):
        if torch.device(device).type == DEVICE.type and backend in ("auto", "triton"):
            return True  # as on CUDA
        return _orig(device, backend)

    patches = [(common, "device_generator", device_generator),
               (common, "generator_device", lambda g: registry.get(id(g), (g, g.device))[1]),
               (common, "host_read_bool", lambda flag: True),
               (triton_jit.KernelInterface, "__getitem__", _checked_launch)]
    # every module that imported use_triton by name (the kernels, training.augment)
    patches += [(m, "use_triton", use_triton) for m in list(sys.modules.values())
                if getattr(m, "use_triton", None) is common.use_triton]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        with FakeTensorMode(allow_non_fake_inputs=True), _Rules(registry):
            yield DEVICE
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)
