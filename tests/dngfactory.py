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


# ----------------------------------------------------------------------------- encodings LibRaw misreads
# DNGs written byte by byte (``_tiff_dng``), for the encodings that LibRaw 0.21 (rawpy 0.28)
# decodes into wrong pixels without an error; checked once against rawpy:
#
# | helper                          | what LibRaw does                                         |
# |---------------------------------|----------------------------------------------------------|
# | ``ljpeg_dng(strips=1)``, tiled  | decode correctly (the baselines of the ones below)       |
# | ``ljpeg_dng(strips=3)``         | decodes the first strip, then garbage (up to 65515)      |
# | ``ljpeg_dng(declared_height=)`` | ImageLength patched larger: garbage rows (up to 65515)   |
# | ``lossy_jpeg_dng``              | Compression 34892: "Input/output error" (a misleading    |
# |                                 | reason; other builds scale the samples to 16 bits)       |
# | ``sample_format_dng(int16)``    | SampleFormat 2: -1000 read as 64536                      |
# | ``sample_format_dng(float32)``  | SampleFormat 3: every pixel read as 0                    |
# | ``uncompressed_dng(declared_height=)`` | "Input/output error" (refused today already)      |
# | ``dct_tile_dng()``              | decodes correctly (Blackmagic SOF1 tiles; within 1 DN)   |
# | ``dct_tile_dng(sof=0xFFC0)`` and the other one-condition variants | wrong pixels, or    |
# |                                 | "data corrupted" (restart markers)                       |


class _EntropyBits:
    """A JPEG entropy-coded segment being written: codes most significant bit first, a 0x00
    stuffed after every 0xFF byte, ``flush`` pads the last byte with ones (ITU T.81 F.1.2.3)."""

    def __init__(self):
        self.out, self._acc, self._nbits = bytearray(), 0, 0

    def put(self, value: int, n: int) -> None:
        self._acc, self._nbits = (self._acc << n) | (value & ((1 << n) - 1)), self._nbits + n
        while self._nbits >= 8:
            self._nbits -= 8
            byte = (self._acc >> self._nbits) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)  # byte stuffing
        self._acc &= (1 << self._nbits) - 1

    def flush(self) -> None:
        if self._nbits:
            self.put((1 << (8 - self._nbits)) - 1, 8 - self._nbits)


def _segment(marker: int, body: bytes) -> bytes:
    """A JPEG marker segment: the marker, the length (body + 2) and the body."""
    return struct.pack(">HH", marker, len(body) + 2) + body


