"""DNG encodings LibRaw turns into wrong pixels without an error, refused from the file's
own tags and stream headers before LibRaw decodes (or allocates) anything; and a look at
decoded pixels that hold no picture or seem cut short.

Rule: refuse exactly what LibRaw decodes wrongly, never what it decodes right. LibRaw 0.22
(rawpy 0.28), checked with the files ``tests/dngfactory.py`` writes:

- floating-point samples (SampleFormat 3, e.g. merged HDR DNGs): every pixel reads as 0;
- signed integer samples (SampleFormat 2): -1000 reads as 64536;
- lossy JPEG (Compression 34892): wrong scaling or an "Input/output error" depending on
  the build, never a faithful mosaic of the declared bit depth;
- Compression 7 ("JPEG") holds two kinds of stream LibRaw decodes (``lossless_dng_load_raw``):
  lossless JPEG (SOF3), what DNG converters write, and the 12-bit DCT JPEG (SOF1, extended
  sequential) of Blackmagic cinema cameras. Refused: lossless JPEG in more than one *strip*
  (only the first strip is decoded, the rows after it are garbage; tiles decode correctly),
  lossless streams whose header holds fewer samples than the strip / tile (ImageLength
  patched larger), and every DCT stream outside the one layout LibRaw's SOF1 decoder
  handles (``_check_dct_tile``: baseline SOF0, 8-bit samples, 8-bit quantisation tables,
  the tile not stored as two rows per stream row, ... each decodes to wrong pixels);
- streams or strips that cannot hold the samples the tags declare (data ending early,
  dimensions patched up): LibRaw fills the rest with one repeated value or garbage, after
  allocating the declared size (a 530 KB file declaring 23170 x 23170 pixels took 2.4 GB).
  The test is exact, not a guess: every sample of a Huffman-coded stream costs at least the
  shortest code of its table, so ``bits / shortest code`` bounds the samples it can hold.

Only DNGs are examined (tag 50706 in IFD0); the raw image is the IFD with NewSubfileType 0
among IFD0 and its SubIFDs. A file tifffile cannot parse is left to LibRaw (which then
refuses it or not, as before).

After decoding (``check_decoded``): a frame whose sites are mostly 0 DN although the black
level is above 0 holds no picture (refused); an all-zero frame (black level 0) or trailing
rows that all hold one value (data ending early, found after decoding) are warned about.
"""
from __future__ import annotations

import dataclasses
import logging
import struct

import numpy as np
import tifffile

from ..errors import InvalidRawError, RawDecodeError, warn_input

__all__ = ["check_dng_encoding", "check_decoded", "warn_if_cut_short", "MAX_ZERO_SHARE"]

_CFA, _LINEAR_RAW = 32803, 34892
_UNCOMPRESSED, _LOSSLESS_JPEG, _LOSSY_JPEG = 1, 7, 34892
_SOF0, _SOF1, _SOF3 = 0xFFC0, 0xFFC1, 0xFFC3
_SOF_NAMES = {0xFFC0: "baseline DCT (SOF0)", 0xFFC1: "extended DCT (SOF1)", 0xFFC2: "progressive DCT (SOF2)",
              0xFFC3: "lossless (SOF3)", 0xFFC5: "hierarchical (SOF5)", 0xFFC6: "hierarchical (SOF6)",
              0xFFC7: "hierarchical lossless (SOF7)", 0xFFC9: "arithmetic-coded (SOF9)",
              0xFFCA: "arithmetic-coded (SOF10)", 0xFFCB: "arithmetic-coded lossless (SOF11)"}
_HEADER_BYTES = 1 << 16  # markers before the scan: tables and frame header, a few hundred bytes in practice
# Share of sites at exactly 0 DN, with a black level above 0, above which a frame is refused
# as holding no image data. A site reads 0 DN only far below the black level (read noise is a
# few DN around it): on a real frame that is a dead pixel or two, never a tenth of the
# sensor. Above half of the frame nothing usable is left (a stripped Panasonic RW2: 99.8%);
# below it the picture may still be partly there, and rows lost at the end are warned about.
MAX_ZERO_SHARE = 0.5


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


def _values(value) -> list[int]:
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


@dataclasses.dataclass
class _Jpeg:
    """What LibRaw's ``ljpeg_start`` reads of a stream: the frame header, the tables, the scan."""

    sof: int = 0
    precision: int = 0
    rows: int = 0
    cols: int = 0
    comps: int = 0
    quant_bits: list = dataclasses.field(default_factory=list)  # entry size of each DQT table (8 / 16)
    huffman: dict = dataclasses.field(default_factory=dict)  # (class, id) -> shortest code length in bits
    restart: int = 0
    scan: list = dataclasses.field(default_factory=list)  # (component id, DC table, AC table)
    spectral: tuple = (0, 63)  # Ss, Se
    data_start: int = 0  # file offset of the entropy-coded data


