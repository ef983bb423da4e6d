"""Writing an enhanced frame: PNG (8 / 16-bit), JPEG, TIFF (16 / 8-bit) sRGB, or a linear DNG mosaic.

All writes are atomic (``engine.io.atomic``) and refuse to replace an existing file unless
asked (``overwrite=True``); ``save_output`` never writes over the frame's source file. The sRGB renderings come from the fused
``kernels.render_srgb`` (white balance, demosaic, colour matrix, gamma) with the
camera's own white balance and colour matrix; the DNG keeps the input's CFA pattern,
black / white levels and colour metadata, so raw editors develop it like the original.
Every output carries the source's capture metadata (``engine.io.exif``); the encoders are
in ``engine.io.encode``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from kernels import render_srgb, unpack_bayer

from ..camera import camera_to_srgb, default_white_balance
from .atomic import atomic_path, refuse_existing
from .dng import write_frame_dng
from .encode import device_jpeg_available, encode_jpeg, encode_jpeg_on_device, encode_png, encode_tiff
from .exif import Provenance, Tag, exif_tags, jpeg_with_exif, pillow_exif
from .paths import check_not_protected
from .raw import RawFrame, source_files

EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".dng": "dng"}
FORMATS = ("png", "jpeg", "tiff", "dng")
COMPRESSIONS = ("fast", "small")
_DEFAULT_BITS = {"png": 8, "jpeg": 8, "tiff": 16, "dng": 16}
_ALLOWED_BITS = {"png": (8, 16), "jpeg": (8,), "tiff": (8, 16), "dng": (16,)}
_ALIASES = {"tif": "tiff", "jpg": "jpeg"}


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """How an enhanced frame is written.

    format: "png" | "jpeg" | "tiff" (sRGB renderings) or "dng" (the linear mosaic).
    bits: sample depth of PNG (8 default, or 16) and TIFF (16 default, or 8); JPEG is 8,
        DNG keeps the sensor's 16-bit DN.
    quality: JPEG quality 1..100 (default 95).
    compression: "fast" (default: PNG zlib level 1, TIFF uncompressed) or "small" (PNG
        level 9, TIFF Adobe Deflate); JPEG and DNG ignore it.
    jpeg_on_device: JPEG encoded by nvJPEG on the CUDA device (torchvision) instead of
        Pillow on the CPU; None (default): on the device whenever it can be (CUDA and a
        working torchvision), else on the CPU. The two encoders give different bytes.
    """

    format: str = "png"
    bits: int | None = None
    quality: int = 95
    compression: str = "fast"
    jpeg_on_device: bool | None = None

    def __post_init__(self):
        fmt = output_format("x", self.format)
        object.__setattr__(self, "format", fmt)
        bits = _DEFAULT_BITS[fmt] if self.bits is None else self.bits
        if isinstance(bits, bool) or bits not in _ALLOWED_BITS[fmt]:
            raise ValueError(f"{fmt} output takes bits {' or '.join(map(str, _ALLOWED_BITS[fmt]))}, got {self.bits!r}")
        object.__setattr__(self, "bits", int(bits))
        if isinstance(self.quality, bool) or not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be an integer in 1..100, got {self.quality!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")

    @property
    def extension(self) -> str:
        return {"png": ".png", "jpeg": ".jpg", "tiff": ".tiff", "dng": ".dng"}[self.format]

    @property
    def sample_dtype(self) -> torch.dtype:
        """The sRGB rendering's sample type: uint8 or uint16."""
        return torch.uint16 if self.bits == 16 else torch.uint8


def output_format(path, fmt: str | None = None) -> str:
    """'png' | 'jpeg' | 'tiff' | 'dng' from ``fmt`` or the file extension."""
    if fmt is not None:
        f = str(fmt).lower().lstrip(".")
        f = _ALIASES.get(f, f)
        if f not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return f
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        raise ValueError(f"cannot tell the output format of {str(path)!r} from its extension; "
                         f"use one of {sorted(EXTENSIONS)} or pass format=")
    return EXTENSIONS[ext]


def output_options(path, options: "OutputOptions | str | None" = None) -> OutputOptions:
    """``options`` as an ``OutputOptions``: given, a format name, or None (from ``path``'s extension)."""
    if isinstance(options, OutputOptions):
        return options
    return OutputOptions(format=output_format(path, options))


