"""engine: ExposureDiffusion inference on raw frames.

``Pipeline`` is what applications import. The sub-packages follow the flow of an image:

- ``engine.io``: raw files in (``raw``), enhanced files out (``output``, ``dng``), atomically;
- ``engine.models``: the backbones (``unet``, ``nafnet``) and their checkpoints;
- ``engine.inference``: ``Pipeline`` (``pipeline``), the multi-step loop (``loop``), CUDA
  graphs (``graphs``), tiling (``tiling``), many files at once (``batch``);
- ``engine.calibration``: noise profiles of new cameras;

beside them ``engine.camera`` (gain from ISO, colour matrices), ``engine.errors`` and the
command line (``engine.cli``).
"""
# Names are imported on first use (PEP 562), not with the package: the command line
# (``exposure-diffusion --help``, argument errors) imports ``engine.cli`` and
# ``engine.argtypes``, and importing torch and Triton would cost it seconds
# (issue 22, item 6). ``from engine import Pipeline`` works as before.
from .lazy import lazy_names

_LAZY = {
    "InvalidRawError": ".errors", "RawDecodeError": ".errors", "RawInputError": ".errors",
    "RawInputWarning": ".errors", "UnsupportedSensorError": ".errors",
    "EnhancedFrame": ".inference.pipeline", "Pipeline": ".inference.pipeline",
    "RawFrame": ".io.raw", "read_raw": ".io.raw", "read_raw_batch": ".io.raw",
    "BackboneConfig": ".models.backbones", "NAFNet": ".models.backbones", "UNet": ".models.backbones",
    "build_backbone": ".models.backbones",
    "CheckpointError": ".models.checkpoint", "export_public": ".models.checkpoint",
    "load_checkpoint": ".models.checkpoint", "save_checkpoint": ".models.checkpoint",
}

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = ["Pipeline", "EnhancedFrame", "BackboneConfig", "UNet", "NAFNet", "build_backbone",
           "CheckpointError", "load_checkpoint", "save_checkpoint", "export_public",
           "RawInputError", "RawDecodeError", "UnsupportedSensorError", "InvalidRawError",
           "RawInputWarning", "RawFrame", "read_raw", "read_raw_batch"]
