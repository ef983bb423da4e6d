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
import json
import warnings
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
from ..errors import InvalidRawError
from ..io.exif import Provenance
from ..io.output import save_output, srgb_image
from ..io.raw import RawFrame, read_raw_batch
from ..models.backbones import BackboneConfig
from ..models.checkpoint import CheckpointError, load_checkpoint
from ..models.fused_unet import FusedUNet
from .adaptive import DEFAULT_POLICY, AutoStepsPolicy, steps_for_batch
from .backbone_choice import (BACKBONE_PATHS, BackboneFallbackWarning, ChoiceCache, choice_cache_path, choose,
                              cudnn_benchmark, device_fingerprint)
from .cpu_features import native_bf16
from .graphs import GraphedDiffusion
from .loop import (
    SIZE_MULTIPLE,
    exposure_schedule,
    pad_to_multiple,
    photon_mode_from_meta,
    run_exposure_diffusion,
    use_draws,
)
from .tiling import UNET_RADIUS, run_tiled

PRECISIONS = ("fp32", "fp16", "bf16")
# The model shipped with the package (see README, "Default model").
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
    """fp16 on CUDA; bf16 on CPUs with native bf16; fp32 otherwise."""
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


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


def inference_settings(meta: dict | None, source) -> tuple[AutoStepsPolicy, str]:
    """A checkpoint's ``steps="auto"`` policy (``meta["auto_steps"]``, else ``DEFAULT_POLICY``)
    and photon mode (``meta["photons"]``, else "draws"); malformed metadata is a
    ``CheckpointError`` naming ``source`` (the file)."""
    try:
        return AutoStepsPolicy.from_meta(meta), photon_mode_from_meta(meta)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(str(source), f"unusable metadata: {e}") from None


