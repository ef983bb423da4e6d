"""Files that used to give confusing errors or silent garbage (issue 15, items 8 and 9):
camera profile files that are not profiles, unusable DNG colour matrices, floating-point,
signed, lossy-JPEG and mis-declared lossless-JPEG DNGs, frames whose data ends early."""
import warnings

import numpy as np
import pytest
import torch

from engine import InvalidRawError, RawDecodeError, RawFrame, RawInputWarning, read_raw
from engine.io.dng import write_dng
from engine.io.output import save_output
from kernels.profiles import load_profile
from tests.dngfactory import (ljpeg_dng, lossy_jpeg_dng, make_bayer_dng, patch_color_matrix, sample_format_dng,
                              uncompressed_dng)

MOSAIC = np.random.default_rng(0).integers(512, 16000, (48, 64)).astype(np.uint16)


# ------------------------------------------------------------------ item 8: camera profile files
PROFILE = ('{"a": {"Kmin": 1, "Kmax": 2, "G_shape": [0.1], "Profile-1": {"g_scale": {"slope": 1, "bias": 0, '
           '"sigma": 0}, "G_scale": {"slope": 1, "bias": 0, "sigma": 0}, "R_scale": {"slope": 1, "bias": 0, "sigma": 0}}'
           '%s}}')


@pytest.mark.parametrize("content, reason", [
    (b"root:x:0:0:root:/root:/bin/bash\n", r"not valid JSON \(Expecting value at line 1, column 1\); expected a "
                                           r"profile in the shipped cameras.json format"),
    (bytes(range(256)), "not a text file"),
    (b"[1, 2]", "holds neither a camera profile object nor a {name: profile} mapping"),
    (b'{"Kmin": 1}', "lacks key 'Profile-1'"),
    ((PROFILE % ', "color_bias": [1, 2]').encode(), "malformed color_bias"),
    ((PROFILE % ', "Kmax": "fast"').encode(), "malformed value"),
])
def test_camera_files_that_are_not_profiles_name_the_file(tmp_path, content, reason):
    path = tmp_path / "mycam.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_etc_passwd_as_camera(tmp_path):
    from engine.camera import resolve_gain

    with pytest.raises(ValueError, match=r"camera profile file /etc/passwd: not valid JSON"):
        resolve_gain(iso=800, camera="/etc/passwd")


