"""engine.io.dng: linear CFA DNGs that rawpy / LibRaw read back exactly, written atomically."""
import os
import re

import numpy as np
import pytest
import rawpy
import tifffile
import torch

import engine.io.dng as dng
from engine.io.dng import MIN_SIDE, SRGB_COLOR_MATRIX, write_dng, write_frame_dng
from engine.errors import InvalidRawError
from engine.io.raw import PATTERNS, read_raw

from .dngfactory import DEFAULT_COLOR_MATRIX, make_bayer_dng

BLACK = (512, 510, 514, 508)  # R, G1, B, G2: all different, so a swapped site shows
# The same blacks in raster order of the 2x2 cell, written out by hand per pattern.
RASTER_BLACK = {"RGGB": [512, 510, 508, 514],  # R G1 / G2 B
                "BGGR": [514, 508, 510, 512],  # B G2 / G1 R
                "GRBG": [510, 512, 514, 508],  # G1 R / B G2
                "GBRG": [508, 514, 512, 510]}  # G2 B / R G1
# dcraw / LibRaw: linear sRGB -> XYZ (D65), used to turn ColorMatrix1 into rawpy's color_matrix.
XYZ_FROM_SRGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])


def _site_colours(raw):
    """Colour letters and codes of the visible 2x2 cell, from rawpy's own visible colour map."""
    codes = raw.raw_colors_visible[:2, :2].reshape(-1).tolist()
    return "".join(raw.color_desc.decode()[c] for c in codes), codes


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("shape", [(22, 22), (23, 31), (48, 64)])
def test_round_trip_through_rawpy(tmp_path, pattern, shape):
    path = tmp_path / f"{pattern}.dng"
    cfa = make_bayer_dng(path, height=shape[0], width=shape[1], pattern=pattern, black_level=BLACK,
                         white_level=16383, iso=800, exposure_time=1 / 30, seed=hash(pattern) % 1000,
                         as_shot_neutral=(0.5, 1.0, 0.625))
    with rawpy.imread(str(path)) as raw:
        assert raw.raw_image_visible.shape == shape
        np.testing.assert_array_equal(raw.raw_image_visible, cfa)
        letters, codes = _site_colours(raw)
        assert letters == pattern
        assert raw.raw_pattern.shape == (2, 2)
        # black_level_per_channel is indexed by colour code: site k has the black we gave
        # for its plane (R, G1, B, G2 order).
        per_site = [raw.black_level_per_channel[c] for c in codes]
        assert per_site == RASTER_BLACK[pattern]
        assert raw.white_level == 16383
        wb = raw.camera_whitebalance
        np.testing.assert_allclose(wb[:3], [2.0, 1.0, 1.6], rtol=1e-6)  # 1 / AsShotNeutral
        assert raw.other.iso_speed == 800
        assert raw.other.shutter_speed == pytest.approx(1 / 30, rel=1e-6)


def test_color_matrix_reaches_libraw(tmp_path):
    """LibRaw derives its camera -> sRGB matrix from our ColorMatrix1 (the dcraw way)."""
    path = tmp_path / "cm.dng"
    make_bayer_dng(path, make="Acme", model="Unknown 1")  # not in LibRaw's own table
    cam_rgb = np.asarray(DEFAULT_COLOR_MATRIX) @ XYZ_FROM_SRGB
    cam_rgb /= cam_rgb.sum(axis=1, keepdims=True)
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_allclose(raw.color_matrix[:, :3], np.linalg.inv(cam_rgb), rtol=1e-4, atol=1e-5)


def test_tags_as_written(tmp_path):
    path = tmp_path / "tags.dng"
    make_bayer_dng(path, pattern="GBRG", make="Sony", model="ILCE-7SM2", iso=3200, exposure_time=0.25)
    with tifffile.TiffFile(path) as tf:
        tags = {t.code: t.value for t in tf.pages[0].tags.values()}
    assert tags[262] == 32803 and tags[277] == 1 and tags[258] == 16
    assert tags[271] == "Sony" and tags[272] == "ILCE-7SM2" and tags[50708] == "Sony ILCE-7SM2"
    assert tuple(tags[33422]) == (1, 2, 0, 1)  # GBRG as CFA colour codes
    assert tuple(tags[50713]) == (2, 2)
    assert tags[34665] == {"ExposureTime": (1, 4), "ISOSpeedRatings": 3200, "ExifVersion": "0230"}
    cm = np.array(tags[50721][0::2]) / np.array(tags[50721][1::2])
    np.testing.assert_allclose(cm.reshape(3, 3), DEFAULT_COLOR_MATRIX, atol=1e-9)