class Pipeline:
    """Multi-step ExposureDiffusion inference on raw frames.

    Args:
        backbone: the network (``engine.models.backbones``), any device / dtype; the pipeline
            keeps its own copy in the working precision.
        config: its ``BackboneConfig`` (input channels, head).
        device: where to run (default: CUDA if available, else CPU).
        precision: "fp16" (default on CUDA), "bf16" (default on CPUs with native bf16
            support: autocast of the backbone, photon maths in fp32; its output stays
            within 45 dB PSNR of fp32, tested) or "fp32" (default on other CPUs).
        cuda_graphs: capture the loop in CUDA graphs (default True on CUDA).
        dn_scale: normalised -> DN scale of the photon maths (SPEC §2; 15583 for the
            public checkpoints).
        camera: default camera profile (name or JSON path) for ISO -> K.
        max_tile: process frames in tiles of at most this many packed pixels a side
            (None: whole frames, tiling only after an out-of-memory error).
        backbone_path: what runs the network (``engine.inference.backbone_choice``):
            "auto" (default: on CUDA the fastest of our fused Triton UNet and the PyTorch
            module, timed at the first frame of each shape and cached on disk; on a CPU
            the module), "fused" (the SID UNet on CUDA in fp16), "eager" (the module:
            cuDNN / oneDNN) or "compile" (``torch.compile`` of the module).
        compile_candidate: let "auto" also time ``torch.compile`` (minutes of compiling
            at the first frame).
    """

    def __init__(self, backbone: nn.Module, config: BackboneConfig, *, device=None, precision: str | None = None,
                 cuda_graphs: bool | None = None, dn_scale: float = DEFAULT_DN_SCALE, camera=None,
                 max_tile: int | None = None, backbone_path: str = "auto", compile_candidate: bool = False):
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
        self._init_backbone_paths(backbone_path, compile_candidate)
        # steps="auto": engine.inference.adaptive (from_checkpoint takes a stored calibration)
        self.auto_policy = DEFAULT_POLICY
        # stochastic=None: the model's photon mode (from_checkpoint takes meta["photons"]); SPEC §4: draws
        self.photons = "draws"

    @classmethod
    def from_checkpoint(cls, path=None, *, expect: dict | None = None, **kwargs) -> "Pipeline":
        """Load a public-format (``{'netG': ...}``) or our-format checkpoint (never
        executing pickled code) and build a pipeline; ``kwargs`` as for ``Pipeline``.

        ``path=None`` loads the default model shipped with the package
        (``DEFAULT_CHECKPOINT``, model card ``engine/data/README.md``). The checkpoint's
        metadata may carry its ``steps="auto"`` calibration (``meta["auto_steps"]``) and its
        photon mode (``meta["photons"]``, the default of ``stochastic``); a malformed one is a
        ``CheckpointError`` naming the file.
        """
        source = DEFAULT_CHECKPOINT if path is None else path
        model, config, meta = load_checkpoint(source, expect=expect)
        policy, photons = inference_settings(meta, source)
        pipe = cls(model, config, **kwargs)
        pipe.auto_policy, pipe.photons = policy, photons
        return pipe

    # ------------------------------------------------------------------ network
    def _init_backbone_paths(self, path: str, compile_candidate: bool) -> None:
        if path not in BACKBONE_PATHS:
            raise ValueError(f"backbone_path must be one of {BACKBONE_PATHS}, got {path!r}")
        self.fused_available = (self.config.arch == "unet" and self.device.type == "cuda"
                                and self.precision == "fp16")
        if path == "fused" and not self.fused_available:
            raise ValueError("backbone_path='fused' runs the SID UNet on CUDA in fp16; this pipeline has "
                             f"{self.config.arch} on {self.device} in {self.precision} (use 'auto' or 'eager')")
        names = ["fused", "eager"] if self.fused_available else ["eager"]
        if compile_candidate or path == "compile":
            names.append("compile")
        self.backbone_path = path
        self._candidate_names = names if path == "auto" else [path]
        self._builders = {"fused": lambda: FusedUNet(self.backbone, torch.float16), "eager": lambda: self._net,
                          "compile": lambda: torch.compile(self._net)}
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
        if self.device.type == "cuda":  # autotune results of earlier processes on this GPU model
            load_tuning(torch.cuda.get_device_name(self.device))

    def _candidate(self, name: str):
        if name not in self._candidates:
            self._candidates[name] = self._builders[name]()
        return self._candidates[name]

    def _drop_path(self, name: str, reason: str) -> None:
        """Stop using backbone ``name`` in this pipeline (it failed), with a warning."""
        warnings.warn(f"backbone candidate {name!r} dropped: {reason}; going on with 'eager'",
                      BackboneFallbackWarning, stacklevel=3)
        self._candidate_names = [n for n in self._candidate_names if n != name] or ["eager"]
        self._chosen = {k: ("eager" if v == name else v) for k, v in self._chosen.items()}

    def _backbone_for(self, padded: torch.Tensor, ratio, K, rho, kw: dict) -> str:
        """The backbone path for this input shape (see ``backbone_path``); checks and times
        the candidates on this very input the first time a shape is seen (eager loops, before
        any CUDA-graph capture), unless the disk cache knows the answer."""
        if len(self._candidate_names) == 1:
            return self._candidate_names[0]
        key = json.dumps([device_fingerprint(self.device), self.config.to_dict(), list(padded.shape),
                          str(padded.dtype), rho.shape[1] - 1, kw["stochastic"], kw["accumulate"]])
        if key not in self._chosen:
            first_outputs = {}

            def loop(name, **overrides):
                # The timing runs draw from a generator of their own: the user's generator
                # (or torch's global one) must give the same result whether timing ran or not.
                return run_exposure_diffusion(self._candidate(name), padded, ratio=ratio, K=K, rho=rho,
                                              generator=torch.Generator().manual_seed(0), **{**kw, **overrides})

            def run(name):
                out = loop(name)
                first_outputs.setdefault(name, out)
                return out

            def check(name):  # compared in the deterministic mode: Poisson draws are discontinuous
                return first_outputs[name] if not kw["stochastic"] else loop(name, stochastic=False)

            self._chosen[key], timings = choose(key, self._candidate_names, run, self.device,
                                                ChoiceCache(choice_cache_path()), check=check)
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

    def _run_whole(self, x, ratio, K, rho, generator, stochastic, accumulate) -> torch.Tensor:
        padded, (h, w) = pad_to_multiple(x)
        kw = self._loop_kwargs(stochastic, accumulate)
        first_frame = self._prepare(padded, ratio, K, rho, kw)
        estimate = self._run_chosen(padded, ratio, K, rho, generator, kw)
        if first_frame:  # autotuning ran for this shape: keep its results for this GPU model
            save_tuning(torch.cuda.get_device_name(self.device))
        return estimate[:, :, :h, :w]

    def _run_chosen(self, padded, ratio, K, rho, generator, kw) -> torch.Tensor:
        """The loop on the backbone chosen for this shape, falling back to the PyTorch one if
        the chosen path fails (the failing path is then dropped for good, with a warning)."""
        path = self._backbone_for(padded, ratio, K, rho, kw)
        if path == "eager":
            return self._run_path(path, padded, ratio, K, rho, generator, kw)
        state = generator.get_state() if generator is not None else None
        try:
            estimate = self._run_path(path, padded, ratio, K, rho, generator, kw)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a failing optional path must not stop the user's run
            self._drop_path(path, f"it failed on a frame of shape {tuple(padded.shape)} ({type(e).__name__}: {e})")
            if generator is not None:
                generator.set_state(state)  # the frame is drawn again as if the first try never ran
            estimate = self._run_path("eager", padded, ratio, K, rho, generator, kw)
        return estimate

    def _run_path(self, path, padded, ratio, K, rho, generator, kw) -> torch.Tensor:
        net = self._candidate(path)
        if self.cuda_graphs:
            key = (kw["stochastic"], kw["accumulate"], path)
            if key not in self._graphed:
                self._graphed[key] = GraphedDiffusion(net, **kw)
            return self._graphed[key](padded, ratio=ratio, K=K, rho=rho, generator=generator)
        return run_exposure_diffusion(net, padded, ratio=ratio, K=K, rho=rho, generator=generator, **kw)

    def _run(self, x, ratio, K, rho, generator, stochastic, accumulate, tile) -> torch.Tensor:
        steps = rho.shape[1] - 1
        margin = steps * UNET_RADIUS
        run = lambda t: self._run_whole(t, ratio, K, rho, generator, stochastic, accumulate)  # noqa: E731
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

    def __call__(self, source, *, ratio, steps: int | str = 3, K=None, iso=None, camera=None, seed: int | None = None,
                 stochastic: bool | None = None, schedule=None, accumulate: bool = False,
                 generator: torch.Generator | None = None, **raw_metadata):
        """Enhance one frame, or a batch of same-size frames.

        Args:
            source: a path to any raw rawpy reads, a ``rawpy.RawPy``, a uint16 ``[H, W]``
                numpy / torch / CuPy array (with ``pattern=``, ``black_level=``,
                ``white_level=`` and ``iso=`` or ``K=`` as keywords), a ``RawFrame``; or a
                list of them / a ``[B, H, W]`` array for a batch.
            ratio: exposure ratio r to brighten by (0 < r <= 10000; > 1 when steps > 1).
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
            schedule: explicit exposure multiples ``[1, rho_1, ..., r]`` (n + 1 values).
            accumulate: the paper's accumulating update instead of the reference form.
            generator: a torch.Generator for the Philox keys (instead of ``seed``).

        Returns:
            ``EnhancedFrame`` for a single input, a list of them for a batch.
        """
        if seed is not None and generator is not None:
            raise ValueError("give seed= or generator=, not both")
        if stochastic is not None and not isinstance(stochastic, bool):
            raise ValueError(f"stochastic must be True, False or None (the model's mode), got {stochastic!r:.80}")
        stochastic = use_draws(stochastic, self.photons)
        ratio = real("ratio", ratio, low=0, high=MAX_RATIO, low_open=True)
        if isinstance(steps, str) and steps != "auto":
            raise ValueError(f"steps must be 'auto' or an integer in [1, {MAX_STEPS}], got {steps!r}")
        auto = steps == "auto"
        if auto and schedule is not None:
            raise ValueError("steps='auto' chooses the schedule itself; give an integer steps with schedule=")
        if not auto:
            steps = integer("steps", steps, low=1, high=MAX_STEPS)
        if seed is not None:
            seed = integer("seed", seed, low=0, high=MAX_SEED)
        if not auto and steps > 1 and ratio <= 1 and schedule is None:
            raise ValueError(f"steps > 1 needs ratio > 1 (the exposure must grow between steps), got ratio {ratio:g}")
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
            rho = exposure_schedule(ratio_t, steps)
        with nvtx.annotate("diffusion", color="red"), torch.inference_mode():
            estimate = self._run(first, ratio_t, K_t, rho, generator, stochastic, accumulate, self.max_tile)
        results = [EnhancedFrame(raw=estimate[i], frame=f, ratio=float(ratio), K=gains[i], steps=steps,
                                 schedule=rho[i].tolist(), seed=seed) for i, f in enumerate(frames)]
        return results if batched else results[0]
