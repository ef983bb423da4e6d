"""The backbone on a CPU: the implementations the engine chooses from by timing, as on a GPU.

Each candidate is a callable ``x [B, C, h, w] float32 -> [B, 9 or 4, h, w] float32``
(``build``). ``"eager"`` is the reference every other candidate is checked against
(``engine.inference.backbone_choice``: >= 45 dB PSNR of the loop's output in the
deterministic mode, else dropped), so a reduced-precision candidate is chosen only where its
output stays that close to fp32 on the user's own first frame.

======================  =====================================================================
``eager``               the PyTorch module, fp32, channels_last (oneDNN)
``eager-bf16``          the module under bf16 autocast; only on CPUs with bf16 instructions
                        (``cpu_features.native_bf16``: oneDNN emulates bf16 elsewhere, 4x slower)
``compile``             ``torch.compile`` (inductor, CPU, with freezing); needs a C++ compiler,
                        compiles for about 10 s per frame shape
``onnxruntime``         ONNX Runtime's CPU execution provider on the exported backbone
                        (``pip install ".[onnx]"``)
``onnxruntime-int8``    the same graph statically quantised (int8 weights per channel, uint8
                        activations; VNNI / AMX kernels), calibrated on the built-in scenes;
                        the first and last layers stay fp32
``openvino``            OpenVINO's CPU plugin in fp32 (``pip install ".[openvino]"``)
``openvino-bf16``       OpenVINO with bf16 inference precision; only with bf16 instructions
``openvino-int8``       OpenVINO on the quantised graph
======================  =====================================================================

The ONNX graphs (``engine.models.onnx_export``) and the quantised one are made once per model
and kept in ``$EXPOSURE_DIFFUSION_CACHE/models/`` (keyed by the weights' hash and the runtime's
version). A candidate that is not installed is not offered; one that fails to build or run is
dropped by the choice with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..models.backbones import BackboneConfig
from .cpu_features import native_bf16

CPU_BACKENDS = ("eager", "eager-bf16", "compile", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16",
                "openvino-int8")
REDUCED_PRECISION = ("eager-bf16", "onnxruntime-int8", "openvino-bf16", "openvino-int8")
# Layers left in fp32 by the int8 quantiser: the first convolution (its input mixes the image
# with a photon channel ~1e-3 of it) and the 1x1 head (its outputs are the estimate itself).
INT8_FP32_LAYERS = ("/conv1_1/Conv", "/conv10_1/Conv", "/intro/Conv", "/ending/Conv")


def installed(name: str) -> bool:
    """Whether candidate ``name``'s runtime is importable and its instructions exist here."""
    if name in ("eager", "compile"):
        return True
    if name == "eager-bf16":
        return native_bf16()
    runtime = "onnxruntime" if name.startswith("onnxruntime") else "openvino"
    if importlib.util.find_spec(runtime) is None:
        return False
    if name.endswith("-int8"):
        return importlib.util.find_spec("onnxruntime") is not None  # its quantiser makes the int8 graph
    if name == "openvino-bf16":
        return native_bf16()
    return True


def install_hint(name: str) -> str:
    """Why candidate ``name`` is not available, and what would make it so."""
    if name in ("eager-bf16", "openvino-bf16") and not native_bf16():
        return "this CPU has no bf16 instructions (AVX512-BF16 / AMX / Arm BF16)"
    if name.startswith("openvino") and importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed (pip install 'exposure-diffusion[openvino]')"
    if importlib.util.find_spec("onnxruntime") is None:
        return "the onnxruntime package is not installed (pip install 'exposure-diffusion[onnx]')"
    return "unknown reason"


def cpu_candidates(compile_candidate: bool = True) -> list[str]:
    """The installed candidates, the reference ``"eager"`` first."""
    return [n for n in CPU_BACKENDS if installed(n) and (compile_candidate or n != "compile")]