def ljpeg_encode(img: np.ndarray, precision: int = 16) -> bytes:
    """Lossless JPEG (ITU T.81 process 14, SOF3) of a uint16 ``[h, w]`` image: one component,
    predictor 1 (left; the first column from above), one Huffman table giving all 17
    difference categories 5-bit codes. What a DNG's Compression 7 segments hold."""
    img = np.asarray(img, dtype=np.int64)
    h, w = img.shape
    pred = np.empty_like(img)
    pred[:, 1:] = img[:, :-1]
    pred[1:, 0] = img[:-1, 0]
    pred[0, 0] = 1 << (precision - 1)
    diff = (img - pred).ravel()
    bits = _EntropyBits()
    for d in diff.tolist():
        if d == -32768 or d == 32768:
            bits.put(16, 5)
            continue
        size = abs(d).bit_length()
        bits.put(size, 5)  # canonical code of category ``size``: 5 bits equal to size (counts[5] = 17)
        if size:
            bits.put(d if d > 0 else d - 1, size)
    bits.flush()
    dht = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sof = struct.pack(">BHHB", precision, h, w, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # 1 component (id 1, table 0), predictor 1, Se 0, Ah/Al 0
    return (b"\xff\xd8" + _segment(0xFFC4, dht) + _segment(0xFFC3, sof) + _segment(0xFFDA, sos) + bytes(bits.out)
            + b"\xff\xd9")


def ljpeg_dng(path, cfa: np.ndarray, *, strips: int = 1, declared_height: int | None = None,
              tile: tuple[int, int] | None = None) -> Path:
    """An RGGB DNG whose mosaic is stored as lossless JPEG in ``strips`` strips (rows split
    evenly), or in ``tile = (rows, columns)`` tiles (edge tiles padded, as the DNG converter
    writes them), with ImageLength = ``declared_height`` (default: the real height)."""
    h, w = cfa.shape
    if tile is not None:
        th, tw = tile
        padded = np.pad(cfa, ((0, -h % th), (0, -w % tw)), mode="edge")
        segments = [ljpeg_encode(padded[y:y + th, x:x + tw]) for y in range(0, h, th) for x in range(0, w, tw)]
        _tiff_dng(path, w, declared_height or h, segments, compression=7, tile=tile)
        return Path(path)
    rows = -(-h // strips)
    segments = [ljpeg_encode(cfa[i:i + rows]) for i in range(0, h, rows)]
    _tiff_dng(path, w, declared_height or h, segments, compression=7, rows_per_strip=rows)
    return Path(path)


def lossy_jpeg_dng(path, height=32, width=48, seed=0) -> Path:
    """An RGGB DNG whose mosaic is a baseline (lossy) JPEG, Compression 34892, 12 bits declared."""
    from PIL import Image

    img = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=90)
    _tiff_dng(path, width, height, [buf.getvalue()], compression=34892, bits=12, white=4095, black=0)
    return Path(path)


def sample_format_dng(path, data: np.ndarray) -> Path:
    """An RGGB DNG storing ``data`` as is: int16 -> SampleFormat 2, float32 -> 3 (32 bits)."""
    data = np.ascontiguousarray(data)
    fmt = {"i": 2, "f": 3, "u": 1}[data.dtype.kind]
    _tiff_dng(path, data.shape[1], data.shape[0], [data.astype(data.dtype.newbyteorder("<")).tobytes()],
              compression=1, bits=8 * data.itemsize, sample_format=fmt)
    return Path(path)


def uncompressed_dng(path, cfa: np.ndarray, *, declared_height: int | None = None, black: int = 512) -> Path:
    """An RGGB DNG of uncompressed uint16 ``cfa`` with BlackLevel ``black`` (DN); ImageLength =
    ``declared_height`` (default the real height: a larger one declares rows the strip does
    not hold)."""
    cfa = np.ascontiguousarray(cfa, dtype="<u2")
    _tiff_dng(path, cfa.shape[1], declared_height or cfa.shape[0], [cfa.tobytes()], compression=1, black=black)
    return Path(path)


def patch_color_matrix(path, matrix) -> Path:
    """Overwrite ColorMatrix1 of a DNG written by ``write_dng`` in place (e.g. with zeros or a
    singular matrix, which ``write_dng`` itself refuses to write)."""
    with tifffile.TiffFile(path) as tf:
        offset = tf.pages[0].tags[50721].valueoffset
    values = b"".join(struct.pack("<ii", int(round(v * 10000)), 10000) for v in np.asarray(matrix, float).ravel())
    with open(path, "rb+") as f:
        f.seek(offset)
        f.write(values)
    return Path(path)


def _tiff_dng(path, width, height, segments, *, compression, bits=16, sample_format=1, rows_per_strip=None,
              white=16383, black=512, tile=None) -> None:
    """A little-endian, one-IFD CFA DNG (RGGB, identity colour matrix) whose strips (or tiles,
    ``tile = (rows, columns)``) are ``segments``, written as given: no codec of our own gets
    between the test and LibRaw."""
    n = len(segments)
    offsets_tag = 273 if tile is None else 324
    if tile is None:
        layout = [(273, 4, [0] * n), (278, 4, [rows_per_strip or height]), (279, 4, [len(s) for s in segments])]
    else:
        layout = [(322, 4, [tile[1]]), (323, 4, [tile[0]]), (324, 4, [0] * n), (325, 4, [len(s) for s in segments])]
    entries = sorted([  # (tag, type, values): BYTE 1, ASCII 2, SHORT 3, LONG 4, SRATIONAL 10
        (254, 4, [0]), (256, 4, [width]), (257, 4, [height]), (258, 3, [bits]), (259, 3, [compression]),
        (262, 3, [32803]), (277, 3, [1]), *layout, (284, 3, [1]), (339, 3, [sample_format]),
        (33421, 3, [2, 2]), (33422, 1, [0, 1, 1, 2]), (50706, 1, [1, 4, 0, 0]), (50708, 2, b"Test Sensor\0"),
        (50710, 1, [0, 1, 2]), (50711, 3, [1]), (50714, 4, [black]), (50717, 4, [white]),
        (50721, 10, [1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1]), (50778, 3, [21]),
    ], key=lambda e: e[0])
    fmt = {1: "B", 2: "s", 3: "H", 4: "I", 10: "i"}

    def pack(typ, values) -> tuple[int, bytes]:
        if typ == 2:
            return len(values), values
        count = len(values) // 2 if typ == 10 else len(values)
        return count, struct.pack(f"<{len(values)}{fmt[typ]}", *values)

    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = 8 + ifd_size
    blobs, extra = [], bytearray()
    for tag, typ, values in entries:
        count, raw = pack(typ, values)
        blobs.append((tag, typ, count, raw))
        if len(raw) > 4:
            extra += raw + b"\0" * (len(raw) % 2)
    data_at = extra_at + len(extra)
    offsets = [data_at + sum(len(x) for x in segments[:i]) for i in range(n)]
    blobs = [(t, ty, c, struct.pack(f"<{n}I", *offsets) if t == offsets_tag else r) for t, ty, c, r in blobs]
    ifd, extra, cursor = bytearray(struct.pack("<H", len(blobs))), bytearray(), extra_at
    for tag, typ, count, raw in blobs:
        if len(raw) > 4:
            ifd += struct.pack("<HHII", tag, typ, count, cursor + len(extra))
            extra += raw + b"\0" * (len(raw) % 2)
        else:
            ifd += struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0")
    ifd += struct.pack("<I", 0)
    assert len(ifd) == ifd_size and extra_at + len(extra) == data_at
    Path(path).write_bytes(b"II*\0" + struct.pack("<I", 8) + bytes(ifd) + bytes(extra) + b"".join(segments))


# ----------------------------------------------------------------------------- lossy DCT tiles (Compression 7)
# Blackmagic cinema cameras store their "lossy" CinemaDNG as Compression 7 tiles whose JPEG
# streams are DCT-based (extended sequential, SOF1, 12-bit), not lossless (SOF3). LibRaw
# (``lossless_dng_load_raw``, case 0xc1 with ``ljpeg_idct``) decodes them under these
# conditions, which ``dct_jpeg_encode`` meets by default and can break one at a time:
# one component; 12-bit samples (its DC predictor starts at 16384 = the 12-bit level shift
# 2048 times 8); one quantisation table with 16-bit entries (it reads every DQT as 64
# big-endian 16-bit values); DC table 0 and AC table 0 (it always uses those); no restart
# interval; a stream of (tile rows / 2) x (2 x tile columns) samples, row y holding tile
# rows 2y and 2y + 1 side by side, in whole 8 x 8 blocks.

_ZIGZAG = np.array([0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13,
                    6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45,
                    38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])  # zigzag index -> natural (row * 8 + column)
# Quantisation steps (natural order) finer than a JPEG quality-90 table scaled to 12 bits:
# a few DN of error on a 4095 DN range, like a "3:1" Blackmagic file.
DCT_QUANT = np.clip(np.add.outer(np.arange(8), np.arange(8)) * 2 + 4, 1, 255).astype(np.int64)


def dct_jpeg_encode(img: np.ndarray, *, precision: int = 12, sof: int = 0xFFC1, quant=DCT_QUANT,
                    quant_bits: int = 16, restart: int = 0) -> tuple[bytes, np.ndarray]:
    """DCT JPEG (ITU T.81 sequential Huffman; ``sof`` 0xFFC1 extended or 0xFFC0 baseline) of a
    uint16 ``[h, w]`` image (h, w multiples of 8, values in [0, 2**precision)): one component,
    quantisation ``quant`` (8 x 8, natural order) written with ``quant_bits``-bit entries, DC
    categories 0..15 on 5-bit codes and AC symbols on 8-bit codes (valid tables for 12-bit
    data, where the standard's example tables stop at 11 / 10 bits). ``restart`` > 0 adds a
    restart interval of that many blocks (RST markers).

    Returns the stream and its exact decode (float64 ``[h, w]``: the inverse DCT of the
    dequantised coefficients plus the level shift, before rounding), the reference any
    conforming decoder approximates."""
    from scipy.fft import dctn, idctn

    img = np.asarray(img, dtype=np.float64)
    h, w = img.shape
    assert h % 8 == 0 and w % 8 == 0, "whole 8x8 blocks only"
    shift = 1 << (precision - 1)
    blocks = (img - shift).reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3)
    q = np.asarray(quant, dtype=np.int64).reshape(8, 8)
    coef = np.rint(dctn(blocks, axes=(-2, -1), norm="ortho") / q).astype(np.int64)
    exact = idctn(coef * q, axes=(-2, -1), norm="ortho").transpose(0, 2, 1, 3).reshape(h, w) + shift

    bits = _EntropyBits()
    put = bits.put
    ac_symbols = [0x00, 0xF0] + [(r << 4) | s for r in range(16) for s in range(1, 16)]
    ac_code = {sym: i for i, sym in enumerate(ac_symbols)}  # canonical: all 8 bits long

    def value(v: int) -> None:
        size = abs(v).bit_length()
        if size:
            put(v if v > 0 else v - 1, size)

    prev, flat = 0, coef.reshape(-1, 64)[:, _ZIGZAG]
    for n, zz in enumerate(flat.tolist()):
        if restart and n and n % restart == 0:
            bits.flush()
            bits.out += bytes([0xFF, 0xD0 + (n // restart - 1) % 8])
            prev = 0
        diff = zz[0] - prev
        prev = zz[0]
        put(abs(diff).bit_length(), 5)
        value(diff)
        run = 0
        last = max([i for i in range(1, 64) if zz[i]], default=0)
        for i in range(1, last + 1):
            if zz[i] == 0:
                run += 1
                continue
            while run > 15:
                put(ac_code[0xF0], 8)
                run -= 16
            put(ac_code[(run << 4) | abs(zz[i]).bit_length()], 8)
            value(zz[i])
            run = 0
        if last < 63:
            put(ac_code[0x00], 8)  # EOB
    bits.flush()

    steps = q.reshape(-1)[_ZIGZAG]
    dqt = bytes([(1 if quant_bits == 16 else 0) << 4]) + (struct.pack(">64H", *steps) if quant_bits == 16
                                                           else bytes(steps.tolist()))
    dht = (bytes([0x00]) + bytes([0, 0, 0, 0, 16] + [0] * 11) + bytes(range(16))
           + bytes([0x10]) + bytes([0] * 7 + [len(ac_symbols)] + [0] * 8) + bytes(ac_symbols))
    sof_body = struct.pack(">BHHB", precision, h, w, 1) + bytes([1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 0, 63, 0])  # 1 component (id 1, tables 0 / 0), Ss 0, Se 63, Ah / Al 0
    header = b"\xff\xd8" + _segment(0xFFDB, dqt) + _segment(sof, sof_body) + _segment(0xFFC4, dht)
    if restart:
        header += _segment(0xFFDD, struct.pack(">H", restart))
    return header + _segment(0xFFDA, sos) + bytes(bits.out) + b"\xff\xd9", exact


def blackmagic_rows(tile: np.ndarray) -> np.ndarray:
    """A ``[th, tw]`` tile as the ``[th / 2, 2 tw]`` image a Blackmagic DCT stream holds: row y
    is tile rows 2y and 2y + 1 side by side (what LibRaw's SOF1 decoder expects)."""
    th, tw = tile.shape
    return tile.reshape(th // 2, 2, tw).reshape(th // 2, 2 * tw)


def dct_tile_dng(path, cfa: np.ndarray, *, tile: tuple[int, int] = (32, 32), layout: str = "blackmagic",
                 white: int = 4095, black: int = 256, **encode) -> np.ndarray:
    """An RGGB DNG of 12-bit ``cfa`` stored as Compression 7 tiles of DCT JPEG (Blackmagic's
    lossy CinemaDNG); ``layout`` "blackmagic" (two tile rows per stream row) or "plain"
    (the stream is the tile as it is); ``encode`` goes to ``dct_jpeg_encode`` (e.g.
    ``sof=0xFFC0``, ``quant_bits=8``). Returns the mosaic a conforming decoder gives: the
    exact decode rounded and clipped to [0, 65535] (float rounding aside, what LibRaw's
    ``ljpeg_idct`` computes)."""
    h, w = cfa.shape
    th, tw = tile
    assert h % th == 0 and w % tw == 0
    segments, decoded = [], np.zeros((h, w))
    for y in range(0, h, th):
        for x in range(0, w, tw):
            t = cfa[y:y + th, x:x + tw]
            stream, exact = dct_jpeg_encode(blackmagic_rows(t) if layout == "blackmagic" else t, **encode)
            segments.append(stream)
            decoded[y:y + th, x:x + tw] = exact.reshape(th, tw) if layout == "blackmagic" else exact
    _tiff_dng(path, w, h, segments, compression=7, bits=12, white=white, black=black, tile=tile)
    return np.clip(np.floor(decoded + 0.5), 0, 65535).astype(np.uint16)
