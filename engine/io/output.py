"""Writing an enhanced frame: 8-bit PNG, 16-bit TIFF (sRGB) or a linear DNG mosaic.

All writes are atomic (``engine.io.atomic``) and refuse to replace an existing file unless
asked (``overwrite=True``); ``save_output`` never writes over the frame's source file. The sRGB renderings come from the fused
``kernels.render_srgb`` (white balance, demosaic, colour matrix, gamma) with the
camera's own white balance and colour matrix; the DNG keeps the input's CFA pattern,
black / white levels and colour metadata, so raw editors develop it like the original.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from kernels import render_srgb, unpack_bayer

from ..camera import camera_to_srgb
from .atomic import atomic_path, refuse_existing
from .dng import write_frame_dng
from .paths import check_not_inputs
from .raw import RawFrame

FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".dng": "dng"}


def output_format(path, fmt: str | None = None) -> str:
    """'png' | 'tiff' | 'dng' from ``fmt`` or the file extension."""
    if fmt is not None:
        f = fmt.lower().lstrip(".")
        f = "tiff" if f == "tif" else f
        if f not in ("png", "tiff", "dng"):
            raise ValueError(f"unknown output format {fmt!r}; expected png, tiff or dng")
        return f
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"cannot tell the output format of {str(path)!r} from its extension; "
                         f"use one of {sorted(FORMATS)} or pass format=")
    return FORMATS[ext]


def srgb_image(raw: torch.Tensor, frame: RawFrame, out_dtype=torch.uint8) -> torch.Tensor:
    """``[4, h, w]`` linear packed raw -> ``[2h, 2w, 3]`` sRGB with the frame's colour data."""
    wb = frame.wb_gains if frame.wb_gains is not None else (1.0, 1.0, 1.0, 1.0)
    ccm = torch.as_tensor(camera_to_srgb(frame.color_matrix), dtype=torch.float32, device=raw.device)
    wb = torch.as_tensor(wb, dtype=torch.float32, device=raw.device)
    return render_srgb(raw.unsqueeze(0), frame.pattern, wb, ccm, out_dtype=out_dtype)[0]


def mosaic_dn(raw: torch.Tensor, frame: RawFrame) -> torch.Tensor:
    """``[4, h, w]`` normalised packed raw -> uint16 ``[2h, 2w]`` DN in the frame's pattern."""
    black = torch.as_tensor(frame.black_level, dtype=torch.float32, device=raw.device)
    return unpack_bayer(raw.unsqueeze(0), frame.pattern, black, float(frame.white_level))[0]


def save_output(path, raw: torch.Tensor, frame: RawFrame, fmt: str | None = None, *, overwrite: bool = False) -> Path:
    """Write ``raw`` (``[4, h, w]`` float32 in [0, 1]) as PNG, TIFF or DNG; returns the path.

    Never writes over the frame's own source file (``OutputPathError``, even with
    ``overwrite``); an existing ``path`` raises ``FileExistsError`` unless ``overwrite``.
    """
    path = Path(path)
    kind = output_format(path, fmt)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {str(path.parent)!r} does not exist")
    if os.path.isfile(frame.source):
        check_not_inputs([path], [frame.source])
    if not overwrite:
        refuse_existing(path)  # before the rendering; atomic_path checks again at the end
    if kind == "dng":
        return write_frame_dng(path, frame, cfa=mosaic_dn(raw, frame).cpu(), overwrite=overwrite)
    return write_srgb(path, srgb_image(raw, frame, srgb_dtype(kind)).cpu().numpy(), kind, overwrite=overwrite)


def srgb_dtype(kind: str) -> torch.dtype:
    """The sRGB sample type of an output kind: uint8 for PNG, uint16 for TIFF."""
    return torch.uint8 if kind == "png" else torch.uint16


def write_srgb(path, img: np.ndarray, kind: str, *, overwrite: bool = False) -> Path:
    """Encode an sRGB image ``[H, W, 3]`` (uint8 for "png", uint16 for "tiff") atomically;
    an existing ``path`` raises ``FileExistsError`` unless ``overwrite``."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if kind == "png":
            Image.fromarray(img, mode="RGB").save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, np.ascontiguousarray(img), photometric="rgb")
    return path
