"""Real raw files without a download: synthetic Bayer DNGs and bad files for the tests.

Good files are written with ``engine.io.dng.write_dng`` (whose read-back through rawpy is
tested in ``tests/test_dng.py``). Bad files are built here with tifffile and a few byte
patches, each checked once against rawpy 0.28 to be refused where documented:

| helper                 | what LibRaw does                                     |
|------------------------|------------------------------------------------------|
| ``empty_file``         | (refused before LibRaw)                              |
| ``random_bytes_file``  | open: unsupported file format                        |
| ``jpeg_as_raw``        | open: unsupported file format (sniffed first)        |
| ``truncated_copy``     | open: input/output error ("Unexpected end of file")  |
| ``corrupt_header``     | open: unsupported file format                        |
| ``absurd_dims_dng``    | opens; header says 20000x20000 for a few KiB of data |
| ``xtrans_dng``         | opens and decodes: 6x6 raw_pattern                   |
| ``linear_rgb_dng``     | opens and decodes: raw_image [H, W, 4] (3 channels)  |
| ``monochrome_dng``     | opens and decodes: 1 colour, 1x1 raw_pattern         |
| ``foveon_x3f``         | a fake X3F header (LibRaw has no Foveon support)     |
| ``active_area_dng``    | a good file with masked margins (ActiveArea)          |

Sizes: LibRaw refuses images under 22 pixels a side, so every file here is bigger.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import tifffile

from engine.io.dng import write_dng
from engine.io.raw import plane_sites

# An XYZ -> camera matrix shaped like a real sensor's (rows sum to about the white point).
DEFAULT_COLOR_MATRIX = ((0.90, -0.30, -0.10), (-0.40, 1.20, 0.20), (-0.05, 0.15, 0.60))
DEFAULT_NEUTRAL = (0.5, 1.0, 0.625)  # camera RGB of grey: white-balance gains 2, 1, 1.6


def make_bayer_dng(path, height=48, width=64, pattern="RGGB", black_level=(512, 510, 514, 508),
                   white_level=16383, iso=800, exposure_time=1 / 30, make="Sony", model="ILCE-7SM2",
                   seed=0, scene=None, as_shot_neutral=DEFAULT_NEUTRAL, color_matrix=DEFAULT_COLOR_MATRIX,
                   overwrite=True) -> np.ndarray:
    """Write a Bayer DNG and return its uint16 [height, width] mosaic (DN).

    Tests rewrite their own scratch files, so ``overwrite`` defaults to True here (the
    library's writers refuse an existing file by default).

    ``scene``: None -> random DN in [min(black), white] (seeded); a uint16 [H, W] array ->
    written as is; a float [H, W, 3] linear RGB image in [0, 1] -> mosaiced with
    ``pattern`` and scaled per site to ``black_c + v * (white - black_c)``.
    ``black_level`` is a number or 4 values in plane order R, G1, B, G2.
    """
    cfa = bayer_mosaic(height, width, pattern, black_level, white_level, seed=seed, scene=scene)
    write_dng(path, cfa, pattern=pattern, black_level=black_level, white_level=white_level, iso=iso,
              exposure_time=exposure_time, make=make, model=model, as_shot_neutral=as_shot_neutral,
              color_matrix=color_matrix, overwrite=overwrite)
    return cfa


def bayer_mosaic(height, width, pattern="RGGB", black_level=512, white_level=16383, *, seed=0, scene=None) -> np.ndarray:
    """The uint16 mosaic ``make_bayer_dng`` writes (see there for ``scene``)."""
    black = np.broadcast_to(np.asarray(black_level, dtype=np.float64), (4,))
    if scene is None:
        rng = np.random.default_rng(seed)
        return rng.integers(int(black.min()), int(white_level) + 1, size=(height, width)).astype(np.uint16)
    scene = np.asarray(scene)
    if scene.ndim == 2:
        return scene.astype(np.uint16)
    height, width = scene.shape[:2]
    out = np.empty((height, width), dtype=np.float64)
    channel = {"R": 0, "G": 1, "B": 2}
    sites = plane_sites(pattern.upper())
    for plane, site in enumerate(sites):
        i, j = divmod(site, 2)
        c = channel[pattern.upper()[site]]
        v = np.clip(scene[i::2, j::2, c], 0.0, 1.0)
        out[i::2, j::2] = black[plane] + v * (white_level - black[plane])
    return np.round(out).astype(np.uint16)


# ----------------------------------------------------------------------------- bad files


def empty_file(path) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def random_bytes_file(path, nbytes=8192, seed=0) -> Path:
    Path(path).write_bytes(np.random.default_rng(seed).bytes(nbytes))
    return Path(path)


def jpeg_as_raw(path, size=64) -> Path:
    """A real JPEG (written by PIL) under a raw name such as ``DSC0001.ARW``."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    Path(path).write_bytes(buf.getvalue())
    return Path(path)


def truncated_copy(src, dst, fraction=0.5) -> Path:
    """The first ``fraction`` of ``src``'s bytes (the pixel data ends early)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def corrupt_header(src, dst) -> Path:
    """``src`` with its TIFF byte-order mark and magic number overwritten."""
    data = bytearray(Path(src).read_bytes())
    data[:4] = b"\x00\x13\x37\x00"
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def absurd_dims_dng(path, height=20000, width=20000) -> Path:
    """A small valid DNG whose ImageWidth / ImageLength claim ``width`` x ``height``."""
    make_bayer_dng(path, height=32, width=32)
    _patch_tag_value(path, {256: ("<I", width), 257: ("<I", height)})
    return Path(path)


def xtrans_dng(path, size=36) -> Path:
    """A CFA DNG with Fujifilm's 6x6 X-Trans pattern."""
    xtrans = (1, 1, 0, 1, 1, 2,
              1, 1, 2, 1, 1, 0,
              2, 0, 1, 0, 2, 1,
              1, 1, 2, 1, 1, 0,
              1, 1, 0, 1, 1, 2,
              0, 2, 1, 2, 0, 1)
    data = np.random.default_rng(0).integers(600, 16000, (size, size)).astype(np.uint16)
    _raw_dng(path, data, 32803, [(33421, 3, 2, (6, 6), True), (33422, 1, 36, xtrans, True),
                                 (50710, 1, 3, (0, 1, 2), True), (50711, 3, 1, 1, True)])
    return Path(path)


def linear_rgb_dng(path, size=32) -> Path:
    """A 3-channel LinearRaw DNG (already demosaiced, as from Foveon or some converters)."""
    data = np.random.default_rng(0).integers(600, 16000, (size, size, 3)).astype(np.uint16)
    _raw_dng(path, data, 34892, [], planarconfig="contig")
    return Path(path)


def monochrome_dng(path, size=32) -> Path:
    """A 1-sample LinearRaw DNG (a monochrome sensor, e.g. Leica M Monochrom).

    tifffile refuses LinearRaw with one sample, so it is written as BlackIsZero and the
    PhotometricInterpretation patched to LinearRaw (34892)."""
    data = np.random.default_rng(0).integers(600, 16000, (size, size)).astype(np.uint16)
    _raw_dng(path, data, "minisblack", [])
    _patch_tag_value(path, {262: ("<H", 34892)})
    return Path(path)


def active_area_dng(path, active_area, height=40, width=50, pattern="RGGB", black_level=(512, 510, 514, 508),
                    white_level=16383, seed=0) -> np.ndarray:
    """A Bayer DNG with an ActiveArea (top, left, bottom, right): LibRaw crops the margins
    (rounding odd ones up to even) and reads ``pattern`` relative to the active area's
    origin, as the DNG specification says. Returns the full written mosaic."""
    cfa = bayer_mosaic(height, width, pattern, black_level, white_level, seed=seed)
    raster = [0] * 4
    for plane, site in enumerate(plane_sites(pattern)):
        raster[site] = int(np.broadcast_to(np.asarray(black_level), (4,))[plane])
    codes = tuple({"R": 0, "G": 1, "B": 2}[c] for c in pattern)
    _raw_dng(path, cfa, 32803, [(33421, 3, 2, (2, 2), True), (33422, 1, 4, codes, True),
                                (50710, 1, 3, (0, 1, 2), True), (50711, 3, 1, 1, True),
                                (50713, 3, 2, (2, 2), True), (50714, 4, 4, tuple(raster), True),
                                (50829, 4, 4, tuple(active_area), True)], white_level=white_level)
    return cfa


def foveon_x3f(path, nbytes=4096) -> Path:
    """A file starting like a Sigma X3F (magic "FOVb", version 2.1), then noise."""
    body = np.random.default_rng(0).bytes(nbytes)
    Path(path).write_bytes(b"FOVb" + struct.pack("<I", 0x00020001) + body)
    return Path(path)


# ----------------------------------------------------------------------------- helpers


def _raw_dng(path, data, photometric, cfa_tags, white_level=16383, **kw) -> None:
    """A DNG written directly with tifffile: ``cfa_tags`` replace the default black level."""
    tags = [(50706, 1, 4, (1, 4, 0, 0), True), (50708, 2, 0, "Test Sensor", True),
            (271, 2, 0, "Test", True), (272, 2, 0, "Sensor", True), (50717, 4, 1, white_level, True),
            (50721, 10, 9, (10000, 10000, 0, 10000, 0, 10000, 0, 10000, 10000, 10000, 0, 10000,
                            0, 10000, 0, 10000, 10000, 10000), True),
            (50778, 3, 1, 21, True)] + cfa_tags
    if not any(t[0] == 50714 for t in cfa_tags):
        tags.append((50714, 4, 1, 512, True))
    tifffile.imwrite(path, data, photometric=photometric, subfiletype=0, byteorder="<", metadata=None,
                     extratags=tags, **kw)


def _patch_tag_value(path, values: dict) -> None:
    """Overwrite inline values of IFD0 tags: {code: (struct format, value)}."""
    with tifffile.TiffFile(path) as tf:
        offsets = {code: tf.pages[0].tags[code].valueoffset for code in values}
    with open(path, "rb+") as f:
        for code, (fmt, value) in values.items():
            f.seek(offsets[code])
            f.write(struct.pack(fmt, value))
        f.flush()
        os.fsync(f.fileno())