def srgb_image(raw: torch.Tensor, frame: RawFrame, out_dtype=torch.uint8) -> torch.Tensor:
    """``[4, h, w]`` linear packed raw -> ``[2h, 2w, 3]`` sRGB with the frame's colour data
    (without white-balance gains: ``engine.camera.default_white_balance``)."""
    ccm = torch.as_tensor(camera_to_srgb(frame.color_matrix), dtype=torch.float32, device=raw.device)
    wb = (torch.as_tensor(frame.wb_gains, dtype=torch.float32, device=raw.device) if frame.wb_gains is not None
          else default_white_balance(raw, frame.color_matrix))
    return render_srgb(raw.unsqueeze(0), frame.pattern, wb, ccm, out_dtype=out_dtype)[0]


def mosaic_dn(raw: torch.Tensor, frame: RawFrame) -> torch.Tensor:
    """``[4, h, w]`` normalised packed raw -> uint16 ``[2h, 2w]`` DN in the frame's pattern."""
    black = torch.as_tensor(frame.black_level, dtype=torch.float32, device=raw.device)
    return unpack_bayer(raw.unsqueeze(0), frame.pattern, black, float(frame.white_level))[0]


def save_output(path, raw: torch.Tensor, frame: RawFrame, fmt: "OutputOptions | str | None" = None, *,
                provenance: Provenance | None = None, overwrite: bool = False) -> Path:
    """Write ``raw`` (``[4, h, w]`` float32 in [0, 1]) as PNG, JPEG, TIFF or DNG with the
    frame's capture metadata (EXIF) and ``provenance``; returns the path.

    ``fmt``: an ``OutputOptions``, a format name, or None (from the extension). Never
    writes over the frame's own source file (``OutputPathError``, even with ``overwrite``;
    judged by the file's identity taken when it was read, ``RawFrame.source_file``, so a
    relative ``source`` and a changed working folder do not matter); an existing ``path``
    raises ``FileExistsError`` unless ``overwrite``.
    """
    path = Path(path)
    options = output_options(path, fmt)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    protect = source_files(frame)
    check_not_protected(path, protect)  # before the rendering; atomic_path checks again at the end
    if not overwrite:
        refuse_existing(path)
    if options.format == "dng":
        return write_frame_dng(path, frame, cfa=mosaic_dn(raw, frame).cpu(), provenance=provenance, overwrite=overwrite)
    img = srgb_image(raw, frame, options.sample_dtype)
    tags = exif_tags(frame, provenance)
    if options.format == "jpeg" and options.jpeg_on_device is not False and device_jpeg_available(img.device):
        return write_bytes(path, jpeg_with_exif(encode_jpeg_on_device([img], options.quality)[0], pillow_exif(tags)),
                           overwrite=overwrite, protect=protect)
    return write_srgb(path, img.cpu().numpy(), options, tags, overwrite=overwrite, protect=protect)



def encode_srgb(img: np.ndarray, options: OutputOptions, tags: list[Tag]) -> bytes:
    """The file bytes of an sRGB image ``[H, W, 3]`` (uint8 / uint16 as ``options.bits``)."""
    if options.format == "png":
        return encode_png(img, tags, options.compression)
    if options.format == "jpeg":
        return encode_jpeg(img, tags, options.quality)
    if options.format == "tiff":
        return encode_tiff(img, tags, options.compression)
    raise ValueError(f"{options.format} is not an sRGB image format")


def write_srgb(path, img: np.ndarray, options: "OutputOptions | str", tags: list[Tag] = (), *,
               overwrite: bool = False, protect=()) -> Path:
    """Encode an sRGB image ``[H, W, 3]`` and write it atomically; an existing ``path``
    raises ``FileExistsError`` unless ``overwrite``; ``path`` may not be one of the
    ``protect`` files (``engine.io.atomic.atomic_path``)."""
    return write_bytes(path, encode_srgb(img, output_options(path, options), list(tags)), overwrite=overwrite,
                       protect=protect)


def write_bytes(path, data: bytes, *, overwrite: bool = False, protect=()) -> Path:
    """Write an encoded file atomically (complete or absent, never half-written); ``protect``
    as for ``write_srgb``. A full disk raises ``engine.io.atomic.DiskFullError``."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path
