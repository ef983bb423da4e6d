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
from .errors import (
           InvalidRawError,
           RawDecodeError,
           RawInputError,
           RawInputWarning,
           UnsupportedSensorError,
)
from .inference.pipeline import EnhancedFrame, Pipeline
from .io.raw import RawFrame, read_raw, read_raw_batch
from .models.backbones import BackboneConfig, NAFNet, UNet, build_backbone
from .models.checkpoint import (
           CheckpointError,
           export_public,
           load_checkpoint,
           save_checkpoint,
)

__all__ = ["Pipeline", "EnhancedFrame", "BackboneConfig", "UNet", "NAFNet", "build_backbone",
           "CheckpointError", "load_checkpoint", "save_checkpoint", "export_public",
           "RawInputError", "RawDecodeError", "UnsupportedSensorError", "InvalidRawError",
           "RawInputWarning", "RawFrame", "read_raw", "read_raw_batch"]