def _parse_jpeg(fh, offset: int, length: int) -> _Jpeg | str:
    """The headers of the JPEG stream at ``offset`` up to its scan, or why it is not one."""
    fh.seek(offset)
    data = fh.read(min(length, _HEADER_BYTES))
    if data[:2] != b"\xff\xd8":
        return "not a JPEG stream (no start-of-image marker)"
    info, i = _Jpeg(), 2
    while i + 4 <= len(data):
        marker, size = struct.unpack(">HH", data[i:i + 4])
        body = data[i + 4:i + 2 + size]
        if marker >> 8 != 0xFF or size < 2 or len(body) < size - 2:
            return "a JPEG stream whose headers are cut short or corrupt"
        if marker in _SOF_NAMES and len(body) >= 6:
            info.sof = marker
            info.precision, info.rows, info.cols, info.comps = struct.unpack(">BHHB", body[:6])
        elif marker == 0xFFDB:  # DQT: one or more tables, each Pq/Tq then 64 entries of 8 or 16 bits
            j = 0
            while j < len(body):
                bits = 16 if body[j] >> 4 else 8
                info.quant_bits.append(bits)
                j += 1 + 64 * bits // 8
        elif marker == 0xFFC4:  # DHT: Tc/Th, 16 counts, symbols
            j = 0
            while j + 17 <= len(body):
                counts = body[j + 1:j + 17]
                info.huffman[(body[j] >> 4, body[j] & 15)] = next((n + 1 for n, c in enumerate(counts) if c), 16)
                j += 17 + sum(counts)
        elif marker == 0xFFDD and len(body) >= 2:
            info.restart = struct.unpack(">H", body[:2])[0]
        elif marker == 0xFFDA:
            n = body[0] if body else 0
            if len(body) < 1 + 2 * n + 3:
                return "a JPEG stream whose scan header is cut short"
            info.scan = [(body[1 + 2 * k], body[2 + 2 * k] >> 4, body[2 + 2 * k] & 15) for k in range(n)]
            info.spectral = (body[1 + 2 * n], body[2 + 2 * n])
            info.data_start = offset + i + 2 + size
            return info if info.sof else "a JPEG stream without a frame header"
        i += 2 + size
    return "a JPEG stream whose headers are cut short or corrupt (no scan found)"


