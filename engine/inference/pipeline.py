"""``engine.Pipeline``: ExposureDiffusion on whole raw frames, from file to enhanced raw.

    from engine import Pipeline
    pipe = Pipeline.from_checkpoint("SID_Pg.pt")
    result = pipe("DSC01234.ARW", ratio=100, steps=3)
    result.raw          # [4, H/2, W/2] float32 in [0, 1], linear packed R, G1, B, G2
    result.save("DSC01234.png")   # or .tiff (16-bit sRGB) or .dng (linear mosaic)

Stages (each inside an nvtx range): decode (rawpy) -> gain K (given, or ISO through a
camera profile) -> fused pack to the first network input -> the n-step loop (backbone +
fused exposure step; one CUDA graph per shape on the GPU) -> crop. On CUDA the backbone
runs in fp16 channels_last with every photon computation in fp32 inside the kernels; on
the CPU the same maths runs through the PyTorch reference ops in fp32 (or bf16 autocast).
Frames too large for the device run in overlapping tiles (``engine.inference.tiling``), chosen
automatically on out-of-memory or forced with ``max_tile``.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import threading
from pathlib import Path

import nvtx
import torch
from torch import nn

from kernels import pack_bayer
from kernels._tuning import load_tuning, precompile, recorded_launches, save_tuning
from kernels._common import DEFAULT_DN_SCALE
from kernels.numbers import integer, real
from kernels.poisson import MAX_MEAN

from ..camera import resolve_gain
from ..errors import InvalidRawError, warn_at_caller, warn_input
from ..io.exif import Provenance
from ..io.output import save_output, srgb_image
from ..io.raw import RawFrame, read_raw_batch
from ..models.backbones import BackboneConfig
from ..models.checkpoint import CheckpointError, load_checkpoint
from ..models.fused_unet import FusedUNet
from .adaptive import DEFAULT_POLICY, AutoStepsPolicy, steps_for_batch
from .auto_ratio import estimate_ratio
from .backbone_choice import (BACKBONE_PATHS, BackboneFallbackWarning, ChoiceCache, choice_cache_path,
                              choose_by_running, cudnn_benchmark, device_fingerprint)
from .choice_process import choose_in_child
from .cpu_backends import CPU_BACKENDS, cpu_candidates, install_hint, installed, model_key
from .cpu_backends import build as build_cpu_backend
from .cpu_features import native_bf16
from .fidelity import DEFAULT_SCALE as DEFAULT_FIDELITY_SCALE
from .fidelity import SENSOR_CLIP, low_frequency_fidelity
from .graphs import GraphCache, GraphedDiffusion
from .loop import (
    SCHEDULES,
    SIZE_MULTIPLE,
    exposure_schedule,
    pad_to_multiple,
    photon_mode_from_meta,
    run_exposure_diffusion,
    schedule_from_meta,
    use_draws,
)
from .tiling import UNET_RADIUS, TiledBackbone, run_tiled

PRECISIONS = ("fp32", "fp16", "bf16")
# The model shipped with the package (its model card: engine/data/README.md, docs/model-card.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "data" / "default_model.pt"
MAX_RATIO = 10000.0
# Network evaluations per frame. The paper converges in about 3 (SPEC §4); each step costs a
# full network pass and widens the tiling margin by 96 packed pixels, so 100 is far past
# any useful value while still refusing a typo such as steps=10**9 (which would run for days).
MAX_STEPS = 100
# Seeds: any integer a torch.Generator takes without wrapping around.
MAX_SEED = 2**64 - 1
# Smallest tile tried when falling back from an out-of-memory error.
MIN_AUTO_TILE = 256


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 / AMX / Arm BF16): see
    ``engine.inference.cpu_features.native_bf16`` (oneDNN's own answer is true wherever it can
    *emulate* bf16, which is 4x slower than fp32)."""
    return native_bf16()


def default_precision(device: torch.device) -> str:
    """fp16 on CUDA; fp32 on a CPU, the reference of its backbone choice (reduced precision
    there is a candidate, chosen where it is faster and within 45 dB of fp32:
    ``engine.inference.cpu_backends``)."""
    return "fp16" if device.type == "cuda" else "fp32"


def default_backbone_path() -> str:
    """``$EXPOSURE_DIFFUSION_BACKEND`` (e.g. ``eager``: skip the first frame's timing of the
    candidates, as the test suite does), else ``"auto"``."""
    return os.environ.get("EXPOSURE_DIFFUSION_BACKEND") or "auto"