def test_scalar_black_and_default_matrix(tmp_path):
    path = tmp_path / "scalar.dng"
    cfa = np.random.default_rng(1).integers(0, 4096, (30, 40)).astype(np.uint16)
    write_dng(path, cfa, pattern="bggr", black_level=256, white_level=4095)
    with rawpy.imread(str(path)) as raw:
        assert raw.black_level_per_channel == [256] * 4 and raw.white_level == 4095
        np.testing.assert_array_equal(raw.raw_image_visible, cfa)
        assert raw.other.iso_speed == 0  # none written
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        cm = np.array(tags[50721].value[0::2]) / np.array(tags[50721].value[1::2])
        assert 34665 not in tags and 271 not in tags and tags[50708].value == "ExposureDiffusion"
    np.testing.assert_allclose(cm.reshape(3, 3), SRGB_COLOR_MATRIX, atol=1e-6)


def test_fractional_black_written_exactly(tmp_path):
    """DNG stores 512.5 exactly (RATIONAL); LibRaw keeps integer blacks and truncates."""
    path = tmp_path / "frac.dng"
    write_dng(path, np.full((24, 24), 1000, np.uint16), pattern="RGGB", black_level=(512.5, 510, 514, 508),
              white_level=16383)
    with tifffile.TiffFile(path) as tf:
        assert tf.pages[0].tags[50714].value[:2] == (1025, 2)
    with rawpy.imread(str(path)) as raw:
        assert raw.black_level_per_channel[0] == 512


def test_iso_above_65535(tmp_path):
    path = tmp_path / "hi.dng"
    make_bayer_dng(path, iso=204800)
    with rawpy.imread(str(path)) as raw:
        assert raw.other.iso_speed == 65535  # LibRaw reads only the saturated EXIF field
    assert read_raw(path).iso == 204800  # the reader falls back to EXIF ISOSpeed


def test_torch_input_and_non_ascii(tmp_path):
    path = tmp_path / "t.dng"
    cfa = torch.randint(0, 16383, (26, 34), dtype=torch.int32).to(torch.uint16)
    write_dng(path, cfa[:, :], pattern="GRBG", black_level=BLACK, white_level=16383, make="Léica", model="M")
    frame = read_raw(path)
    assert torch.equal(frame.cfa, cfa) and frame.pattern == "GRBG" and frame.make == "L?ica"


def test_frame_round_trip(tmp_path):
    """write_frame_dng keeps what read_raw found: the enhanced-output path of the engine."""
    src = tmp_path / "in.dng"
    make_bayer_dng(src, pattern="GBRG", height=40, width=52, as_shot_neutral=(0.4, 1.0, 0.8), iso=1600)
    frame = read_raw(src)
    new = torch.flip(frame.cfa.to(torch.int32), dims=(0,)).to(torch.uint16)  # "enhanced" pixels
    out = write_frame_dng(tmp_path / "out.dng", frame, cfa=new)
    back = read_raw(out)
    assert torch.equal(back.cfa, new)
    for field in ("pattern", "black_level", "white_level", "iso", "make", "model"):
        assert getattr(back, field) == getattr(frame, field), field
    assert back.exposure_time == pytest.approx(frame.exposure_time, rel=1e-6)
    np.testing.assert_allclose(back.wb_gains, frame.wb_gains, rtol=1e-6)
    np.testing.assert_allclose(back.color_matrix, frame.color_matrix, atol=1e-9)


# ----------------------------------------------------------------------------- atomic writes


