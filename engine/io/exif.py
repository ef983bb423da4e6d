"""EXIF of an output: the source's capture metadata and what made the file.

A photo library sorts by these tags, so every output carries the ones the source had:

| tag (code) | IFD | from |
|---|---|---|
| Make (271), Model (272) | IFD0 | ``RawFrame.make`` / ``model`` |
| Orientation (274) | IFD0 | ``RawFrame.orientation`` (1..8, EXIF's meaning; carried, never applied to the pixels) |
| ImageDescription (270), Software (305) | IFD0 | ``Provenance``: ratio, steps, program and version |
| ExposureTime (33434), FNumber (33437), ISOSpeedRatings (34855) | EXIF | ``exposure_time`` (s), ``f_number``, ``iso`` |
| DateTimeOriginal (36867), DateTimeDigitized (36868) | EXIF | ``capture_time`` ("YYYY:MM:DD HH:MM:SS", the camera's clock) |
| FocalLength (37386), LensModel (42036) | EXIF | ``focal_length`` (mm), ``lens`` |

``exif_tags`` lists them once as ``Tag`` values; ``pillow_exif`` serialises them for
Pillow's JPEG / PNG writers (and the eXIf chunk / APP1 segment spliced into encoders that
write none), ``tiff_ifd0_tags`` + ``append_exif_ifd`` for the TIFF and DNG writers
(tifffile writes IFD0 tags itself but not an EXIF sub-IFD).
"""
from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from fractions import Fraction

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SRATIONAL = 1, 2, 3, 4, 5, 7, 10
EXIF_IFD = 34665
SOFTWARE = "ExposureDiffusion 0.1.0"
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1, SRATIONAL: 8}


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What made an enhanced file: the exposure ratio and network evaluations."""

    ratio: float
    steps: int
    software: str = SOFTWARE

    def description(self) -> str:
        return f"Enhanced by {self.software}: exposure ratio {self.ratio:g}, {self.steps} step(s)"


@dataclasses.dataclass(frozen=True)
class Tag:
    """One EXIF / TIFF tag: ``value`` is a str (ASCII), an int or tuple of ints (SHORT,
    LONG), a float or tuple of floats (RATIONAL / SRATIONAL), or bytes (UNDEFINED)."""

    ifd: str  # "ifd0" or "exif"
    code: int
    type: int
    value: object


def exif_tags(frame=None, provenance: Provenance | None = None, **override) -> list[Tag]:
    """The tags of an output of ``frame`` (a ``RawFrame`` or anything with its metadata
    attributes; missing ones are left out). ``override`` replaces attributes by name
    (e.g. ``iso=`` for ``write_dng``'s own arguments)."""

    def get(name):
        return override[name] if name in override else getattr(frame, name, None)

    tags = []
    if provenance is not None:
        tags += [Tag("ifd0", 270, ASCII, provenance.description()), Tag("ifd0", 305, ASCII, provenance.software)]
    for code, name in ((271, "make"), (272, "model")):
        if ascii_text(get(name)):
            tags.append(Tag("ifd0", code, ASCII, ascii_text(get(name))))
    orientation = get("orientation")
    if orientation is not None and int(orientation) in range(1, 9):
        tags.append(Tag("ifd0", 274, SHORT, int(orientation)))
    exposure, f_number, focal = get("exposure_time"), get("f_number"), get("focal_length")
    if _positive(exposure):
        tags.append(Tag("exif", 33434, RATIONAL, float(exposure)))
    if _positive(f_number):
        tags.append(Tag("exif", 33437, RATIONAL, float(f_number)))
    iso = get("iso")
    if _positive(iso):
        v = max(1, min(int(round(float(iso))), 0xFFFFFFFF))
        tags.append(Tag("exif", 34855, SHORT, min(v, 65535)))  # ISOSpeedRatings saturates (EXIF 2.3)
        if v > 65535:
            tags += [Tag("exif", 34864, SHORT, 3), Tag("exif", 34867, LONG, v)]  # SensitivityType, ISOSpeed
    when = ascii_text(get("capture_time"))
    if when:
        tags += [Tag("exif", 36867, ASCII, when), Tag("exif", 36868, ASCII, when)]
    if _positive(focal):
        tags.append(Tag("exif", 37386, RATIONAL, float(focal)))
    if ascii_text(get("lens")):
        tags.append(Tag("exif", 42036, ASCII, ascii_text(get("lens"))))
    if any(t.ifd == "exif" for t in tags):
        tags.append(Tag("exif", 36864, UNDEFINED, b"0230"))  # ExifVersion 2.3
    return tags


def _positive(v) -> bool:
    try:
        return v is not None and float(v) > 0 and float(v) < float("inf")
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- Pillow


def pillow_exif(tags: list[Tag]) -> bytes:
    """``b"Exif\\0\\0"`` + a TIFF structure holding ``tags`` (Pillow's ``Image.Exif``),
    as Pillow's JPEG / PNG writers take it (``exif=``)."""
    from PIL import Image
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    sub = exif.get_ifd(EXIF_IFD)
    for t in tags:
        value = t.value
        if t.type in (RATIONAL, SRATIONAL):
            f = Fraction(value).limit_denominator(1 << 20)
            value = IFDRational(f.numerator, f.denominator)
        (exif if t.ifd == "ifd0" else sub)[t.code] = value
    return exif.tobytes()


def png_with_exif(png: bytes, exif: bytes) -> bytes:
    """Insert an eXIf chunk (the TIFF structure of ``exif``, without its ``Exif\\0\\0``
    prefix) after a PNG's IHDR chunk, for encoders that write none (PNG spec 1.5,
    ``eXIf`` must precede IDAT)."""
    body = exif[6:] if exif.startswith(b"Exif\0\0") else exif
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG stream starting with IHDR")
    end = 8 + 12 + struct.unpack(">I", png[8:12])[0]  # signature, then IHDR's length + type + data + CRC
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    return png[:end] + chunk + png[end:]


def jpeg_with_exif(jpeg: bytes, exif: bytes) -> bytes:
    """Insert an APP1 Exif segment into a JPEG stream (after SOI and a JFIF APP0, where
    Pillow puts it), for encoders that write none (nvJPEG through torchvision)."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream (no SOI marker)")
    payload = exif if exif.startswith(b"Exif\0\0") else b"Exif\0\0" + exif
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(f"EXIF block of {len(payload)} bytes does not fit one APP1 segment")
    at = 2
    if jpeg[2:4] == b"\xff\xe0":  # keep JFIF's APP0 first
        at = 4 + struct.unpack(">H", jpeg[4:6])[0]
    return jpeg[:at] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[at:]


# ----------------------------------------------------------------------------- TIFF / DNG


def tiff_ifd0_tags(tags: list[Tag], exclude=(270, 305)) -> list[tuple]:
    """tifffile ``extratags`` for the IFD0 tags (``exclude``: those tifffile writes from
    its own ``description=`` / ``software=`` arguments)."""
    out = []
    for t in tags:
        if t.ifd == "ifd0" and t.code not in exclude:
            count, raw = _tiff_value(t)
            if t.type == ASCII:
                out.append((t.code, ASCII, 0, ascii_text(t.value), True))
            else:
                out.append((t.code, t.type, count, raw[0] if len(raw) == 1 else raw, True))
    return out


def exif_ifd_entries(tags: list[Tag]) -> list[tuple[int, int, int, bytes]]:
    """(code, type, count, little-endian value bytes) of the EXIF IFD, sorted by code."""
    out = []
    for t in sorted((t for t in tags if t.ifd == "exif"), key=lambda t: t.code):
        count, values = _tiff_value(t)
        out.append((t.code, t.type, count, _pack(t.type, values)))
    return out


def _tiff_value(t: Tag) -> tuple[int, tuple]:
    """(count, flat values) of a tag as tifffile / the IFD writer take them."""
    if t.type == ASCII:
        data = ascii_text(t.value).encode("ascii") + b"\0"
        return len(data), tuple(data)
    if t.type == UNDEFINED:
        return len(t.value), tuple(t.value)
    values = t.value if isinstance(t.value, (tuple, list)) else (t.value,)
    if t.type in (RATIONAL, SRATIONAL):
        return len(values), rationals(values, signed=t.type == SRATIONAL)
    return len(values), tuple(int(v) for v in values)


def _pack(typ: int, values: tuple) -> bytes:
    fmt = {BYTE: "B", ASCII: "B", UNDEFINED: "B", SHORT: "H", LONG: "I", RATIONAL: "I", SRATIONAL: "i"}[typ]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def append_exif_ifd(file, entries, placeholder: int) -> None:
    """Append an EXIF IFD to a little-endian classic TIFF and point IFD0 at it.

    ``file``: a path or a seekable binary file object. IFD0 must hold a LONG tag with
    code ``placeholder`` (tifffile will not write tag 34665 itself): its code becomes
    34665 and its value the new IFD's offset.
    """
    import tifffile

    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb+") as f:
            return append_exif_ifd(f, entries, placeholder)
    file.seek(0)
    with tifffile.TiffFile(file) as tf:
        tag = tf.pages[0].tags[placeholder]
        entry_at, value_at = tag.offset, tag.valueoffset
    end = file.seek(0, os.SEEK_END)
    start = end + (end & 1)  # IFDs start on a word boundary
    extra_at = start + 2 + 12 * len(entries) + 4
    ifd, extra = bytearray(struct.pack("<H", len(entries))), bytearray()
    for code, typ, count, value in entries:
        if len(value) <= 4:
            ifd += struct.pack("<HHI", code, typ, count) + value.ljust(4, b"\0")
        else:
            ifd += struct.pack("<HHII", code, typ, count, extra_at + len(extra))
            extra += value + b"\0" * (len(value) & 1)
    ifd += struct.pack("<I", 0)  # no next IFD
    file.write(b"\0" * (start - end) + ifd + extra)
    file.seek(entry_at)
    file.write(struct.pack("<H", EXIF_IFD))
    file.seek(value_at)
    file.write(struct.pack("<I", start))


def rationals(values, signed: bool = False) -> tuple[int, ...]:
    """Flattened (numerator, denominator) pairs, exact to ~1e-9 relative, within 32 bits.

    Raises ValueError for a value that no 32-bit rational holds."""
    lo, hi = (-(1 << 31), (1 << 31) - 1) if signed else (0, (1 << 32) - 1)
    out = []
    for v in values:
        f = Fraction(v).limit_denominator(1 << 20)
        while not lo <= f.numerator <= hi:
            if f.denominator == 1:
                raise ValueError(f"value {v!r} does not fit a 32-bit TIFF rational")
            f = Fraction(v).limit_denominator(max(1, f.denominator // 16))
        out += [f.numerator, f.denominator]
    return tuple(out)


def ascii_text(s) -> str | None:
    """``s`` as printable ASCII (other characters become "?"), stripped; None when empty."""
    if s is None:
        return None
    s = "".join(c if 32 <= ord(c) < 127 else "?" for c in str(s)).strip()
    return s or None