@dataclasses.dataclass
class EnhancedFrame:
    """One enhanced frame.

    raw: float32 ``[4, h, w]`` in [0, 1], linear packed R, G1, B, G2 (h, w = half the
        input's even-cropped size), on the pipeline's device.
    frame: the input's metadata (pattern, levels, ISO, colour) and pixels.
    ratio, K, steps, schedule (exposure multiples rho_0..rho_n), seed: how it was made.
    """

    raw: torch.Tensor
    frame: RawFrame
    ratio: float
    K: float
    steps: int
    schedule: list
    seed: int | None

    def srgb(self, out_dtype=torch.uint8) -> torch.Tensor:
        """sRGB rendering ``[2h, 2w, 3]`` (uint8, uint16 or float32) with the camera's colour."""
        return srgb_image(self.raw, self.frame, out_dtype)

    def save(self, path, format=None, *, overwrite: bool = False) -> Path:
        """Write as PNG (8-bit sRGB; 16-bit with ``OutputOptions(bits=16)``), JPEG, TIFF
        (16-bit sRGB) or DNG (linear mosaic), with the source's capture metadata and the
        ratio / steps (EXIF); atomic. ``format``: a name, an ``engine.io.output.OutputOptions``
        or None (from the extension).

        An existing ``path`` raises ``FileExistsError`` unless ``overwrite=True``; the
        frame's own source file is never written over (``engine.io.paths.OutputPathError``).
        """
        return save_output(path, self.raw, self.frame, format, provenance=Provenance(self.ratio, self.steps),
                           overwrite=overwrite)


def inference_settings(meta: dict | None, source) -> tuple[AutoStepsPolicy, str, str]:
    """A checkpoint's ``steps="auto"`` policy (``meta["auto_steps"]``, else ``DEFAULT_POLICY``),
    photon mode (``meta["photons"]``, else "draws") and inference schedule (``meta["schedule"]``,
    else "linspace"); malformed metadata is a ``CheckpointError`` naming ``source`` (the file)."""
    try:
        return AutoStepsPolicy.from_meta(meta), photon_mode_from_meta(meta), schedule_from_meta(meta)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(str(source), f"unusable metadata: {e}") from None


