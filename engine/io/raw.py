"""Reading raw Bayer frames: files (through rawpy / LibRaw), rawpy objects and arrays.

``read_raw`` turns any supported input into a :class:`RawFrame`; ``read_raw_batch`` stacks
same-size frames into a :class:`RawBatch`. Anything that is not a 2x2 Bayer mosaic, or not
a raw file at all, is refused with an exception from :mod:`engine.errors` naming the input
and the reason.

Conventions (the same as :mod:`kernels.bayer` for a string pattern):

- ``cfa`` is always a ``torch.Tensor``, uint16, ``[H, W]``, in DN, on the input's device.
  Files are decoded into a private CPU copy (the rawpy buffer dies with its object);
  numpy, torch and DLPack inputs (CuPy, JAX, ...) are wrapped **without a copy**, strides
  and all (a numpy view with negative strides or a read-only array is the exception: it
  is copied, as torch cannot share it). Treat ``cfa`` as read-only.
- ``pattern``: the 2x2 colour cell of the **visible** image as 4 letters in raster order
  (row 0 left, row 0 right, row 1 left, row 1 right): "RGGB", "BGGR", "GRBG" or "GBRG".
- Per-site values (``black_level``, ``wb_gains``) are 4-tuples in plane order
  **R, G1, B, G2**, where G1 is the green on red's row and G2 the green on blue's row,
  whatever the pattern (SPEC §1). This is rawpy's ``black_level_per_channel`` order
  (indexed by colour code 0=R, 1=G, 2=B, 3=G2) for every file LibRaw numbers that way.
- ``color_matrix``: float64 ``[3, 3]``, XYZ -> camera RGB (rows camera R, G, B; columns
  X, Y, Z), the DNG ``ColorMatrix`` convention and rawpy's ``rgb_xyz_matrix[:3]``. For a
  DNG it is the file's own ColorMatrix (the D65 one when there are two); otherwise LibRaw's
  built-in matrix for the camera; ``None`` when neither exists.

What rawpy 0.28 does not expose, and the fallback used here: it has no make / model at
all; it reports ISO 0 for a DNG that stores ISOSpeedRatings in IFD0 rather than in the
EXIF IFD, and 65535 for speeds above that (EXIF 2.3 moves them to ISOSpeed); its
``rgb_xyz_matrix`` is LibRaw's built-in table (zeros for an unknown camera), not a DNG's
own ColorMatrix. For TIFF-based files (DNG, ARW, NEF, CR2, ..., and ORF / RW2, whose TIFF
structure has another magic number) those tags, and the lens, aperture, focal length,
capture date / time and orientation, are read from IFD0 / the EXIF IFD with tifffile; for
other formats (CR3, CRW, RAF, MRW, IIQ) make and model are ``None`` and the rest comes
from LibRaw (``raw.other``, ``raw.lens``, ``raw.sizes.flip``).
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import rawpy
import torch

from kernels.numbers import real

from ..camera import colour_matrix_problem
from ..errors import InvalidRawError, RawDecodeError, UnsupportedSensorError, warn_input
from .dng_checks import check_decoded, check_dng_encoding
from .paths import FileIdentity, file_identity
from .tiff_metadata import text_value, tiff_metadata

__all__ = ["RawFrame", "RawBatch", "read_raw", "read_raw_batch", "PATTERNS", "plane_sites", "source_files",
           "MAX_SIDE", "MAX_PIXELS"]

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
# Absurd-dimension guards, checked from the header before LibRaw allocates anything. The
# largest sensors (multi-shot 400 MP backs) stay well under both.
MAX_SIDE = 65535
MAX_PIXELS = 1 << 29
# A file must hold at least one byte per this many declared pixels; well below any real
# raw codec (lossless ~ 1/2, lossy ~ 1/8 byte per pixel), far above a lying header.
MIN_BYTES_PER_PIXEL = 1.0 / 1024
# TIFF, BigTIFF, and the TIFF structures of Olympus ORF ("IIRO", "IIRS", "MMOR") and
# Panasonic RW2 ("IIU\0"), which tifffile parses too (metadata only).
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")
# LibRaw's ``flip`` -> EXIF Orientation (LibRaw maps EXIF 1..8 to flip 0, 1, 3, 2, 4, 6, 7, 5).
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 3: 3, 2: 4, 4: 5, 7: 7, 6: 6, 5: 8}


def plane_sites(pattern: str) -> tuple[int, int, int, int]:
    """Raster index (0..3) in the 2x2 cell of the planes R, G1, B, G2 for ``pattern``."""
    r = pattern.index("R")
    b = 3 - r
    g1 = r ^ 1  # the other site of R's row
    return r, g1, b, 3 - g1


@dataclass(frozen=True, eq=False)
class RawFrame:
    """One Bayer raw frame and its metadata (conventions in the module docstring).

    Attributes:
        cfa: uint16 ``[H, W]`` tensor, DN, H and W >= 2 (odd sizes allowed).
        pattern: "RGGB" | "BGGR" | "GRBG" | "GBRG".
        black_level: DN per plane (R, G1, B, G2).
        white_level: DN, saturation level, > every black level, <= 65535.
        iso: ISO sensitivity, or None when unknown.
        exposure_time: seconds, or None when unknown.
        make, model: as written in the file (e.g. "SONY", "ILCE-7SM2"), or None.
        wb_gains: as-shot white-balance multipliers (R, G1, B, G2) with G1 = 1, or None.
        color_matrix: float64 [3, 3] XYZ -> camera RGB, or None.
        source: file path, or a description such as "numpy array".
        lens: lens model as the file names it (e.g. "FE 35mm F1.8"), or None.
        f_number: aperture as an f-number (e.g. 2.8), or None.
        focal_length: mm, or None.
        capture_time: when the picture was taken, as EXIF writes it ("YYYY:MM:DD HH:MM:SS",
            the camera's clock), or None.
        orientation: EXIF Orientation 1..8 (how to turn the picture for display; the
            pixels stay as the sensor read them), or None when unknown.
        source_file: the file the frame was read from, as it was then
            (``engine.io.paths.FileIdentity``: resolved path, device, inode), or None for
            arrays. Writers refuse to replace it (``save_output``, ``write_frame_dng``), even
            where ``source`` is a relative path and the working folder has changed since.
    """

    cfa: torch.Tensor
    pattern: str
    black_level: tuple[float, float, float, float]
    white_level: float
    iso: float | None = None
    exposure_time: float | None = None
    make: str | None = None
    model: str | None = None
    wb_gains: tuple[float, float, float, float] | None = None
    color_matrix: np.ndarray | None = None
    source: str = "array"
    lens: str | None = None
    f_number: float | None = None
    focal_length: float | None = None
    capture_time: str | None = None
    orientation: int | None = None
    source_file: FileIdentity | None = None

    def __post_init__(self):
        src = self.source
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        _check_cfa(self.cfa, src)
        set_("pattern", _pattern(self.pattern, src))
        set_("black_level", _four("black_level", self.black_level, src))
        set_("white_level", _positive("white_level", self.white_level, src))
        if self.white_level > 65535:
            raise InvalidRawError(src, f"white level {self.white_level:g} is above the uint16 range (65535)")
        if min(self.black_level) < 0:
            raise InvalidRawError(src, f"black level {self.black_level} must be >= 0")
        if max(self.black_level) >= self.white_level:
            raise InvalidRawError(src, f"black level {self.black_level} must be below the white level {self.white_level:g}")
        set_("iso", None if self.iso is None else _positive("iso", self.iso, src))
        set_("exposure_time", None if self.exposure_time is None else _positive("exposure_time", self.exposure_time, src))
        set_("make", text_value(self.make))
        set_("model", text_value(self.model))
        set_("lens", text_value(self.lens))
        set_("capture_time", text_value(self.capture_time))
        for name in ("f_number", "focal_length"):
            if getattr(self, name) is not None:
                set_(name, _positive(name, getattr(self, name), src))
        if self.orientation is not None:
            if isinstance(self.orientation, bool) or self.orientation not in range(1, 9):
                raise InvalidRawError(src, f"orientation must be an EXIF Orientation 1..8, got {self.orientation!r}")
            set_("orientation", int(self.orientation))
        if self.wb_gains is not None:
            gains = self.wb_gains
            if len(gains) == 3:  # R, G, B
                gains = (gains[0], gains[1], gains[2], gains[1])
            gains = _four("wb_gains", gains, src)
            if min(gains) <= 0:
                raise InvalidRawError(src, f"wb_gains {gains} must be > 0")
            set_("wb_gains", tuple(g / gains[1] for g in gains))
        if self.color_matrix is not None:
            m = np.asarray(self.color_matrix, dtype=np.float64)
            if m.size != 9 or not np.isfinite(m).all():
                raise InvalidRawError(src, f"color_matrix must be 3x3 finite values (XYZ -> camera), got shape {m.shape}")
            m = m.reshape(3, 3).copy()
            problem = colour_matrix_problem(m)
            if problem is not None:  # refused here, not at the first PNG / TIFF save
                raise InvalidRawError(src, f"color_matrix (XYZ -> camera) cannot colour an image: {problem}")
            set_("color_matrix", m)
        if self.source_file is not None:
            try:  # a plain (path, device, inode) tuple, e.g. after a round trip through JSON
                set_("source_file", FileIdentity(*self.source_file))
            except TypeError:
                raise InvalidRawError(src, f"source_file must be an engine.io.paths.FileIdentity, got "
                                           f"{self.source_file!r}") from None

    def __repr__(self) -> str:  # the pixels themselves would swamp the metadata
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                           if f.name not in ("cfa", "color_matrix", "source_file"))
        cm = "None" if self.color_matrix is None else "[3x3]"
        return (f"RawFrame(cfa=<{self.cfa.dtype} {tuple(self.cfa.shape)} on {self.cfa.device}>, "
                f"{fields}, color_matrix={cm})")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.cfa.shape)

    @property
    def device(self) -> torch.device:
        return self.cfa.device

    def to(self, device) -> "RawFrame":
        """The same frame with ``cfa`` on ``device`` (no copy when already there)."""
        return dataclasses.replace(self, cfa=self.cfa.to(device))


@dataclass(frozen=True, eq=False)
class RawBatch:
    """Same-size, same-pattern frames stacked for the batched kernels.

    Attributes:
        frames: the individual frames (their metadata: ISO, make, ...).
        cfa: uint16 ``[B, H, W]`` on the frames' device.
        pattern: the common pattern.
        black_level: float32 ``[B, 4]`` (R, G1, B, G2), DN, on ``cfa.device``.
        white_level: float32 ``[B]``, DN, on ``cfa.device``.
    """

    frames: list
    cfa: torch.Tensor
    pattern: str
    black_level: torch.Tensor
    white_level: torch.Tensor

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return (f"RawBatch({len(self.frames)} frames, cfa=<{self.cfa.dtype} {tuple(self.cfa.shape)} on "
                f"{self.cfa.device}>, pattern={self.pattern!r})")


def source_files(frame: RawFrame) -> list:
    """The files an output made from ``frame`` must not replace: its source file as read
    (``source_file``), else ``source`` when that names an existing file (a frame built by
    hand with a path as its source); none for arrays."""
    if frame.source_file is not None:
        return [frame.source_file]
    return [frame.source] if os.path.isfile(frame.source) else []


# ----------------------------------------------------------------------------- reading


_KEYWORDS = ("pattern", "black_level", "white_level", "iso", "exposure_time", "make", "model", "wb_gains",
             "color_matrix")


def read_raw(source, *, pattern=None, black_level=None, white_level=None, iso=None, exposure_time=None,
             make=None, model=None, wb_gains=None, color_matrix=None, **unknown) -> RawFrame:
    """Read one Bayer frame.

    Args:
        source: a path (str, bytes or os.PathLike; any name the OS accepts, UTF-8 or not) to
            any raw file rawpy reads; an open
            ``rawpy.RawPy`` (left open, pixels copied out); a numpy or torch uint16 ``[H, W]``
            mosaic; or any DLPack array (``__dlpack__``, e.g. CuPy), wrapped zero-copy.
        pattern, black_level, white_level: required for arrays. ``black_level`` is a number
            or 4 values (R, G1, B, G2), DN. For a file or rawpy object they override the
            file's levels; a ``pattern`` that contradicts the file's is refused.
        iso, exposure_time, make, model, wb_gains, color_matrix: optional; override what the
            file says (``exposure_time`` in s; ``wb_gains`` R, G1, B, G2 or R, G, B;
            ``color_matrix`` 3x3 XYZ -> camera).

    Raises:
        FileNotFoundError: no such path.
        RawDecodeError: empty, truncated, corrupt or non-raw file.
        UnsupportedSensorError: X-Trans, Foveon, linear / 3-channel DNG, monochrome, non-RGB
            or non-2x2 colour filter arrays.
        InvalidRawError: bad array (dtype, rank, size) or metadata (missing, black >= white).
        TypeError: a keyword ``read_raw`` does not take (the message lists those it does).
    """
    if unknown:
        _refuse_keywords("read_raw", unknown)
    if isinstance(source, bytes):  # a file name as the OS stores it (Linux: any bytes)
        source = os.fsdecode(source)
    overrides = dict(black_level=black_level, white_level=white_level, iso=iso, exposure_time=exposure_time,
                     make=make, model=model, wb_gains=wb_gains, color_matrix=color_matrix)
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, pattern, overrides)
    if isinstance(source, rawpy.RawPy):
        return _read_rawpy(source, "rawpy.RawPy object", pattern, overrides, {})
    if isinstance(source, (np.ndarray, torch.Tensor)) or hasattr(source, "__dlpack__"):
        cfa, name = _as_tensor(source)
        missing = [k for k, v in (("pattern", pattern), ("black_level", black_level), ("white_level", white_level)) if v is None]
        if missing:
            raise InvalidRawError(name, "an array input needs its metadata: missing " + ", ".join(missing)
                                  + " (pattern such as 'RGGB', black_level in DN, white_level in DN)")
        return RawFrame(cfa=cfa, pattern=pattern, source=name, **overrides)
    raise InvalidRawError(type(source).__name__, "unsupported input: expected a path, a rawpy.RawPy object, "
                          "a numpy / torch uint16 [H, W] array or a DLPack array (e.g. CuPy)")


def read_raw_batch(sources, **metadata) -> RawBatch:
    """Read several same-size, same-pattern frames and stack them.

    ``sources`` is a sequence of anything :func:`read_raw` accepts (``metadata`` is passed
    to each), or one uint16 ``[B, H, W]`` array / tensor sharing ``metadata`` (then
    ``cfa`` is that array, zero-copy). Otherwise ``cfa`` is a new stacked tensor.
    Mixed sizes, patterns or devices are refused: process such frames one by one.
    """
    unknown = sorted(set(metadata) - set(_KEYWORDS))
    if unknown:
        _refuse_keywords("read_raw_batch", {k: metadata[k] for k in unknown})
    if isinstance(sources, (np.ndarray, torch.Tensor)) or hasattr(sources, "__dlpack__"):
        stacked, name = _as_tensor(sources, ndim=3)
        frames = [read_raw(stacked[i], **metadata) for i in range(stacked.shape[0])]
        frames = [dataclasses.replace(f, source=f"{name}[{i}]") for i, f in enumerate(frames)]
    else:
        if isinstance(sources, (str, bytes, os.PathLike, rawpy.RawPy)):
            sources = [sources]
        frames = [read_raw(s, **metadata) for s in sources]
        stacked = None
    name = f"batch of {len(frames)} frames"
    if not frames:
        raise InvalidRawError(name, "empty batch: give at least one frame")
    first = frames[0]
    for i, f in enumerate(frames[1:], 1):
        for what, a, b in (("size", first.shape, f.shape), ("pattern", first.pattern, f.pattern),
                           ("device", first.device, f.device)):
            if a != b:
                raise InvalidRawError(name, f"frames differ in {what}: frame 0 ({first.source}) has {_fmt(a)}, "
                                      f"frame {i} ({f.source}) has {_fmt(b)}; batch only same-{what} frames "
                                      "or process them one by one")
    if stacked is None:
        stacked = torch.stack([f.cfa for f in frames]) if len(frames) > 1 else first.cfa.unsqueeze(0)
    black = torch.tensor([f.black_level for f in frames], dtype=torch.float32).to(first.device)
    white = torch.tensor([f.white_level for f in frames], dtype=torch.float32).to(first.device)
    return RawBatch(frames=frames, cfa=stacked, pattern=first.pattern, black_level=black, white_level=white)


# ----------------------------------------------------------------------------- files


def _read_path(path, pattern, overrides) -> RawFrame:
    name = os.fsdecode(path)  # str, bytes or PathLike; bytes that are not UTF-8 become surrogate escapes
    if not os.path.exists(name):
        raise FileNotFoundError(2, "raw file not found", name)
    if os.path.isdir(name):
        raise RawDecodeError(name, "is a directory, not a raw file")
    identity = file_identity(name)  # taken now: writers refuse this file later, wherever the cwd is then
    size = os.path.getsize(name)
    if size == 0:
        raise RawDecodeError(name, "empty file (0 bytes)")
    with open(name, "rb") as f:
        head = f.read(16)
    _sniff(name, head)
    if head[:4] in _TIFF_MAGICS:
        check_dng_encoding(name)  # encodings LibRaw would decode into wrong pixels silently
    raw = rawpy.RawPy()
    try:
        try:
            _open(raw, name)
        except (rawpy.LibRawError, rawpy.NotSupportedError) as e:
            raise _libraw_error(name, e) from e
        _check_header_size(name, raw.sizes, size)
        meta = tiff_metadata(name) if head[:4] in _TIFF_MAGICS else {}
        return _read_rawpy(raw, name, pattern, overrides, meta, identity)
    finally:
        raw.close()


def _open(raw, name: str) -> None:
    """``raw.open_file(name)``, or, for a name that is not valid UTF-8 (Linux file names are
    bytes: ``caf\\xe9.dng`` in Latin-1 reaches Python as ``caf\\udce9.dng``), the file's bytes
    through ``open_buffer``: rawpy encodes paths as UTF-8 and raises UnicodeEncodeError on
    such a name. The buffer costs one copy of the file in memory while LibRaw reads it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        with open(name, "rb") as f:  # Python passes the original bytes to the OS
            raw.open_buffer(f)
        return
    raw.open_file(name)


def _sniff(name, head: bytes) -> None:
    """Clearer reasons than LibRaw's "unsupported format" for common wrong files."""
    if head.startswith(b"FOVb"):
        raise UnsupportedSensorError(name, "Foveon X3F raw (3 stacked colour layers, no Bayer CFA) is not supported")
    if head.startswith(b"\xff\xd8\xff"):
        raise RawDecodeError(name, "this is a JPEG image, not a raw file (whatever its extension)")
    if head.startswith(b"\x89PNG"):
        raise RawDecodeError(name, "this is a PNG image, not a raw file (whatever its extension)")


def _check_header_size(name, sizes, file_bytes: int) -> None:
    h, w = int(sizes.raw_height), int(sizes.raw_width)
    if min(h, w, sizes.height, sizes.width) < 2 or max(h, w) > MAX_SIDE or h * w > MAX_PIXELS:
        raise InvalidRawError(name, f"absurd dimensions in metadata: {w}x{h} pixels "
                              f"(limits: sides 2..{MAX_SIDE}, at most {MAX_PIXELS} pixels)")
    if file_bytes < h * w * MIN_BYTES_PER_PIXEL:
        raise InvalidRawError(name, f"absurd dimensions in metadata: {w}x{h} pixels declared but the file "
                              f"holds only {file_bytes} bytes (truncated or corrupt header)")


def _libraw_error(name, e: Exception) -> Exception:
    msg = e.args[0].decode("utf-8", "replace") if e.args and isinstance(e.args[0], bytes) else str(e)
    detail = f" (LibRaw: {msg})"
    if isinstance(e, rawpy.LibRawFileUnsupportedError):
        return RawDecodeError(name, "not a raw file LibRaw can decode: unsupported format or corrupt header" + detail)
    if isinstance(e, rawpy.LibRawIOError):
        return RawDecodeError(name, "truncated or unreadable raw file: data ends before the image does" + detail)
    if isinstance(e, rawpy.LibRawTooBigError):
        return InvalidRawError(name, "absurd dimensions in metadata: image too big to decode" + detail)
    if isinstance(e, rawpy.LibRawDataError):
        return RawDecodeError(name, "corrupt raw data" + detail)
    if isinstance(e, rawpy.NotSupportedError):
        return UnsupportedSensorError(name, "raw layout not supported by rawpy" + detail)
    return RawDecodeError(name, "raw file could not be decoded" + detail)


def _read_rawpy(raw, name, pattern, overrides, meta, identity=None) -> RawFrame:
    try:
        if raw.num_colors == 1:
            raise UnsupportedSensorError(name, "monochrome sensor (no colour filter array); a Bayer CFA is required")
        img = raw.raw_image_visible  # decodes (LibRaw unpack) on first access
        if img is None or img.ndim != 2:
            raise UnsupportedSensorError(name, "linear / 3-channel raw data (linear DNG, Foveon or demosaiced); "
                                         "a single-plane Bayer CFA is required")
        grid = raw.raw_pattern
        if grid is None or grid.shape != (2, 2):
            kind = {(6, 6): "X-Trans 6x6", (1, 1): "monochrome 1x1"}.get(getattr(grid, "shape", None), None)
            kind = kind or f"non-2x2 ({'none' if grid is None else 'x'.join(map(str, grid.shape))})"
            raise UnsupportedSensorError(name, f"{kind} colour filter array; only 2x2 Bayer (RGGB, BGGR, GRBG, GBRG) is supported")
        top, left = int(raw.sizes.top_margin), int(raw.sizes.left_margin)
        codes = [raw.raw_color(top + i, left + j) for i in (0, 1) for j in (0, 1)]  # visible cell
        desc = raw.color_desc.decode("ascii", "replace")
        found = "".join(desc[c] if 0 <= c < len(desc) else "?" for c in codes)
        if found not in PATTERNS:
            raise UnsupportedSensorError(name, f"colour filter cell {found!r} (colours {desc!r}) is not an RGB Bayer pattern")
        black = list(raw.black_level_per_channel)
        cam_mul = list(raw.camera_whitebalance)
        other, lens, flip = raw.other, raw.lens, int(raw.sizes.flip)
        xyz_cam = np.asarray(raw.rgb_xyz_matrix, dtype=np.float64)[:3]
        white = float(raw.white_level)
        cfa = torch.from_numpy(np.array(img, dtype=np.uint16, order="C", copy=True))
    except (rawpy.LibRawError, rawpy.NotSupportedError) as e:
        raise _libraw_error(name, e) from e
    except NotImplementedError as e:  # rawpy's raw_pattern for exotic filter layouts
        raise UnsupportedSensorError(name, f"colour filter array layout not supported ({e})") from e
    if pattern is not None and _pattern(pattern, name) != found:
        raise InvalidRawError(name, f"pattern given as {_pattern(pattern, name)!r} but the file's CFA is {found!r}")
    sites = plane_sites(found)
    per_site = lambda values: tuple(float(values[codes[s]]) for s in sites)  # noqa: E731
    if len(cam_mul) == 4 and cam_mul[3] == 0:  # LibRaw: 0 means "same as the first green"
        cam_mul[3] = cam_mul[1]
    gains = per_site(cam_mul)
    fields = dict(
        black_level=per_site(black), white_level=white,
        # LibRaw reads EXIF ISOSpeedRatings only, which saturates at 65535 (EXIF 2.3 puts
        # higher speeds in ISOSpeed); it ignores a DNG's IFD0 ISO: then ask the TIFF tags.
        iso=(float(other.iso_speed) if 0 < other.iso_speed < 65535 else meta.get("iso", float(other.iso_speed) or None)),
        exposure_time=(float(other.shutter_speed) if other.shutter_speed > 0 else meta.get("exposure_time")),
        make=meta.get("make"), model=meta.get("model"),
        # The TIFF tags where the file has them (exact text); LibRaw's parse of the maker's
        # metadata for every other format it reads.
        lens=meta.get("lens") or text_value(lens.model),
        f_number=meta.get("f_number") or (float(other.aperture) if other.aperture > 0 else None),
        focal_length=meta.get("focal_length") or (float(other.focal_length) if other.focal_length > 0 else None),
        capture_time=meta.get("capture_time") or _exif_time(other.timestamp),
        orientation=meta.get("orientation") or _FLIP_TO_ORIENTATION.get(flip),
        wb_gains=gains if all(math.isfinite(g) and g > 0 for g in gains) else None,
        color_matrix=_file_colour_matrix(name, meta.get("color_matrix"), xyz_cam),
    )
    fields.update({k: v for k, v in overrides.items() if v is not None})
    frame = RawFrame(cfa=cfa, pattern=found, source=name, source_file=identity, **fields)
    # With the levels in force (the file's or the caller's): a frame of zeros below a black
    # level > 0 holds no picture (refused); one that seems cut short is warned about.
    check_decoded(name, cfa.numpy(), frame.black_level, frame.white_level)
    return frame


def _file_colour_matrix(name, own, builtin) -> np.ndarray | None:
    """The file's own colour matrix (a DNG's ColorMatrix), else LibRaw's built-in one for the
    camera, else None. A matrix that cannot colour an image (zero, singular) is skipped with
    a ``RawInputWarning`` naming the file: the pixels are still good, and a frame without a
    matrix renders camera RGB as sRGB instead of failing at the first PNG / TIFF save."""
    for label, m in (("the file's ColorMatrix", own), ("LibRaw's built-in matrix", builtin)):
        if m is None or (m is builtin and not np.any(m)):
            continue  # absent (LibRaw reports zeros for a camera it does not know)
        problem = colour_matrix_problem(m)
        if problem is None:
            return m
        warn_input(name, f"{label} is unusable ({problem}); ignored")
    return None


def _refuse_keywords(function: str, unknown: dict):
    """A TypeError naming the keywords ``function`` does not take and those it does (with the
    nearest match), instead of Python's bare "unexpected keyword argument"."""
    import difflib

    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, _KEYWORDS, n=1)
        parts.append(repr(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise TypeError(f"{function}() got unknown keyword argument(s) {', '.join(parts)}; it takes the source and "
                    f"the keywords {', '.join(_KEYWORDS)} (metadata overrides; the gain K, ratio and steps are "
                    f"Pipeline options, not read_raw's)")


# ----------------------------------------------------------------------------- arrays


def _as_tensor(x, ndim: int = 2) -> tuple[torch.Tensor, str]:
    """Wrap an array without copying; check dtype, rank and size."""
    if isinstance(x, torch.Tensor):
        t, name = x, f"torch tensor on {x.device}"
    elif isinstance(x, np.ndarray):
        name = "numpy array"
        if x.dtype != np.uint16:
            raise InvalidRawError(name, f"dtype {x.dtype}; expected uint16 DN"
                                  + (" in native byte order" if x.dtype.kind == "u" and x.itemsize == 2 else ""))
        if not x.flags.writeable or any(s < 0 for s in x.strides):
            x = np.array(x, order="C", copy=True)  # torch can share neither
        t = torch.from_numpy(x)
    else:
        name = f"{type(x).__module__.split('.')[0]}.{type(x).__name__} array"
        try:
            t = torch.from_dlpack(x)
        except Exception as e:  # noqa: BLE001 - any exporter failure is a bad input
            raise InvalidRawError(name, f"could not be wrapped through DLPack ({e})") from e
    if t.dtype != torch.uint16:
        raise InvalidRawError(name, f"dtype {t.dtype}; expected uint16 DN (a float or signed array is not a raw mosaic: "
                              "convert integer DN with .astype(uint16))")
    if t.dim() != ndim:
        expected = "[H, W]" if ndim == 2 else "[B, H, W]"
        hint = "; for several frames use read_raw_batch" if ndim == 2 and t.dim() == 3 else ""
        raise InvalidRawError(name, f"shape {tuple(t.shape)}: expected a {ndim}-D {expected} CFA mosaic{hint}")
    if t.numel() == 0:
        raise InvalidRawError(name, f"zero-size array (shape {tuple(t.shape)})")
    if t.is_meta:
        raise InvalidRawError(name, "a meta tensor holds no pixels (shapes only); pass a tensor with data")
    return t, name


def _check_cfa(cfa, src) -> None:
    if not isinstance(cfa, torch.Tensor):
        raise InvalidRawError(src, f"RawFrame.cfa must be a torch.Tensor (use read_raw for numpy / DLPack arrays), got {type(cfa).__name__}")
    if cfa.is_meta:
        raise InvalidRawError(src, "a meta tensor holds no pixels (shapes only); pass a tensor with data")
    if cfa.dtype != torch.uint16 or cfa.dim() != 2:
        raise InvalidRawError(src, f"RawFrame.cfa must be uint16 [H, W], got {cfa.dtype} {tuple(cfa.shape)}")
    h, w = cfa.shape
    if h < 2 or w < 2:
        raise InvalidRawError(src, f"frame {w}x{h} is smaller than one 2x2 CFA cell")
    if max(h, w) > MAX_SIDE or h * w > MAX_PIXELS:
        raise InvalidRawError(src, f"absurd dimensions: {w}x{h} pixels (limits: sides <= {MAX_SIDE}, <= {MAX_PIXELS} pixels)")


def _pattern(pattern, src) -> str:
    """A 4-letter pattern string, or a rawpy-style 2x2 colour-code array (0=R, 1/3=G, 2=B)."""
    if not isinstance(pattern, str):
        try:
            codes = [int(v) for v in np.asarray(pattern).reshape(-1)]
        except (TypeError, ValueError):
            codes = []
        if len(codes) == 4 and all(0 <= c <= 3 for c in codes):
            pattern = "".join("RGBG"[c] for c in codes)
        else:
            raise InvalidRawError(src, f"pattern must be one of {PATTERNS} or a 2x2 raw_pattern, got {pattern!r}")
    key = pattern.upper()
    if key not in PATTERNS:
        raise InvalidRawError(src, f"pattern {pattern!r} is not a 2x2 Bayer pattern; expected one of {PATTERNS}")
    return key


def _four(what, value, src) -> tuple[float, float, float, float]:
    """A number or 4 values -> 4 finite floats."""
    try:
        arr = np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidRawError(src, f"{what} must be a number or 4 values (R, G1, B, G2), got {value!r}") from None
    if arr.size == 1:
        arr = np.repeat(arr, 4)
    if arr.size != 4:
        raise InvalidRawError(src, f"{what} must be a number or 4 values (R, G1, B, G2), got {arr.size} values")
    if not np.isfinite(arr).all():
        raise InvalidRawError(src, f"{what} must be finite, got {arr.tolist()}")
    return tuple(float(v) for v in arr)


def _positive(what, value, src) -> float:
    """A finite number > 0 (Python, numpy or 0-d tensor: ``kernels.numbers``), else InvalidRawError."""
    try:
        return real(what, value, low=0, low_open=True)
    except ValueError as e:
        raise InvalidRawError(src, str(e)) from None


def _exif_time(when) -> str | None:
    """LibRaw's capture timestamp as EXIF text; None for its "unknown" (the epoch)."""
    try:
        return None if when is None or when.timestamp() <= 86400 else when.strftime("%Y:%m:%d %H:%M:%S")
    except (AttributeError, OverflowError, OSError, ValueError):
        return None


def _fmt(v) -> str:
    return f"{v[1]}x{v[0]} pixels" if isinstance(v, tuple) else str(v)
