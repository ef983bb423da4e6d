"""engine: ExposureDiffusion inference on raw frames.

``Pipeline`` (engine.pipeline) is what applications import; the parts are usable on
their own: raw I/O (``engine.rawio``, ``engine.dng``), backbones and checkpoints
(``engine.backbones``, ``engine.checkpoint``), the multi-step loop (``engine.loop``),
CUDA graphs (``engine.graphs``), tiling (``engine.tiling``) and output writers
(``engine.output``).
"""
from .backbones import BackboneConfig, NAFNet, UNet, build_backbone
from .checkpoint import CheckpointError, export_public, load_checkpoint, save_checkpoint
from .errors import InvalidRawError, RawDecodeError, RawInputError, UnsupportedSensorError
from .pipeline import EnhancedFrame, Pipeline
from .rawio import RawFrame, read_raw, read_raw_batch

__all__ = ["Pipeline", "EnhancedFrame", "BackboneConfig", "UNet", "NAFNet", "build_backbone",
           "CheckpointError", "load_checkpoint", "save_checkpoint", "export_public",
           "RawInputError", "RawDecodeError", "UnsupportedSensorError", "InvalidRawError",
           "RawFrame", "read_raw", "read_raw_batch"]