def _locked(method):
    """Run a Pipeline method under the pipeline's lock (state shared by threads)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


# The CPU backbone choice times its candidates on a crop of at most this many packed pixels a side.
CPU_TIMING_CROP = 256
# A CPU frame's peak memory budget (bytes; ``Pipeline(memory_budget=...)``): where the plan
# below exceeds it, the backbone runs in tiles. The plan uses fixed figures, measured as peak
# resident memory (so the allocators' overheads are in them), not the process's resident
# memory at the call: what a process did before must not change how a frame is computed
# (tiled output differs from untiled by ~64 dB), so one frame gives the same bytes in every
# process. Measured on a 2-core Xeon, torch 2.13, the shipped model (``bench/RESULTS.md``).
CPU_MEMORY_BUDGET = 1.5e9
PROCESS_BASE_BYTES = 0.45e9  # torch, its CPU kernels and the model, after import and load (0.40 GB; rounded up)
LOOP_TENSOR_CHANNELS = 48  # float32 values per packed pixel the loop and its tiling hold at their peak
# The backbone's activations per packed pixel and sample at the SID UNet's width 32, by CPU
# backend: a 3 MP frame's peak run whole, less the base and the loop, +5-10% (eager 985,
# ONNX Runtime 1425 with its memory arena, OpenVINO 1070 / bf16 712 / int8 714, ...).
ACTIVATION_BYTES = {"eager": 1100, "eager-bf16": 600, "compile": 900, "onnxruntime": 1600, "onnxruntime-int8": 650,
                    "openvino": 1150, "openvino-bf16": 800, "openvino-int8": 800}
MIN_ACTIVATION_BUDGET = 64e6  # tiles are never made smaller than this much activation memory
CPU_TILE_MARGIN = 48  # context per tile side and step: 64 dB PSNR against the whole frame


def _timing_crop(x: torch.Tensor) -> torch.Tensor:
    """The centre ``CPU_TIMING_CROP`` square of a padded frame (sizes stay multiples of 16)."""
    h, w = x.shape[-2:]
    ch, cw = min(h, CPU_TIMING_CROP), min(w, CPU_TIMING_CROP)
    top, left = (h - ch) // 2 // SIZE_MULTIPLE * SIZE_MULTIPLE, (w - cw) // 2 // SIZE_MULTIPLE * SIZE_MULTIPLE
    return x[..., top : top + ch, left : left + cw]


class Pipeline:
    """Multi-step ExposureDiffusion inference on raw frames.

    Args:
        backbone: the network (``engine.models.backbones``), any device / dtype; the pipeline
            keeps its own copy in the working precision.
        config: its ``BackboneConfig`` (input channels, head).
        device: where to run (default: CUDA if available, else CPU).
        precision: "fp16" (default on CUDA), "fp32" (default on a CPU) or "bf16" (a CPU with
            bf16 instructions: autocast of the backbone, photon maths in fp32). On a CPU the
            default lets the backbone choice consider every installed candidate, reduced
            precision included (each held to 45 dB PSNR of fp32 on the first frame); an
            explicit "fp32" or "bf16" runs the PyTorch module in that precision.
        cuda_graphs: capture the loop in CUDA graphs (default True on CUDA).
        dn_scale: normalised -> DN scale of the photon maths (SPEC §2; 15583 for the
            public checkpoints).
        camera: default camera profile (name or JSON path) for ISO -> K.
        max_tile: process frames in tiles of at most this many packed pixels a side
            (None: whole frames, tiling only after an out-of-memory error).
        backbone_path: what runs the network (``engine.inference.backbone_choice``):
            "auto" (default; ``$EXPOSURE_DIFFUSION_BACKEND`` overrides the default): on CUDA
            the fastest of our fused Triton UNet and the PyTorch module, timed at the first
            frame of each shape; on a CPU the fastest installed candidate of
            ``engine.inference.cpu_backends`` (eager fp32 / bf16, torch.compile, ONNX
            Runtime fp32 / int8, OpenVINO fp32 / bf16 / int8), timed on a crop of the first
            frame once per CPU model, thread count and model; both cached on disk. Or one
            path forced: "fused" (the SID UNet on CUDA in fp16), "eager" (the module: cuDNN
            / oneDNN), "compile" (``torch.compile`` of the module) or a CPU candidate's name.
        compile_candidate: let "auto" also time ``torch.compile`` (default: on a CPU, where
            it compiles in ~10 s per frame shape; not on CUDA, where it takes minutes).
        fidelity_scale: after the last step, the estimate's local means over boxes of this many
            packed pixels are brought to the noisy frame's own (unclipped, so unbiased) means
            (``engine.inference.fidelity``: it removes the network's per-plane colour bias; +0.6
            to +0.7 dB on photographs with the shipped model). Default 32; None: off.
        max_graphs / max_graph_bytes: bound on the captured CUDA graphs kept (least recently
            used evicted and released; default 8 graphs and a quarter of the GPU's memory).
        memory_budget: on a CPU, the peak memory (bytes) a frame may take (default 1.5e9),
            planned from the frame's shape and the chosen runtime alone (the process's base,
            the loop's tensors, the backbone's activations per pixel as measured for that
            runtime; the same plan in every process): where the backbone's activations for
            the whole frame would not fit, it runs in evenly cut tiles with 48 pixels of
            context per step (64 dB PSNR of the untiled result on the bench scene; ~1.4x the
            frame's pixels at 12 MP). None: never tiled for memory.
        isolate_choice: on a CPU, check and time the backbone candidates in a child process
            (``engine.inference.choice_process``; default True): their runtimes' memory goes
            back to the system (a 12 MP frame then peaks ~0.4 GB lower) and a runtime that
            crashes cannot stop this process. False: in this process.
    """

    def __init__(self, backbone: nn.Module, config: BackboneConfig, *, device=None, precision: str | None = None,
                 cuda_graphs: bool | None = None, dn_scale: float = DEFAULT_DN_SCALE, camera=None,
                 max_tile: int | None = None, backbone_path: str | None = None,
                 compile_candidate: bool | None = None, memory_budget: float | None = CPU_MEMORY_BUDGET,
                 max_graphs: int = 8, max_graph_bytes: float | None = None,
                 fidelity_scale: int | None = DEFAULT_FIDELITY_SCALE, isolate_choice: bool = True):
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "meta":
            raise ValueError("device 'meta' holds no data (shapes only); use 'cpu' or 'cuda'")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
        self.precision = precision or default_precision(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'fp32' or 'bf16' on the CPU")
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs a CUDA device")
        dn_scale = real("dn_scale", dn_scale, low=0, low_open=True, unit=" (DN per normalised unit)")
        if max_tile is not None:
            max_tile = integer("max_tile", max_tile, low=SIZE_MULTIPLE)
            if max_tile % SIZE_MULTIPLE:
                raise ValueError(f"max_tile must be a multiple of {SIZE_MULTIPLE}, got {max_tile}")
        self.config, self.dn_scale, self.camera, self.max_tile = config, dn_scale, camera, max_tile
        if memory_budget is not None:
            memory_budget = real("memory_budget", memory_budget, low=0, low_open=True, unit=" bytes")
        self.memory_budget = memory_budget
        net = copy.deepcopy(backbone).to(self.device).eval()  # never change the caller's module
        for p in net.parameters():
            p.requires_grad_(False)
        if self.precision == "fp16":
            net = net.half()
        if self.precision == "bf16" and not cpu_supports_bf16() and self.device.type == "cpu":
            raise ValueError("precision 'bf16' needs a CPU with native bf16 support (AVX512-BF16 / AMX); use 'fp32'")
        net = net.to(memory_format=torch.channels_last)  # faster convolutions on GPU and CPU (oneDNN)
        self.backbone = net
        self._graphed: dict[tuple, GraphedDiffusion] = {}
        max_graphs = integer("max_graphs", max_graphs, low=1)
        if max_graph_bytes is None and self.device.type == "cuda":
            max_graph_bytes = torch.cuda.get_device_properties(self.device).total_memory // 4
        elif max_graph_bytes is not None:
            max_graph_bytes = real("max_graph_bytes", max_graph_bytes, low=0, low_open=True, unit=" bytes")
        self.graph_cache = GraphCache(max_graphs, max_graph_bytes)  # shared by every runner of this pipeline
        self.fidelity_scale = None if fidelity_scale is None else integer("fidelity_scale", fidelity_scale, low=2,
                                                                           high=4096)
        # Calls from several threads: the state they share (the backbone choice, the lazily
        # built candidates, the first-frame preparation) changes under this lock; CUDA-graph
        # replays under the graph cache's.
        self._lock = threading.RLock()
        self._explicit_precision = precision is not None
        if not isinstance(isolate_choice, bool):
            raise ValueError(f"isolate_choice must be True or False, got {isolate_choice!r:.80}")
        self.isolate_choice = isolate_choice
        self._init_backbone_paths(backbone_path or default_backbone_path(), compile_candidate)
        # steps="auto": engine.inference.adaptive (from_checkpoint takes a stored calibration)
        self.auto_policy = DEFAULT_POLICY
        # stochastic=None: the model's photon mode (from_checkpoint takes meta["photons"]); SPEC §4: draws
        self.photons = "draws"
        # schedule=None: the schedule the model was trained for (from_checkpoint takes meta["schedule"]);
        # SPEC §4: linspace
        self.schedule = "linspace"

    @classmethod
    def from_checkpoint(cls, path=None, *, expect: dict | None = None, **kwargs) -> "Pipeline":
        """Load a public-format (``{'netG': ...}``) or our-format checkpoint (never
        executing pickled code) and build a pipeline; ``kwargs`` as for ``Pipeline``.

        ``path=None`` loads the default model shipped with the package
        (``DEFAULT_CHECKPOINT``, model card ``engine/data/README.md``). The checkpoint's
        metadata may carry its ``steps="auto"`` calibration (``meta["auto_steps"]``), its
        photon mode (``meta["photons"]``, the default of ``stochastic``) and its inference
        schedule (``meta["schedule"]``, the default of ``schedule``); a malformed one is a
        ``CheckpointError`` naming the file.
        """
        source = DEFAULT_CHECKPOINT if path is None else path
        model, config, meta = load_checkpoint(source, expect=expect)
        policy, photons, schedule = inference_settings(meta, source)
        pipe = cls(model, config, **kwargs)
        pipe.auto_policy, pipe.photons, pipe.schedule = policy, photons, schedule
        return pipe

    # ------------------------------------------------------------------ network
    def _init_backbone_paths(self, path: str, compile_candidate: bool | None) -> None:
        if path not in BACKBONE_PATHS:
            raise ValueError(f"backbone_path must be one of {BACKBONE_PATHS}, got {path!r}")
        self.fused_available = (self.config.arch == "unet" and self.device.type == "cuda"
                                and self.precision == "fp16")
        if path == "fused" and not self.fused_available:
            raise ValueError("backbone_path='fused' runs the SID UNet on CUDA in fp16; this pipeline has "
                             f"{self.config.arch} on {self.device} in {self.precision} (use 'auto' or 'eager')")
        on_cpu = self.device.type == "cpu"
        if path in CPU_BACKENDS and path not in ("eager", "compile"):
            if not on_cpu:
                raise ValueError(f"backbone_path={path!r} is a CPU backend; this pipeline runs on {self.device}")
            if not installed(path):
                raise ValueError(f"backbone_path={path!r} is not available here: {install_hint(path)}")
        if on_cpu and not self._explicit_precision:
            names = cpu_candidates(compile_candidate is not False)
        elif on_cpu:  # a precision asked for: the module in it (autocast for bf16)
            names = ["eager", "compile"] if compile_candidate else ["eager"]
        else:
            names = ["fused", "eager"] if self.fused_available else ["eager"]
            if compile_candidate:
                names.append("compile")
        if path == "compile" and "compile" not in names:
            names.append("compile")
        self.backbone_path = path
        self._candidate_names = names if path == "auto" else [path]
        self._builders = {"fused": lambda: FusedUNet(self.backbone, torch.float16), "eager": lambda: self._net,
                          "compile": lambda: torch.compile(self._net)}
        if on_cpu:
            for name in CPU_BACKENDS:
                if name != "eager":
                    self._builders[name] = lambda name=name: build_cpu_backend(name, self.backbone, self.config)
        self._candidates: dict[str, object] = {}
        if "fused" in self._candidate_names:  # weights re-laid out once, here
            try:
                self._candidate("fused")
            except Exception as e:  # noqa: BLE001 - an optional path: do without it
                if path == "fused":
                    raise
                self._drop_path("fused", f"building it failed ({type(e).__name__}: {e})")
        self._chosen: dict[str, str] = {}
        self.backbone_timings: dict[str, dict] = {}  # choice key -> {candidate: median ms} when timed here
        self._prepared: set[str] = set()  # loop keys whose kernels were precompiled (first frame of a shape)
        self._model_key: str | None = None  # the weights' hash (the CPU choice's cache key), made when needed
        if self.device.type == "cuda":  # autotune results of earlier processes on this GPU model
            load_tuning(torch.cuda.get_device_name(self.device))

    def _candidate(self, name: str):
        with self._lock:
            if name not in self._candidates:
                self._candidates[name] = self._builders[name]()
            return self._candidates[name]

    @_locked
    def _drop_path(self, name: str, reason: str) -> None:
        """Stop using backbone ``name`` in this pipeline (it failed), with a warning."""
        warn_at_caller(f"backbone candidate {name!r} dropped: {reason}; going on with 'eager'", BackboneFallbackWarning)
        self._candidate_names = [n for n in self._candidate_names if n != name] or ["eager"]
        self._chosen = {k: ("eager" if v == name else v) for k, v in self._chosen.items()}

    @_locked
    def _backbone_for(self, padded: torch.Tensor, ratio, K, rho, kw: dict) -> str:
        """The backbone path for this input shape (see ``backbone_path``); checks and times
        the candidates on this very input the first time a shape is seen (eager loops, before
        any CUDA-graph capture), unless the disk cache knows the answer."""
        if len(self._candidate_names) == 1:
            return self._candidate_names[0]
        if self.device.type == "cpu":
            # On a CPU the candidates are timed on a crop of the frame, once per CPU model,
            # thread count (the fingerprint) and model: their ranking does not depend on the
            # frame's size, and timing them on a whole 12 MP frame would take minutes.
            padded = _timing_crop(padded)
            if self._model_key is None:
                self._model_key = model_key(self.backbone, self.config)
            key = json.dumps([device_fingerprint(self.device), self.config.to_dict(), self._model_key,
                              list(padded.shape[:2]), rho.shape[1] - 1, kw["stochastic"], kw["accumulate"]])
        else:
            key = json.dumps([device_fingerprint(self.device), self.config.to_dict(), list(padded.shape),
                              str(padded.dtype), rho.shape[1] - 1, kw["stochastic"], kw["accumulate"]])
        if key not in self._chosen:
            cache, loop_kwargs = ChoiceCache(choice_cache_path()), dict(ratio=ratio, K=K, rho=rho, **kw)
            answer = None
            if self.device.type == "cpu" and self.isolate_choice and cache.get(key) not in self._candidate_names:
                # in a child process: the candidates' memory goes back to the system with it,
                # and a runtime that crashes cannot take this process down (choice_process);
                # None: the child cannot have this module, so it is chosen here
                answer = choose_in_child(key, self._candidate_names, self.backbone, self.config, padded,
                                         loop_kwargs, choice_cache_path())
            if answer is None:
                answer = choose_by_running(key, self._candidate_names, self._candidate, padded, loop_kwargs,
                                           self.device, cache)
            self._chosen[key], timings = answer
            if timings:
                self.backbone_timings[key] = timings
        return self._chosen[key]

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.backbone(x)
        if x.is_cuda:
            # cuDNN's algorithm search (per shape, at the warm-up before timing and capture):
            # the eager path is timed and run with the algorithms it would really use.
            with cudnn_benchmark():
                return self.backbone(x)
        return self.backbone(x)

    @property
    def _act_dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32

    def _loop_kwargs(self, stochastic: bool, accumulate: bool) -> dict:
        return dict(with_photon=self.config.with_photon, concat_origin=self.config.concat_origin,
                    stochastic=stochastic, accumulate=accumulate, dn_scale=self.dn_scale,
                    next_dtype=self._act_dtype, memory_format=torch.channels_last)

    @_locked
    def _prepare(self, padded, ratio, K, rho, kw: dict) -> bool:
        """At the first frame of a shape on CUDA: compile, in parallel, every kernel
        configuration that the candidates' loops will autotune (the fused convolutions, the
        head step, the exposure step), before anything is timed. True the first time."""
        key = json.dumps([list(padded.shape), str(padded.dtype), rho.shape[1] - 1, kw["stochastic"], kw["accumulate"]])
        if self.device.type != "cuda" or key in self._prepared:
            return False
        self._prepared.add(key)
        with recorded_launches() as launches:
            for name in self._candidate_names:
                try:
                    net = self._candidate(name)
                    if isinstance(net, FusedUNet):
                        net._precompiled = True  # its convolutions are in this one parallel batch
                    run_exposure_diffusion(net, padded, ratio=ratio, K=K, rho=rho,
                                           generator=torch.Generator().manual_seed(0), **kw)
                except Exception:  # noqa: BLE001 - the choice's own runs report a failing candidate
                    pass
        precompile(launches)
        return True

    def _run_whole(self, x, ratio, K, rho, generator, stochastic, accumulate, progress=None) -> torch.Tensor:
        padded, (h, w) = pad_to_multiple(x)
        kw = self._loop_kwargs(stochastic, accumulate)
        first_frame = self._prepare(padded, ratio, K, rho, kw)
        estimate = self._run_chosen(padded, ratio, K, rho, generator, kw, progress)
        if first_frame:  # autotuning ran for this shape: keep its results for this GPU model
            save_tuning(torch.cuda.get_device_name(self.device))
        return estimate[:, :, :h, :w]

    def _run_chosen(self, padded, ratio, K, rho, generator, kw, progress=None) -> torch.Tensor:
        """The loop on the backbone chosen for this shape, falling back to the PyTorch one if
        the chosen path fails (the failing path is then dropped for good, with a warning)."""
        path = self._backbone_for(padded, ratio, K, rho, kw)
        if path == "eager":
            return self._run_path(path, padded, ratio, K, rho, generator, kw, progress)
        state = generator.get_state() if generator is not None else None
        try:
            estimate = self._run_path(path, padded, ratio, K, rho, generator, kw, progress)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing optional path must not stop the user's run
            self._drop_path(path, f"it failed on a frame of shape {tuple(padded.shape)} ({type(e).__name__}: {e})")
            if generator is not None:
                generator.set_state(state)  # the frame is drawn again as if the first try never ran
            estimate = self._run_path("eager", padded, ratio, K, rho, generator, kw, progress)
        return estimate

    def _run_path(self, path, padded, ratio, K, rho, generator, kw, progress=None) -> torch.Tensor:
        net = self._candidate(path)
        if self.device.type == "cpu" and self.memory_budget is not None:
            net = self._within_memory_budget(net, padded, path)
        if self.cuda_graphs:
            key = (kw["stochastic"], kw["accumulate"], path)
            with self._lock:
                if key not in self._graphed:
                    self._graphed[key] = GraphedDiffusion(net, cache=self.graph_cache, **kw)
            return self._graphed[key](padded, ratio=ratio, K=K, rho=rho, generator=generator)
        # progress: per step on the eager / fused paths only (a CUDA graph replays every step at once)
        return run_exposure_diffusion(net, padded, ratio=ratio, K=K, rho=rho, generator=generator, progress=progress,
                                      **kw)

    def _within_memory_budget(self, net, padded: torch.Tensor, path: str = "eager"):
        """On a CPU: the backbone applied in tiles (``TiledBackbone``, one radius of context per
        tile and step) when its activations for the whole frame would not fit what is left of
        ``memory_budget``; else ``net`` itself. Its output agrees with the whole frame's to
        ~64 dB PSNR (a 48-pixel context; measured on the bench scene). Decided from the
        shapes alone (see ``CPU_MEMORY_BUDGET``)."""
        B, _, h, w = padded.shape
        loop_bytes = padded.element_size() * B * h * w * LOOP_TENSOR_CHANNELS
        free = self.memory_budget - PROCESS_BASE_BYTES - loop_bytes
        width = self.config.options.get("widths", (None,))[0] or self.config.options.get("width", 32)
        per_pixel = ACTIVATION_BYTES.get(path, ACTIVATION_BYTES["eager"]) * B * width / 32  # scales with level 1
        if per_pixel * h * w <= free:
            return net
        side = int(math.sqrt(max(free, MIN_ACTIVATION_BUDGET) / per_pixel)) // SIZE_MULTIPLE * SIZE_MULTIPLE
        side = max(side, 2 * CPU_TILE_MARGIN + 4 * SIZE_MULTIPLE)
        return TiledBackbone(net, side, self.config.out_channels, margin=CPU_TILE_MARGIN)

    def _run(self, x, ratio, K, rho, generator, stochastic, accumulate, tile, progress=None) -> torch.Tensor:
        steps = rho.shape[1] - 1
        margin = steps * UNET_RADIUS
        run = lambda t: self._run_whole(t, ratio, K, rho, generator, stochastic, accumulate,  # noqa: E731
                                        progress=progress)
        h, w = x.shape[-2:]
        if tile is not None and max(h, w) > tile:
            return run_tiled(run, x, tile=max(tile, 2 * margin + 4 * SIZE_MULTIPLE), margin=margin)
        try:
            return run(x)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        # Out of memory: halve the tile until it fits (the core must stay non-empty).
        tile = 1 << (max(h, w) - 1).bit_length()
        while True:
            tile //= 2
            tile_with_context = max(tile, 2 * margin + 4 * SIZE_MULTIPLE)
            if tile < MIN_AUTO_TILE or tile_with_context >= max(h, w) + 2 * margin:
                raise torch.OutOfMemoryError(
                    f"out of memory on {self.device} even for {tile * 2}-pixel tiles of a {h}x{w} packed frame; "
                    "use a smaller batch, fewer steps or another device")
            try:
                return run_tiled(run, x, tile=tile_with_context, margin=margin)
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    # ------------------------------------------------------------------ public
    @staticmethod
    def _frames(source, raw_metadata) -> list[RawFrame]:
        """The input as a non-empty list of same-size, same-pattern frames."""
        batched = isinstance(source, (list, tuple)) or (getattr(source, "ndim", 0) == 3)
        if batched and len(source) == 0:
            what = f"array of shape {tuple(source.shape)}" if hasattr(source, "shape") else f"empty {type(source).__name__}"
            raise InvalidRawError(f"empty batch ({what})", "give at least one frame")
        with nvtx.annotate("decode", color="yellow"):
            if isinstance(source, RawFrame):
                frames = [source]
            elif batched and all(isinstance(s, RawFrame) for s in source):
                frames = list(source)
            else:
                frames = read_raw_batch(source if batched else [source], **raw_metadata).frames
        if any(f.pattern != frames[0].pattern or f.shape != frames[0].shape for f in frames):
            raise ValueError("a batch needs frames of one size and one CFA pattern; process them one by one")
        return frames

    def _auto_ratio_call(self, source, raw_metadata, *, steps, schedule, **kwargs):
        """``ratio="auto"``: each frame's ratio from its own pixels (``engine.inference.auto_ratio``),
        frames of one ratio enhanced together; a frame already well exposed gets ratio 1, one step,
        and a ``RawInputWarning``. Returns what ``__call__`` returns, in the input's order."""
        if schedule is not None and not isinstance(schedule, str):
            raise ValueError("ratio='auto' chooses the ratio per frame; give a number with explicit exposure "
                             "multiples in schedule=, or a schedule name")
        batched = isinstance(source, (list, tuple)) or (getattr(source, "ndim", 0) == 3)
        frames = self._frames(source, raw_metadata)
        ratios = [estimate_ratio(f.cfa.to(self.device), f.pattern, torch.tensor(f.black_level, dtype=torch.float32,
                                 device=self.device), float(f.white_level)) for f in frames]
        results: list = [None] * len(frames)
        for r in sorted(set(ratios)):
            idx = [i for i, v in enumerate(ratios) if v == r]
            group_steps = steps
            if r <= 1.0:
                for i in idx:
                    warn_input(frames[i].source, "already exposed normally (ratio 'auto' found 1): denoised only, "
                               "in one step; give --ratio to brighten it anyway")
                group_steps = 1
            out = self([frames[i] for i in idx], ratio=r, steps=group_steps, **kwargs)
            for i, res in zip(idx, out):
                results[i] = res
        return results if batched else results[0]

    def __call__(self, source, *, ratio, steps: int | str = 3, K=None, iso=None, camera=None, seed: int | None = None,
                 stochastic: bool | None = None, schedule=None, accumulate: bool = False,
                 generator: torch.Generator | None = None, progress=None, **raw_metadata):
        """Enhance one frame, or a batch of same-size frames.

        Args:
            source: a path to any raw rawpy reads, a ``rawpy.RawPy``, a uint16 ``[H, W]``
                numpy / torch / CuPy array (with ``pattern=``, ``black_level=``,
                ``white_level=`` and ``iso=`` or ``K=`` as keywords), a ``RawFrame``; or a
                list of them / a ``[B, H, W]`` array for a batch.
            ratio: exposure ratio r to brighten by (0 < r <= 10000; > 1 when steps > 1), or
                "auto": per frame from its own pixels (``engine.inference.auto_ratio``: the
                frame's median brought to 12% of white, its highlights kept below 95%; a frame
                already exposed normally gets 1, one step, and a warning); the ratio used is in
                each result's ``ratio`` and in its files' metadata.
            steps: network evaluations, 1 <= n <= ``MAX_STEPS`` (100; 1 = the one-shot baseline),
                or "auto": chosen per call from the input's expected quality
                (``engine.inference.adaptive``; a batch runs at the largest count its frames need).
            K: gain in DN per photo-electron, in ``engine.camera.K_RANGE`` (0.01 .. 1e4);
                default from the ISO and camera profile.
            iso: overrides the file's ISO (> 0). camera: profile name / JSON path for ISO -> K.
            seed: an integer in [0, 2**64 - 1] -> repeatable noise; None -> fresh noise every call.
            Numbers may be Python, numpy scalars or 0-d arrays / tensors (``kernels.numbers``);
            anything else, and values out of range, raise ``ValueError`` before any work.
            stochastic: True: Poisson draws between the steps (SPEC §4); False: their means
                (deterministic: the result does not depend on ``seed``); None (default): the
                model's own mode, ``self.photons`` ("draws", or "means" for a checkpoint whose
                ``meta["photons"]`` says it was trained and measured with means, as the shipped
                default model is; ``engine/data/README.md``).
            schedule: the exposure multiples of the steps: "linspace" (SPEC §4), "geometric"
                (``engine.inference.loop.SCHEDULES``), or explicit ``[1, rho_1, ..., r]`` (n + 1
                values); None (default): the model's own, ``self.schedule`` ("linspace", or the
                checkpoint's ``meta["schedule"]``: the schedule it was trained for).
            accumulate: the paper's accumulating update instead of the reference form.
            generator: a torch.Generator for the Philox keys (instead of ``seed``).
            progress: optional callable ``progress(step, steps)``, called after each network
                evaluation (step 1..steps; again for each tile of a tiled frame) on the eager
                and fused paths (a CUDA-graph replay runs every step at once and reports none).

        Returns:
            ``EnhancedFrame`` for a single input, a list of them for a batch.
        """
        if seed is not None and generator is not None:
            raise ValueError("give seed= or generator=, not both")
        if stochastic is not None and not isinstance(stochastic, bool):
            raise ValueError(f"stochastic must be True, False or None (the model's mode), got {stochastic!r:.80}")
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} or explicit exposure multiples, got "
                             f"{schedule!r:.80}")
        if isinstance(ratio, str) and ratio == "auto":
            return self._auto_ratio_call(source, raw_metadata, steps=steps, K=K, iso=iso, camera=camera, seed=seed,
                                         stochastic=stochastic, schedule=schedule, accumulate=accumulate,
                                         generator=generator, progress=progress)
        stochastic = use_draws(stochastic, self.photons)
        given_ratio = real("ratio", ratio, low=0, high=MAX_RATIO, low_open=True)
        # The kernels hold the ratio in float32: validate the value they will see
        # (5e-324 is 0 there, 1 + 2**-52 is 1).
        ratio = float(torch.tensor(given_ratio, dtype=torch.float32))
        if ratio <= 0:
            raise ValueError(f"ratio {given_ratio!r} is 0 in float32 (the photon maths' precision); the smallest "
                             f"ratio is {torch.finfo(torch.float32).tiny:g}")
        if isinstance(steps, str) and steps != "auto":
            raise ValueError(f"steps must be 'auto' or an integer in [1, {MAX_STEPS}], got {steps!r}")
        auto = steps == "auto"
        if auto and schedule is not None and not isinstance(schedule, str):
            raise ValueError("steps='auto' chooses the step count itself; give an integer steps with explicit "
                             "exposure multiples in schedule=, or a schedule name")
        if schedule is None:
            schedule = self.schedule
        if not auto:
            steps = integer("steps", steps, low=1, high=MAX_STEPS)
        if seed is not None:
            seed = integer("seed", seed, low=0, high=MAX_SEED)
        if not auto and steps > 1 and ratio <= 1 and isinstance(schedule, str):
            rounded = f" ({given_ratio!r} is 1 in float32)" if given_ratio > 1 else ""
            raise ValueError(f"steps > 1 needs ratio > 1 (the exposure must grow between steps), got ratio "
                             f"{ratio:g}{rounded}")
        if K is not None:  # checked before any file is decoded (an ISO can only be checked after)
            K = resolve_gain(K=K)

        frames = self._frames(source, raw_metadata)
        batched = isinstance(source, (list, tuple)) or (getattr(source, "ndim", 0) == 3)
        gains = [resolve_gain(K=K, iso=iso if iso is not None else f.iso, camera=camera or self.camera,
                              make=f.make, model=f.model, source=str(f.source)) for f in frames]
        for f, k in zip(frames, gains):  # the largest Poisson mean of a step: dn_scale / K photons
            if self.dn_scale / k > MAX_MEAN:
                raise ValueError(f"{f.source}: K = {k:g} is too small for dn_scale {self.dn_scale:g}: photon counts "
                                 f"up to {self.dn_scale / k:.3g} exceed the Poisson sampler's {MAX_MEAN:g}")
        if generator is None and seed is not None:
            generator = torch.Generator(device="cpu").manual_seed(int(seed))

        dev = self.device
        B = len(frames)
        ratio_t = torch.full((B,), float(ratio), dtype=torch.float32, device=dev)
        K_t = torch.tensor(gains, dtype=torch.float32, device=dev)
        rho = None if auto else exposure_schedule(ratio_t, steps, schedule)
        with nvtx.annotate("pack", color="green"):
            cfa = torch.stack([f.cfa.to(dev, non_blocking=True) for f in frames])
            black = torch.tensor([f.black_level for f in frames], dtype=torch.float32, device=dev)
            white = torch.tensor([f.white_level for f in frames], dtype=torch.float32, device=dev)
            first = pack_bayer(cfa, frames[0].pattern, black, white, ratio_t, K=K_t,
                               with_photon=self.config.with_photon, concat_origin=self.config.concat_origin,
                               out_dtype=self._act_dtype)
            first = first.contiguous(memory_format=torch.channels_last)
        if auto:  # chosen before the loop (and before any CUDA-graph capture)
            steps = steps_for_batch(first, ratio_t, K_t, self.auto_policy, self.dn_scale) if ratio > 1 else 1
            rho = exposure_schedule(ratio_t, steps, schedule)
        with nvtx.annotate("diffusion", color="red"), torch.inference_mode():
            estimate = self._run(first, ratio_t, K_t, rho, generator, stochastic, accumulate, self.max_tile,
                                 progress=progress)
        if self.fidelity_scale is not None:
            with nvtx.annotate("fidelity", color="blue"), torch.inference_mode():
                noisy = pack_bayer(cfa, frames[0].pattern, black, white, ratio_t, clip=False)
                clipped = noisy >= ratio_t.view(-1, 1, 1, 1) * SENSOR_CLIP  # the raw at its white level
                estimate = low_frequency_fidelity(estimate, noisy, self.fidelity_scale, sensor_clipped=clipped)
                del noisy, clipped
        results = [EnhancedFrame(raw=estimate[i], frame=f, ratio=float(ratio), K=gains[i], steps=steps,
                                 schedule=rho[i].tolist(), seed=seed) for i, f in enumerate(frames)]
        return results if batched else results[0]
