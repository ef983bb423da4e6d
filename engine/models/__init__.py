"""Backbone networks (``unet``, ``nafnet``, their factory ``backbones``) and checkpoints
(``checkpoint``: public ``{'netG': ...}`` files and ours, never executing pickled code)."""
from .backbones import BackboneConfig, NAFNet, UNet, build_backbone
from .checkpoint import CheckpointError, export_public, load_checkpoint, save_checkpoint

__all__ = ["BackboneConfig", "NAFNet", "UNet", "build_backbone",
           "CheckpointError", "export_public", "load_checkpoint", "save_checkpoint"]
