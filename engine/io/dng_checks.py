"""DNG encodings LibRaw turns into wrong pixels without an error, refused from the file's
own tags before LibRaw decodes anything; and a look at decoded pixels that seem cut short.

LibRaw 0.21 (rawpy 0.28), checked with the files ``tests/dngfactory.py`` writes:

- floating-point samples (SampleFormat 3, e.g. merged HDR DNGs): every pixel reads as 0;
- signed integer samples (SampleFormat 2): -1000 reads as 64536;
- lossy JPEG (Compression 34892): wrong scaling or an "Input/output error" depending on
  the build, never a faithful mosaic of the declared bit depth;
- lossless JPEG (Compression 7) in more than one *strip*: only the first strip is decoded,
  the rows after it are garbage (tiles, what DNG converters write, decode correctly);
- lossless JPEG whose streams hold fewer samples than the strip / tile the tags declare
  (ImageLength patched larger, a corrupt header): the missing rows are garbage or zero.

Only DNGs are examined (tag 50706 in IFD0); the raw image is the IFD with NewSubfileType 0
among IFD0 and its SubIFDs. A file tifffile cannot parse is left to LibRaw (which then
refuses it or not, as before).
"""
from __future__ import annotations

import logging
import struct
import warnings

import numpy as np
import tifffile

from ..errors import RawDecodeError, RawInputWarning

__all__ = ["check_dng_encoding", "warn_if_cut_short"]

_CFA, _LINEAR_RAW = 32803, 34892
_LOSSLESS_JPEG, _LOSSY_JPEG = 7, 34892
_SOF3 = 0xFFC3
_HEADER_BYTES = 4096  # the SOF3 marker sits within the first few hundred bytes of a stream


class _Quiet(logging.Filter):
    def filter(self, record) -> bool:
        return False


def _raw_ifd(tf: tifffile.TiffFile):
    """The full-resolution raw IFD (NewSubfileType 0, CFA or LinearRaw), or None."""
    candidates = [tf.pages[0]] + list(getattr(tf.pages[0], "pages", None) or [])
    for page in candidates:
        tags = page.tags
        if tags.valueof(254, 0) == 0 and tags.valueof(262) in (_CFA, _LINEAR_RAW):
            return page
    return None


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _lossless_jpeg_size(fh, offset: int, length: int) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the SOF3 header of the stream at ``offset``."""
    fh.seek(offset)
    data = fh.read(min(length, _HEADER_BYTES))
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        marker, size = struct.unpack(">HH", data[i:i + 4])
        if marker == _SOF3 and i + 10 <= len(data):
            _, rows, cols, comps = struct.unpack(">BHHB", data[i + 4:i + 10])
            return rows, cols, comps
        if marker >> 8 != 0xFF or size < 2:
            return None
        i += 2 + size
    return None


def check_dng_encoding(name) -> None:
    """Refuse (``RawDecodeError`` naming the file and the reason) a DNG whose raw image
    LibRaw would decode into wrong pixels without an error; return quietly otherwise."""
    log = logging.getLogger("tifffile")
    quiet = _Quiet()
    log.addFilter(quiet)
    try:
        with tifffile.TiffFile(name) as tf:
            if 50706 not in tf.pages[0].tags:
                return  # not a DNG
            page = _raw_ifd(tf)
            if page is None:
                return
            _check_page(name, page, tf.filehandle)
    except RawDecodeError:
        raise
    except Exception:  # noqa: BLE001 - tags tifffile cannot parse: LibRaw decides, as before
        return
    finally:
        log.removeFilter(quiet)


def _check_page(name, page, fh) -> None:
    tags = page.tags
    sample_format = _first(tags.valueof(339, 1))
    if sample_format == 3:
        raise RawDecodeError(name, "floating-point raw samples (SampleFormat 3, e.g. a merged HDR DNG) are not "
                                   "supported: LibRaw reads them as integers (all zero); an unsigned-integer "
                                   "Bayer mosaic is required")
    if sample_format == 2:
        raise RawDecodeError(name, "signed integer raw samples (SampleFormat 2) are not supported: LibRaw reads "
                                   "them as unsigned (-1000 becomes 64536); an unsigned-integer Bayer mosaic is "
                                   "required")
    compression = tags.valueof(259, 1)
    if compression == _LOSSY_JPEG:
        raise RawDecodeError(name, "lossy JPEG-compressed raw data (Compression 34892) is not supported: LibRaw "
                                   "does not decode it to the declared bit depth; use a lossless or "
                                   "uncompressed DNG")
    if compression != _LOSSLESS_JPEG:
        return
    width, height = int(tags.valueof(256)), int(tags.valueof(257))
    tiled = 322 in tags
    offsets = tags.valueof(324 if tiled else 273)
    counts = tags.valueof(325 if tiled else 279)
    offsets = [offsets] if isinstance(offsets, int) else list(offsets)
    counts = [counts] if isinstance(counts, int) else list(counts)
    if not tiled and len(offsets) > 1:
        raise RawDecodeError(name, f"lossless-JPEG raw data in {len(offsets)} strips is not supported: LibRaw "
                                   f"decodes only the first strip and fills the rest with garbage (tiled or "
                                   f"single-strip DNGs work)")
    if tiled:
        tw, th = int(tags.valueof(322)), int(tags.valueof(323))
        needed = -(-height // th) * -(-width // tw)
        if len(offsets) != needed:
            raise RawDecodeError(name, f"{len(offsets)} lossless-JPEG tiles stored but the declared {width}x{height} "
                                       f"image needs {needed} tiles of {tw}x{th} (ImageLength / ImageWidth patched "
                                       f"or corrupt): LibRaw would read garbage")
        expected = [(th, tw)] * len(offsets)
    else:
        expected = [(height, width)]  # one strip: it must hold every row, whatever RowsPerStrip says
    for k, (offset, count, (rows, cols)) in enumerate(zip(offsets, counts, expected)):
        size = _lossless_jpeg_size(fh, int(offset), int(count))
        where = f"tile {k}" if tiled else "the strip"
        if size is None:
            raise RawDecodeError(name, f"{where} is not a lossless JPEG stream (no SOF3 header) although "
                                       f"Compression is 7 (corrupt file)")
        jrows, jcols, comps = size
        if jrows * jcols * comps != rows * cols:
            raise RawDecodeError(name, f"{where} holds a lossless JPEG of {jrows} x {jcols * comps} samples but the "
                                       f"tags declare {rows} x {cols} (ImageLength / ImageWidth patched or corrupt): "
                                       f"LibRaw would fill the difference with garbage")


def warn_if_cut_short(name, cfa: np.ndarray) -> None:
    """Warn (``RawInputWarning``) when decoded pixels look cut short: an all-zero frame, or
    trailing rows that are all exactly zero (real sensor rows never are: read noise and the
    black level keep values above 0), which is what data ending early decodes to."""
    nonzero_rows = np.flatnonzero(cfa.any(axis=1))
    h = cfa.shape[0]
    if nonzero_rows.size == 0:
        warnings.warn(RawInputWarning(name, f"every pixel of the {cfa.shape[1]}x{h} frame is 0: the raw data is "
                                            f"missing or was not decoded (the result will be black)"), stacklevel=3)
        return
    missing = h - 1 - int(nonzero_rows[-1])
    if missing >= 2:
        warnings.warn(RawInputWarning(name, f"the last {missing} of {h} rows are all 0: the raw data probably ends "
                                            f"early (truncated, or more rows declared than stored)"), stacklevel=3)
