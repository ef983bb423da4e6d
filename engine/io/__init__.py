"""Raw I/O: reading raw frames (``raw``), writing DNGs (``dng``, ``tiff_metadata``) and
enhanced outputs (``output``), every write atomic (``atomic``)."""
from .raw import RawFrame, read_raw, read_raw_batch

__all__ = ["RawFrame", "read_raw", "read_raw_batch"]
