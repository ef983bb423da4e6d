"""Encoding sRGB images to PNG, JPEG and TIFF bytes, with EXIF; JPEG also on the GPU.

Each encoder takes an sRGB image ``[H, W, 3]`` (numpy, uint8 or uint16 as the
``OutputOptions`` ask) and the EXIF ``Tag`` list of the output, and returns the file's
bytes. They run in the writer processes of ``engine.inference.batch`` (or in-process);
none touches a GPU. The choices, measured on the CPU default bench frame in
``bench/RESULTS.md`` (``python bench/encoders.py``):

- PNG, ``compression="fast"`` (default): imagecodecs (libpng + zlib) at level 1 with the
  RLE strategy and the Sub filter (OpenCV's fast settings): several times faster than
  zlib level 6 for about 10% more bytes. ``"small"``: 8-bit through Pillow at level 9
  with its adaptive filters (the smallest files measured); 16-bit through imagecodecs at
  level 9 with every filter tried (Pillow writes no 16-bit RGB PNG). EXIF in an eXIf chunk.
- JPEG: Pillow (libjpeg-turbo), ``quality`` 1..100, 4:2:0 chroma, EXIF in APP1. On a
  CUDA device ``encode_jpeg_on_device`` runs torchvision's nvJPEG encoder on a batch of
  frames; the APP1 EXIF segment is spliced in afterwards.
- TIFF: tifffile, RGB, 16-bit by default (8-bit on request), uncompressed by default
  ("fast"), Adobe Deflate with the horizontal-differencing predictor with
  ``compression="small"``; IFD0 tags plus an EXIF IFD.
"""
from __future__ import annotations

import io

import numpy as np

from .exif import EXIF_IFD, Tag, append_exif_ifd, pillow_exif, png_with_exif, tiff_ifd0_tags, exif_ifd_entries

# tifffile does not write tag 34665; a placeholder LONG tag is renamed once the EXIF IFD is appended.
_EXIF_PLACEHOLDER = EXIF_IFD - 1
PNG_FAST = dict(level=1, strategy=3, filter=16)  # imagecodecs: Z_RLE strategy, PNG Sub filter
PNG_SMALL_LEVEL = 9


def encode_png(img: np.ndarray, tags: list[Tag], compression: str = "fast") -> bytes:
    """PNG bytes of ``img`` (uint8 or uint16 ``[H, W, 3]``) with an eXIf chunk."""
    import imagecodecs

    exif = pillow_exif(tags)
    if compression == "small" and img.dtype == np.uint8:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img, mode="RGB").save(buf, format="PNG", compress_level=PNG_SMALL_LEVEL, exif=exif)
        return buf.getvalue()
    kw = PNG_FAST if compression == "fast" else dict(level=PNG_SMALL_LEVEL, filter=imagecodecs.PNG.FILTER.ALL)
    return png_with_exif(bytes(imagecodecs.png_encode(np.ascontiguousarray(img), **kw)), exif)


def encode_jpeg(img: np.ndarray, tags: list[Tag], quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 ``[H, W, 3]`` image (Pillow / libjpeg-turbo) with EXIF."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format="JPEG", quality=int(quality), exif=pillow_exif(tags))
    return buf.getvalue()


def encode_tiff(img: np.ndarray, tags: list[Tag], compression: str = "fast") -> bytes:
    """TIFF bytes of ``img`` (uint16 or uint8 ``[H, W, 3]``, RGB, little-endian) with
    IFD0 metadata and an EXIF IFD; uncompressed ("fast") or Adobe Deflate ("small")."""
    import tifffile

    description = next((t.value for t in tags if t.ifd == "ifd0" and t.code == 270), None)
    software = next((t.value for t in tags if t.ifd == "ifd0" and t.code == 305), None)
    exif = exif_ifd_entries(tags)
    extratags = tiff_ifd0_tags(tags) + ([(_EXIF_PLACEHOLDER, 4, 1, 0, True)] if exif else [])
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.ascontiguousarray(img), photometric="rgb", byteorder="<", bigtiff=False, metadata=None,
                     compression="adobe_deflate" if compression == "small" else None,
                     predictor=compression == "small",  # horizontal differencing: 12% smaller on 16-bit
                     description=description,
                     software=software or False, extratags=extratags)
    if exif:
        append_exif_ifd(buf, exif, _EXIF_PLACEHOLDER)
    return buf.getvalue()


# ----------------------------------------------------------------------------- GPU JPEG


def device_jpeg_available(device) -> bool:
    """True when JPEGs of images on ``device`` can be encoded there: a CUDA device and a
    torchvision whose ``encode_jpeg`` takes CUDA tensors (0.19 or later) importable."""
    import torch

    if torch.device(device).type != "cuda":
        return False
    try:
        from torchvision.io import encode_jpeg  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or built for another torch: fall back to the CPU
        return False
    return True


def encode_jpeg_on_device(images, quality: int = 95) -> list[bytes]:
    """JPEG bytes (no EXIF yet) of uint8 ``[H, W, 3]`` CUDA tensors, encoded in one
    batched nvJPEG call (``torchvision.io.encode_jpeg``); only the compressed bytes cross
    to the host. Add the EXIF with ``exif.jpeg_with_exif``."""
    from torchvision.io import encode_jpeg

    chw = [im.permute(2, 0, 1).contiguous() for im in images]  # torchvision takes [3, H, W]
    return [bytes(t.cpu().numpy()) for t in encode_jpeg(chw, quality=int(quality))]