def _no_temporaries(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("stage", ["tifffile", "exif", "fsync"])
def test_failed_write_leaves_existing_file(tmp_path, monkeypatch, stage):
    path = tmp_path / "keep.dng"
    make_bayer_dng(path, seed=3)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    if stage == "tifffile":  # fails after tifffile has started writing the temporary file
        real = tifffile.imwrite

        def partial(tmp, *args, **kwargs):
            real(tmp, *args, **kwargs)
            with open(tmp, "r+b") as f:
                f.truncate(100)
            boom()

        monkeypatch.setattr(dng.tifffile, "imwrite", partial)
    elif stage == "exif":
        monkeypatch.setattr(dng, "_append_exif_ifd", boom)
    else:
        monkeypatch.setattr(dng.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        make_bayer_dng(path, seed=4)
    assert path.read_bytes() == before
    assert _no_temporaries(tmp_path)


def test_interrupt_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dng, "_append_exif_ifd", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_bayer_dng(tmp_path / "new.dng")
    assert list(tmp_path.iterdir()) == []


def test_replaces_only_when_asked_and_respects_umask(tmp_path):
    path = tmp_path / "out.dng"
    make_bayer_dng(path, seed=1)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="out.dng already exists; pass overwrite=True"):
        write_dng(path, np.full((32, 32), 600, np.uint16), **GOOD)  # the library's default: refuse
    assert path.read_bytes() == before
    make_bayer_dng(path, seed=2, overwrite=True)
    assert path.read_bytes() != before
    assert _no_temporaries(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ----------------------------------------------------------------------------- refusals

GOOD = dict(pattern="RGGB", black_level=BLACK, white_level=16383)


@pytest.mark.parametrize("cfa, kwargs, message", [
    (np.zeros((21, 40), np.uint16), {}, "40x21 is too small for a DNG LibRaw reads"),
    (np.zeros((40, 21), np.uint16), {}, "21x40 is too small"),
    (np.zeros((32, 32), np.float32), {}, "cfa dtype float32; expected uint16"),
    (torch.zeros((32, 32)), {}, "cfa dtype torch.float32; expected uint16"),
    (np.zeros((2, 32, 32), np.uint16), {}, r"cfa shape \(2, 32, 32\); expected a 2-D"),
    ([[0] * 32] * 32, {}, "cfa must be a numpy array or torch tensor"),
    (np.zeros((32, 32), np.uint16), dict(pattern="RGBG"), "pattern 'RGBG' is not a 2x2 Bayer pattern"),
    (np.zeros((32, 32), np.uint16), dict(pattern=None), "pattern None"),
    (np.zeros((32, 32), np.uint16), dict(black_level=16383), r"black_level \(16383.0, .*below the white level 16383"),
    (np.zeros((32, 32), np.uint16), dict(black_level=-1), r"must be >= 0"),
    (np.zeros((32, 32), np.uint16), dict(black_level=(1, 2, 3)), "black_level must be 4 finite numbers"),
    (np.zeros((32, 32), np.uint16), dict(black_level=float("nan")), "black_level must be 4 finite numbers"),
    (np.zeros((32, 32), np.uint16), dict(white_level=70000), "white_level must be an integer in 1..65535"),
    (np.zeros((32, 32), np.uint16), dict(white_level=1023.5), "white_level must be an integer"),
    (np.zeros((32, 32), np.uint16), dict(color_matrix=np.eye(2)), "color_matrix must be 9 finite numbers"),
    (np.zeros((32, 32), np.uint16), dict(as_shot_neutral=(1, 0, 1)), "as_shot_neutral .* must be > 0"),
    (np.zeros((32, 32), np.uint16), dict(iso=0), "iso must be > 0"),
    (np.zeros((32, 32), np.uint16), dict(exposure_time=-1), "exposure_time must be > 0 seconds"),
    (np.zeros((32, 32), np.uint16), dict(exposure_time="fast"), "exposure_time must be a number"),
])
def test_refusals(tmp_path, cfa, kwargs, message):
    path = tmp_path / "bad.dng"
    with pytest.raises(InvalidRawError, match=re.escape(str(path)) + ": .*" + message):
        write_dng(path, cfa, **{**GOOD, **kwargs})
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary


def test_min_side_is_libraws(tmp_path, monkeypatch):
    """MIN_SIDE is LibRaw's own limit: one pixel less and rawpy refuses the file."""
    monkeypatch.setattr(dng, "MIN_SIDE", 1)
    for shape, readable in (((MIN_SIDE, MIN_SIDE), True), ((MIN_SIDE - 1, 40), False), ((40, MIN_SIDE - 1), False)):
        path = tmp_path / f"{shape[0]}x{shape[1]}.dng"
        write_dng(path, np.zeros(shape, np.uint16), **GOOD)
        if readable:
            with rawpy.imread(str(path)) as raw:
                assert raw.raw_image_visible.shape == shape
        else:
            with pytest.raises(rawpy.LibRawFileUnsupportedError):
                rawpy.imread(str(path))