@pytest.mark.parametrize("fail_at", ["to_dict", "fsync"])
def test_interrupted_profile_save_keeps_the_previous_file(tmp_path, monkeypatch, fail_at):
    """CameraProfile.save writes atomically: a failure (or Ctrl-C) half-way leaves the
    user's previous profile intact and no temporary file behind."""
    import kernels.profiles as profiles

    path = tmp_path / "mycam.json"
    load_profile("SonyA7S2").save(path)
    before = path.read_bytes()

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    if fail_at == "to_dict":
        monkeypatch.setattr(profiles.CameraProfile, "to_dict", interrupt)
    else:
        monkeypatch.setattr(profiles.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_profile("NikonD850").save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["mycam.json"]


# ------------------------------------------------------------------ item 8: colour matrices
@pytest.mark.parametrize("matrix, problem", [
    (np.zeros((3, 3)), "all zeros"),
    ([[1, 0, 0], [1, 0, 0], [0, 0, 1]], "singular|not positive"),  # rank 2
    ([[0.5, 0.2, 0.1], [1.0, 0.4, 0.2], [0.1, 0.1, 0.9]], "singular"),  # row 2 = 2 x row 1
])
def test_unusable_dng_colour_matrix_is_ignored_at_read_with_a_warning(tmp_path, matrix, problem):
    path = tmp_path / "bad_matrix.dng"
    make_bayer_dng(path)
    patch_color_matrix(path, matrix)
    with pytest.warns(RawInputWarning, match=rf"bad_matrix.dng: the file's ColorMatrix is unusable \(({problem})"):
        frame = read_raw(path)
    if frame.color_matrix is not None:  # LibRaw's own matrix for the camera, when it has a usable one
        from engine.camera import colour_matrix_problem

        assert colour_matrix_problem(frame.color_matrix) is None
    raw = torch.rand(4, 24, 32)
    for fmt in ("png", "tiff", "dng"):  # renders and writes: no bare ValueError at save time
        assert save_output(tmp_path / f"out.{fmt}", raw, frame).is_file()


def test_unusable_colour_matrix_given_by_the_user_is_refused(tmp_path):
    with pytest.raises(InvalidRawError, match=r"numpy array: color_matrix \(XYZ -> camera\) cannot colour an image: "
                                              r"all zeros"):
        read_raw(MOSAIC, pattern="RGGB", black_level=512, white_level=16383, color_matrix=np.zeros((3, 3)))
    with pytest.raises(InvalidRawError, match="cannot colour an image: singular"):
        RawFrame(cfa=torch.from_numpy(MOSAIC), pattern="RGGB", black_level=512, white_level=16383,
                 color_matrix=[[0.5, 0.2, 0.1], [1.0, 0.4, 0.2], [0.1, 0.1, 0.9]], source="x")
    with pytest.raises(InvalidRawError, match=r"out.dng: color_matrix \(XYZ -> camera\) cannot colour an image"):
        write_dng(tmp_path / "out.dng", MOSAIC, pattern="RGGB", black_level=512, white_level=16383,
                  color_matrix=np.zeros((3, 3)))
    assert not (tmp_path / "out.dng").exists()


# ------------------------------------------------------------------ items 8, 9: encodings
@pytest.mark.parametrize("write, reason", [
    (lambda p: sample_format_dng(p, np.random.default_rng(0).random((32, 48)).astype(np.float32)),
     r"floating-point raw samples \(SampleFormat 3, e.g. a merged HDR DNG\) are not supported"),
    (lambda p: sample_format_dng(p, np.full((32, 48), -1000, np.int16)),
     r"signed integer raw samples \(SampleFormat 2\) are not supported: LibRaw reads them as unsigned "
     r"\(-1000 becomes 64536\)"),
    (lossy_jpeg_dng, r"lossy JPEG-compressed raw data \(Compression 34892\) is not supported"),
    (lambda p: ljpeg_dng(p, MOSAIC, strips=3),
     "lossless-JPEG raw data in 3 strips is not supported: LibRaw decodes only the first strip"),
    (lambda p: ljpeg_dng(p, MOSAIC, declared_height=64),
     "the strip holds a lossless JPEG of 48 x 64 samples but the tags declare 64 x 64"),
    (lambda p: ljpeg_dng(p, MOSAIC, tile=(32, 32), declared_height=96),
     r"4 JPEG tiles stored but the declared 64x96 image needs 6 tiles of 32x32"),
])
def test_encodings_libraw_misreads_are_refused_with_the_reason(tmp_path, write, reason):
    path = tmp_path / "odd.dng"
    write(path)
    with pytest.raises(RawDecodeError, match=rf"odd.dng: {reason}|odd.dng: .*{reason}"):
        read_raw(path)


@pytest.mark.parametrize("layout", [dict(strips=1), dict(tile=(32, 32)), dict(tile=(16, 48))])
def test_lossless_jpeg_layouts_libraw_reads_correctly_are_accepted(tmp_path, layout):
    """The baselines: single-strip and tiled lossless JPEG decode to the exact mosaic."""
    ljpeg_dng(tmp_path / "ok.dng", MOSAIC, **layout)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = read_raw(tmp_path / "ok.dng")
    assert np.array_equal(frame.cfa.numpy(), MOSAIC)


def test_all_zero_frame_warns_when_the_black_level_is_0(tmp_path):
    """(With a black level above 0 such a frame is refused: test_input_output_hardening.)"""
    uncompressed_dng(tmp_path / "black.dng", np.zeros_like(MOSAIC), black=0)
    with pytest.warns(RawInputWarning, match=r"black.dng: every pixel of the 64x48 frame is 0"):
        read_raw(tmp_path / "black.dng")


def test_rows_ending_early_warn(tmp_path):
    short = MOSAIC.copy()
    short[40:] = 0
    uncompressed_dng(tmp_path / "short.dng", short)
    with pytest.warns(RawInputWarning, match=r"short.dng: the last 8 of 48 rows are all 0: the raw data probably "
                                             r"ends early"):
        read_raw(tmp_path / "short.dng")


def test_ordinary_files_give_no_warning(tmp_path):
    dark = MOSAIC.copy()
    dark[-1] = 0  # one zero row (a dead sensor row) is not "ending early"
    uncompressed_dng(tmp_path / "a.dng", dark)
    make_bayer_dng(tmp_path / "b.dng")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_raw(tmp_path / "a.dng")
        read_raw(tmp_path / "b.dng")