def _entropy_bits(fh, info: _Jpeg, end: int) -> int:
    """Bits of entropy-coded data from the scan to its end-of-image marker (or ``end``, the end
    of the strip / tile in the file), stuffed zero bytes left out: what a decoder can read."""
    fh.seek(info.data_start)
    data = fh.read(max(0, end - info.data_start))
    # Inside entropy-coded data every 0xFF is followed by 0x00 (stuffing) or a restart marker,
    # so the first 0xFF 0xD9 is the end of the stream; what follows it is never decoded.
    stop = data.find(b"\xff\xd9")
    data = data if stop < 0 else data[:stop]
    return 8 * (len(data) - data.count(b"\xff\x00"))


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
    if compression not in (_UNCOMPRESSED, _LOSSLESS_JPEG):
        return
    width, height = int(tags.valueof(256)), int(tags.valueof(257))
    tiled = 322 in tags
    offsets = _values(tags.valueof(324 if tiled else 273))
    counts = _values(tags.valueof(325 if tiled else 279))
    # Segments reaching past the end of the file: the file was cut (LibRaw reads on into
    # nothing). Refused: the missing share is known exactly.
    for k, (offset, count) in enumerate(zip(offsets, counts)):
        if offset + count > fh.size:
            where = f"tile {k}" if tiled else (f"strip {k}" if len(offsets) > 1 else "the strip")
            missing = sum(max(0, min(count, o + c - fh.size)) for o, c in zip(offsets, counts))
            share = 100 * missing / max(1, sum(counts))
            raise RawDecodeError(name, f"truncated or unreadable raw file: {where} ends {offset + count - fh.size} "
                                       f"bytes past the end of the file ({fh.size} bytes); {missing} of "
                                       f"{sum(counts)} bytes of image data ({share:.1f}%) are missing")
    if compression == _UNCOMPRESSED:
        _check_uncompressed(name, tags, width, height, counts)
        return
    if not tiled and len(offsets) > 1:
        raise RawDecodeError(name, f"lossless-JPEG raw data in {len(offsets)} strips is not supported: LibRaw "
                                   f"decodes only the first strip and fills the rest with garbage (tiled or "
                                   f"single-strip DNGs work)")
    if tiled:
        tw, th = int(tags.valueof(322)), int(tags.valueof(323))
        needed = -(-height // th) * -(-width // tw)
        if len(offsets) != needed:
            raise RawDecodeError(name, f"{len(offsets)} JPEG tiles stored but the declared {width}x{height} "
                                       f"image needs {needed} tiles of {tw}x{th} (ImageLength / ImageWidth patched "
                                       f"or corrupt): LibRaw would read garbage")
        expected = [(th, tw)] * len(offsets)
    else:
        expected = [(height, width)]  # one strip: it must hold every row, whatever RowsPerStrip says
    for k, (offset, count, (rows, cols)) in enumerate(zip(offsets, counts, expected)):
        where = f"tile {k}" if tiled else "the strip"
        info = _parse_jpeg(fh, offset, count)
        if isinstance(info, str):
            raise RawDecodeError(name, f"{where} is {info} although Compression is 7 (corrupt file)")
        if info.sof == _SOF3:
            _check_lossless(name, where, info, rows, cols)
        elif info.sof == _SOF1 and tiled:
            _check_dct_tile(name, where, info, rows, cols)
        elif info.sof == _SOF1:  # LibRaw's DCT decoder writes every other row of a strip (tile width "infinite")
            raise RawDecodeError(name, f"{where} is an extended DCT (SOF1) JPEG: LibRaw decodes those only as tiles "
                                       f"(Blackmagic's layout); in a strip it would return wrong pixels")
        else:
            kind = _SOF_NAMES[info.sof]
            article = "an" if kind[0] in "aeiou" else "a"
            raise RawDecodeError(name, f"{where} is {article} {kind} JPEG: LibRaw decodes only lossless (SOF3) and "
                                       f"Blackmagic's 12-bit extended DCT (SOF1) tiles in a Compression 7 DNG and "
                                       f"would return wrong pixels for this one")
        _check_stream_length(name, where, info, fh, offset + count)


def _check_uncompressed(name, tags, width, height, counts) -> None:
    """Strips that cannot hold the declared rows: LibRaw allocates the declared size first and
    then fails, or reads garbage where the strips are padded out. Refused from the tags."""
    bits = _first(tags.valueof(258, 16))
    samples = _first(tags.valueof(277, 1))
    needed = -(-width * samples * int(bits) // 8) * height
    if sum(counts) < needed:
        rows = sum(counts) // max(1, -(-width * samples * int(bits) // 8))
        raise InvalidRawError(name, f"absurd dimensions in metadata: {width}x{height} pixels declared but the file "
                                    f"holds only {sum(counts)} bytes of image data for them ({needed} needed at "
                                    f"{bits} bits: at most {rows} of {height} rows are stored; ImageLength / "
                                    f"ImageWidth patched or corrupt)")


def _check_lossless(name, where, info: _Jpeg, rows, cols) -> None:
    if info.rows * info.cols * info.comps != rows * cols:
        raise RawDecodeError(name, f"{where} holds a lossless JPEG of {info.rows} x {info.cols * info.comps} samples "
                                   f"but the tags declare {rows} x {cols} (ImageLength / ImageWidth patched or "
                                   f"corrupt): LibRaw would fill the difference with garbage")


def _check_dct_tile(name, where, info: _Jpeg, rows, cols) -> None:
    """A Blackmagic DCT tile (SOF1) decodes right in LibRaw (``lossless_dng_load_raw``, case
    0xc1, ``ljpeg_idct``) only in the layout that code assumes; each condition below is one
    it relies on, and breaking it gives wrong pixels (checked with ``dct_tile_dng``)."""
    problem = None
    if info.comps != 1:
        problem = f"{info.comps} components (its decoder reads one)"
    elif info.precision != 12:
        # its DC predictor starts at 16384: the level shift of 12-bit samples (2048) times 8
        problem = f"{info.precision}-bit samples (its decoder assumes 12-bit: values would be off by " \
                  f"{2048 - (1 << (info.precision - 1)):+d} DN)"
    elif not info.quant_bits or info.quant_bits[0] != 16:
        problem = "an 8-bit quantisation table (its decoder reads 16-bit entries)" if info.quant_bits \
            else "no quantisation table"
    elif (0, 0) not in info.huffman or (1, 0) not in info.huffman or any(t[1:] != (0, 0) for t in info.scan):
        problem = "Huffman tables other than DC 0 / AC 0 (its decoder always uses those)"
    elif info.restart:
        problem = f"a restart interval of {info.restart} blocks (its decoder reads no restart markers)"
    elif info.spectral != (0, 63):
        problem = f"a partial scan (coefficients {info.spectral[0]}..{info.spectral[1]})"
    elif (info.cols, 2 * info.rows) != (2 * cols, rows) or cols % 8 or info.rows % 8:
        problem = (f"a {info.rows} x {info.cols} stream for a {rows} x {cols} tile (its decoder places two tile "
                   f"rows side by side in each stream row: {rows // 2} x {2 * cols}, in whole 8 x 8 blocks)")
    if problem is not None:
        raise RawDecodeError(name, f"{where} is an extended DCT JPEG (SOF1) with {problem}: LibRaw's decoder of "
                                   f"Blackmagic's 12-bit DCT tiles would turn it into wrong pixels")


def _check_stream_length(name, where, info: _Jpeg, fh, end: int) -> None:
    """Refuse a stream too short for its declared samples (data ending early, a header patched
    larger). Refused rather than warned: the bound is exact (every sample costs at least the
    shortest Huffman code; every DCT block at least a DC code and an end-of-block code), so
    the rows past it are certainly fabricated by the decoder; and it runs before LibRaw
    allocates the declared image."""
    if info.sof == _SOF3:
        per_row = info.cols * info.comps
        cost = min([n for (c, _), n in info.huffman.items() if c == 0] or [1])
        declared, unit = info.rows * per_row, per_row
    else:
        per_row = info.cols // 8  # a row of 8 x 8 blocks
        cost = info.huffman.get((0, 0), 1) + info.huffman.get((1, 0), 1)
        declared, unit = (info.rows // 8) * per_row, per_row
    bits = _entropy_bits(fh, info, end)
    if bits < declared * cost:
        held = bits // cost
        what = "rows" if info.sof == _SOF3 else "rows of 8 x 8 blocks"
        missing = int(100 * (1 - held / declared))  # rounded down: "or more" stays true
        raise RawDecodeError(name, f"{where} ends early: its {bits // 8} bytes of JPEG data hold at most "
                                   f"{held // unit} of the {declared // unit} {what} its header declares ({missing}% "
                                   f"or more of the image missing; the decoder would fill them with a repeated value)")


def check_decoded(name, cfa: np.ndarray, black_level, white_level: float) -> None:
    """Look at decoded pixels (uint16 ``[H, W]``, DN) with the frame's black levels (DN per
    plane) and white level (DN): refuse (``RawDecodeError``) a frame holding no image data,
    more than ``MAX_ZERO_SHARE`` of its sites at 0 DN while every black level is above 0;
    else warn when it looks cut short (``warn_if_cut_short``)."""
    if min(black_level) > 0:
        share = np.count_nonzero(cfa == 0) / cfa.size
        if share > MAX_ZERO_SHARE:
            raise RawDecodeError(name, f"no image data: {100 * share:.1f}% of sites at 0 DN, below the black level "
                                       f"({min(black_level):g} DN) where no sensor reads (the raw data was stripped "
                                       f"or not decoded); refused above {100 * MAX_ZERO_SHARE:.0f}%")
    warn_if_cut_short(name, cfa, white_level)


def warn_if_cut_short(name, cfa: np.ndarray, white_level: float = 65535) -> None:
    """Warn (``RawInputWarning``) when decoded pixels look cut short: an all-zero frame, or
    trailing rows that all hold one value below ``white_level`` (real sensor rows never do:
    read noise varies every site; rows at the white level are a clipped highlight), which is
    what data ending early decodes to (zeros, or the last value repeated). A warning, not a
    refusal: found after decoding, from the pixels alone, it is a strong sign rather than a
    proof (the exact, header-based cases are refused before decoding)."""
    h = cfa.shape[0]
    if not cfa.any():
        warn_input(name, f"every pixel of the {cfa.shape[1]}x{h} frame is 0: the raw data is missing or was not "
                         f"decoded (the result will be black)")
        return
    value = int(cfa[-1, 0])
    if value >= white_level:
        return
    missing = _trailing_rows_equal(cfa, value)
    if 2 <= missing < h:
        warn_input(name, f"the last {missing} of {h} rows are all {value}: the raw data probably ends early "
                         f"(truncated, or more rows declared than stored)")


def _trailing_rows_equal(cfa: np.ndarray, value: int, chunk: int = 64) -> int:
    """How many of the last rows of ``cfa`` hold only ``value``: read from the bottom in
    chunks, so a normal frame costs one chunk, not a pass over every row."""
    count, end = 0, cfa.shape[0]
    while end > 0:
        same = (cfa[max(0, end - chunk):end] == value).all(axis=1)
        differ = np.flatnonzero(~same)
        if differ.size:
            return count + len(same) - 1 - int(differ[-1])
        count, end = count + len(same), end - chunk
    return count