def cache_root() -> Path:
    root = os.environ.get("EXPOSURE_DIFFUSION_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                       "exposure-diffusion")
    return Path(root) / "models"


def model_key(net: nn.Module, config: BackboneConfig) -> str:
    """A hash of the weights and the architecture: the cache name of the model's graphs."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def _threads() -> int:
    return max(1, torch.get_num_threads())


# --------------------------------------------------------------------------- graphs
def onnx_graph(net: nn.Module, config: BackboneConfig, *, int8: bool = False) -> Path:
    """The backbone's ONNX file (made once, then read from the cache); ``int8``: quantised."""
    from ..models.onnx_export import export_backbone

    key = model_key(net, config)
    folder = cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / f"{key}.onnx"
    if not fp32.is_file():
        export_backbone(net, config, fp32)
    if not int8:
        return fp32
    import onnxruntime

    quantised = folder / f"{key}-int8-ort{onnxruntime.__version__}.onnx"
    if not quantised.is_file():
        _quantise(fp32, quantised, net, config)
    return quantised


def calibration_inputs(net: nn.Module, config: BackboneConfig, steps: int = 3) -> list[np.ndarray]:
    """Network inputs for the int8 calibration: every step's input of the fp32 loop (means)
    on the built-in scene (``engine.scene``) at three seeds and two exposure ratios."""
    from kernels import pack_bayer

    from ..scene import BLACK_LEVEL, WHITE_LEVEL, clean_packed, noise_parameters, render_scene, short_exposure_cfa
    from .loop import exposure_schedule, run_exposure_diffusion

    inputs: list[np.ndarray] = []

    def recording(x):
        inputs.append(x.detach().float().contiguous().numpy())
        return net(x.float())

    K = noise_parameters()["K"]
    with torch.no_grad():
        for seed in (1, 2, 3):
            clean = clean_packed(render_scene(256, 384, seed))
            for ratio in (100.0, 300.0):
                cfa = torch.from_numpy(short_exposure_cfa(clean, ratio=ratio, noise_seed=seed).astype(np.int32))
                first = pack_bayer(cfa[None], "RGGB", float(BLACK_LEVEL), float(WHITE_LEVEL), ratio, K=K,
                                   with_photon=config.with_photon, concat_origin=config.concat_origin)
                r = torch.tensor([ratio])
                run_exposure_diffusion(recording, first, ratio=r, K=torch.tensor([K]), rho=exposure_schedule(r, steps),
                                       with_photon=config.with_photon, concat_origin=config.concat_origin,
                                       stochastic=False)
    return inputs


def _quantise(source: Path, target: Path, net: nn.Module, config: BackboneConfig) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    inputs = calibration_inputs(net, config)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._next = iter(inputs)

        def get_next(self):
            x = next(self._next, None)
            return None if x is None else {"input": x}

    import onnx

    names = {n.name for n in onnx.load(str(source)).graph.node}
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        quantize_static(str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[n for n in INT8_FP32_LAYERS if n in names])
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- candidates
def build(name: str, net: nn.Module, config: BackboneConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """Candidate ``name`` as a callable backbone on float32 inputs (CPU)."""
    if name == "eager":
        return _Eager(net, bf16=False)
    if name == "eager-bf16":
        return _Eager(net, bf16=True)
    if name == "compile":
        return _Compiled(net)
    if name in ("onnxruntime", "onnxruntime-int8"):
        return _OnnxRuntime(onnx_graph(net, config, int8=name.endswith("int8")))
    if name in ("openvino", "openvino-bf16", "openvino-int8"):
        return _OpenVino(onnx_graph(net, config, int8=name.endswith("int8")), bf16=name == "openvino-bf16")
    raise ValueError(f"unknown CPU backend {name!r}; known: {CPU_BACKENDS}")


class _Eager:
    def __init__(self, net: nn.Module, bf16: bool):
        self.net, self.bf16 = net, bf16

    def __call__(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.net(x).float()


class _Compiled:
    def __init__(self, net: nn.Module):
        self.fn = torch.compile(net, options={"freezing": True})

    def __call__(self, x):
        return self.fn(x)


class _OnnxRuntime:
    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        out = self.session.run(None, {"input": x.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


class _OpenVino:
    """OpenVINO's CPU plugin, driven from a thread of its own: the plugin installs an alternate
    signal stack on the thread that compiles and runs a model and later frees that memory
    without removing it (seen with openvino 2026.4), after which the next signal handled on
    that thread (Ctrl-C, a child process exiting under a DataLoader's SIGCHLD handler) kills
    the process with SIGSEGV. On its own thread the stale stack harms nobody."""

    def __init__(self, path: Path, bf16: bool):
        import concurrent.futures as cf

        self._thread = cf.ThreadPoolExecutor(1, thread_name_prefix="openvino")
        self.request = self._thread.submit(self._compile, path, bf16).result()

    @staticmethod
    def _compile(path: Path, bf16: bool):
        import openvino as ov

        core = ov.Core()
        model = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "INFERENCE_NUM_THREADS": _threads(),
            "PERFORMANCE_HINT": "LATENCY",
        })
        return model.create_infer_request()

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    def __call__(self, x):
        return torch.from_numpy(self._thread.submit(self._infer, x.detach().float().contiguous().numpy()).result())
