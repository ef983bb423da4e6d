"""engine.io.raw: reading Bayer frames from files, rawpy objects, numpy / torch / DLPack
arrays, batches, and refusing everything else with a message naming the input."""
import re
import types

import numpy as np
import pytest
import rawpy
import torch

import engine.io.raw as rawio
from engine.errors import InvalidRawError, RawDecodeError, RawInputError, UnsupportedSensorError
from engine.io.raw import PATTERNS, RawFrame, plane_sites, read_raw, read_raw_batch

from . import dngfactory as factory

BLACK = (512, 510, 514, 508)  # R, G1, B, G2
META = dict(pattern="RGGB", black_level=BLACK, white_level=16383)


def _planes(cfa, pattern):
    """Independent unpacking: the 4 planes R, G1, B, G2 by letter and row."""
    cfa = np.asarray(cfa)
    r_row, r_col = divmod(pattern.index("R"), 2)
    return [cfa[r_row::2, r_col::2], cfa[r_row::2, 1 - r_col::2],
            cfa[1 - r_row::2, 1 - r_col::2], cfa[1 - r_row::2, r_col::2]]


def test_plane_sites():
    assert plane_sites("RGGB") == (0, 1, 3, 2)
    assert plane_sites("BGGR") == (3, 2, 0, 1)
    assert plane_sites("GRBG") == (1, 0, 2, 3)
    assert plane_sites("GBRG") == (2, 3, 1, 0)
    for p in PATTERNS:  # G1 shares R's row, G2 shares B's row
        r, g1, b, g2 = plane_sites(p)
        assert p[r] == "R" and p[b] == "B" and p[g1] == p[g2] == "G"
        assert r // 2 == g1 // 2 and b // 2 == g2 // 2


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("pattern", PATTERNS)
def test_read_dng_all_patterns(tmp_path, pattern):
    path = tmp_path / f"{pattern}.dng"
    cfa = factory.make_bayer_dng(path, height=27, width=41, pattern=pattern, black_level=BLACK, iso=800,
                                 exposure_time=1 / 30, make="Sony", model="ILCE-7SM2",
                                 as_shot_neutral=(0.5, 1.0, 0.625), seed=7)
    for source in (path, str(path)):
        frame = read_raw(source)
        assert isinstance(frame.cfa, torch.Tensor) and frame.cfa.dtype == torch.uint16
        assert frame.cfa.is_contiguous() and frame.shape == (27, 41)
        np.testing.assert_array_equal(frame.cfa.numpy(), cfa)
        assert frame.pattern == pattern
        assert frame.black_level == BLACK  # R, G1, B, G2 whatever the pattern
        assert frame.white_level == 16383
        assert frame.iso == 800
        assert frame.exposure_time == pytest.approx(1 / 30, rel=1e-6)
        assert (frame.make, frame.model) == ("Sony", "ILCE-7SM2")
        np.testing.assert_allclose(frame.wb_gains, (2.0, 1.0, 1.6, 1.0), rtol=1e-6)
        np.testing.assert_allclose(frame.color_matrix, factory.DEFAULT_COLOR_MATRIX, atol=1e-9)
        assert frame.source == str(path)


def test_black_level_follows_the_planes(tmp_path):
    """A flat grey scene: each plane is exactly its own black + half the range."""
    for pattern in PATTERNS:
        path = tmp_path / f"{pattern}.dng"
        factory.make_bayer_dng(path, pattern=pattern, black_level=BLACK, white_level=4095,
                               scene=np.full((24, 30, 3), 0.5))
        frame = read_raw(path)
        for plane, black in zip(_planes(frame.cfa, frame.pattern), frame.black_level):
            assert np.all(plane == round(black + 0.5 * (4095 - black)))


@pytest.mark.parametrize("active_area", [(2, 0, 40, 50), (0, 3, 40, 49), (1, 1, 40, 50)])
def test_visible_area_and_its_pattern(tmp_path, active_area):
    """With masked margins, pixels and pattern are those of the visible area (as rawpy's own
    visible colour map has them), not of the full sensor."""
    path = tmp_path / "margins.dng"
    full = factory.active_area_dng(path, active_area)
    frame = read_raw(path)
    with rawpy.imread(str(path)) as raw:
        s = raw.sizes
        np.testing.assert_array_equal(frame.cfa.numpy(), full[s.top_margin:s.top_margin + s.height,
                                                              s.left_margin:s.left_margin + s.width])
        codes = raw.raw_colors_visible[:2, :2].reshape(-1)
        assert frame.pattern == "".join(raw.color_desc.decode()[c] for c in codes)
        assert frame.black_level == tuple(float(raw.black_level_per_channel[codes[s]])
                                          for s in plane_sites(frame.pattern))
    assert frame.wb_gains is None  # no AsShotNeutral in the file


def test_dng_colour_matrix_prefers_d65(tmp_path):
    """With ColorMatrix1 (illuminant A) and ColorMatrix2 (D65), the D65 one is reported."""
    path = tmp_path / "two.dng"
    cfa = np.random.default_rng(0).integers(600, 16000, (32, 32)).astype(np.uint16)
    as_srational = lambda m: tuple(v for x in np.ravel(m) for v in (int(round(x * 10000)), 10000))  # noqa: E731
    factory._raw_dng(path, cfa, 32803, [(33421, 3, 2, (2, 2), True), (33422, 1, 4, (0, 1, 1, 2), True),
                                        (50722, 10, 9, as_srational(np.diag([2.0, 1.0, 0.5])), True),
                                        (50779, 3, 1, 21, True)])
    np.testing.assert_allclose(read_raw(path).color_matrix, np.eye(3))  # both D65: the first wins
    factory._patch_tag_value(path, {50778: ("<H", 17)})  # ColorMatrix1 now for illuminant A
    np.testing.assert_allclose(read_raw(path).color_matrix, np.diag([2.0, 1.0, 0.5]))


def test_missing_metadata_is_none(tmp_path):
    path = tmp_path / "bare.dng"
    factory.make_bayer_dng(path, iso=None, exposure_time=None, make=None, model=None, as_shot_neutral=None)
    frame = read_raw(path)
    assert frame.iso is None and frame.exposure_time is None and frame.make is None and frame.wb_gains is None
    assert frame.model == "ExposureDiffusion"  # DNG UniqueCameraModel stands in


def test_overrides_and_contradiction(tmp_path):
    path = tmp_path / "o.dng"
    factory.make_bayer_dng(path, pattern="GRBG")
    frame = read_raw(path, iso=3200, black_level=500, white_level=15000, pattern="grbg")
    assert (frame.iso, frame.black_level, frame.white_level) == (3200, (500.0,) * 4, 15000)
    with pytest.raises(InvalidRawError, match=re.escape(str(path)) + ": pattern given as 'RGGB' but the file's CFA is 'GRBG'"):
        read_raw(path, pattern="RGGB")


def test_rawpy_object_stays_open_and_copy_is_private(tmp_path):
    path = tmp_path / "obj.dng"
    cfa = factory.make_bayer_dng(path, pattern="BGGR")
    with rawpy.imread(str(path)) as raw:
        frame = read_raw(raw)
        raw.raw_image_visible[:] = 0  # the caller's object is still usable...
    np.testing.assert_array_equal(frame.cfa.numpy(), cfa)  # ...and ours does not share its buffer
    assert frame.pattern == "BGGR" and frame.source == "rawpy.RawPy object" and frame.make is None


# ----------------------------------------------------------------------------- arrays


def test_numpy_zero_copy():
    a = np.random.default_rng(0).integers(0, 16383, (6, 8)).astype(np.uint16)
    frame = read_raw(a, pattern="gbrg", black_level=512, white_level=16383, iso=100)
    assert frame.cfa.data_ptr() == a.ctypes.data
    a[0, 0] = 1234
    assert int(frame.cfa[0, 0]) == 1234
    assert frame.pattern == "GBRG" and frame.black_level == (512.0,) * 4 and frame.iso == 100
    assert frame.source == "numpy array"


def test_numpy_views_torch_cannot_share_are_copied():
    a = np.arange(48, dtype=np.uint16).reshape(6, 8)
    flipped = read_raw(a[::-1], **META)
    np.testing.assert_array_equal(flipped.cfa.numpy(), a[::-1])
    ro = a.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(read_raw(ro, **META).cfa.numpy(), a)


def test_torch_zero_copy_keeps_strides():
    t = torch.randint(0, 16383, (10, 12), dtype=torch.int32).to(torch.uint16)
    view = t[:, 1:9]  # non-contiguous: kept as is (the kernels take any strides)
    frame = read_raw(view, pattern=np.array([[0, 1], [3, 2]]), black_level=torch.tensor(BLACK), white_level=16383)
    assert frame.cfa.data_ptr() == view.data_ptr() and frame.cfa.stride() == view.stride()
    assert frame.pattern == "RGGB" and frame.black_level == BLACK
    assert frame.source == "torch tensor on cpu"


class _ForeignArray:
    """Stands in for a CuPy / JAX array: only the DLPack protocol, no numpy or torch type."""

    def __init__(self, tensor):
        self._t = tensor

    def __dlpack__(self, **kwargs):
        return self._t.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


def test_dlpack_zero_copy():
    t = torch.randint(0, 16383, (8, 10), dtype=torch.int32).to(torch.uint16)
    frame = read_raw(_ForeignArray(t), **META)
    assert frame.cfa.data_ptr() == t.data_ptr()
    assert frame.source.endswith("._ForeignArray array")  # "<top-level module>.<type> array"
    with pytest.raises(InvalidRawError, match="_ForeignArray array: dtype torch.float32; expected uint16"):
        read_raw(_ForeignArray(torch.zeros(8, 10)), **META)


def test_cupy_zero_copy():
    cupy = pytest.importorskip("cupy", reason="cupy is an optional extra (pip install .[cupy12] or .[cupy13])")
    if not torch.cuda.is_available():
        pytest.skip("cupy needs a CUDA device")
    a = cupy.random.randint(0, 16383, (16, 24)).astype(cupy.uint16)
    frame = read_raw(a, **META)
    assert frame.cfa.is_cuda and frame.cfa.data_ptr() == a.data.ptr
    assert frame.source == "cupy.ndarray array"


def test_frame_to_device_and_repr():
    frame = read_raw(np.zeros((4, 6), np.uint16), **META)
    assert frame.to("cpu").cfa is frame.cfa
    assert repr(frame).startswith("RawFrame(cfa=<torch.uint16 (4, 6) on cpu>, pattern='RGGB'")


# ----------------------------------------------------------------------------- batches


def test_batch_of_files(tmp_path):
    paths = [tmp_path / f"{i}.dng" for i in range(3)]
    cfas = [factory.make_bayer_dng(p, pattern="GRBG", seed=i, black_level=500 + i, iso=100 * (i + 1)) for i, p in enumerate(paths)]
    batch = read_raw_batch(paths)
    assert len(batch) == 3 and batch.pattern == "GRBG"
    assert batch.cfa.shape == (3, 48, 64) and batch.cfa.dtype == torch.uint16
    np.testing.assert_array_equal(batch.cfa.numpy(), np.stack(cfas))
    assert batch.black_level.tolist() == [[500.0] * 4, [501.0] * 4, [502.0] * 4]
    assert batch.white_level.tolist() == [16383.0] * 3
    assert [f.iso for f in batch.frames] == [100, 200, 300]


def test_batch_from_one_array_is_zero_copy():
    a = np.random.default_rng(0).integers(0, 16383, (2, 6, 8)).astype(np.uint16)
    batch = read_raw_batch(a, **META)
    assert batch.cfa.data_ptr() == a.ctypes.data and len(batch) == 2
    assert batch.frames[1].cfa.data_ptr() == a[1].ctypes.data
    assert batch.frames[1].source == "numpy array[1]"
    one = read_raw_batch([np.zeros((4, 6), np.uint16)], **META)
    assert one.cfa.shape == (1, 4, 6)


def test_batch_refusals(tmp_path):
    a, b = tmp_path / "a.dng", tmp_path / "b.dng"
    factory.make_bayer_dng(a, height=24, width=30)
    factory.make_bayer_dng(b, height=26, width=30)
    with pytest.raises(InvalidRawError, match=r"batch of 2 frames: frames differ in size: frame 0 \(.*a\.dng\) has "
                                              r"30x24 pixels, frame 1 \(.*b\.dng\) has 30x26 pixels"):
        read_raw_batch([a, b])
    factory.make_bayer_dng(b, height=24, width=30, pattern="BGGR")
    with pytest.raises(InvalidRawError, match="frames differ in pattern: .* has RGGB, .* has BGGR"):
        read_raw_batch([a, b])
    with pytest.raises(InvalidRawError, match="batch of 0 frames: empty batch"):
        read_raw_batch([])
    with pytest.raises(InvalidRawError, match=r"numpy array: shape \(4, 6\): expected a 3-D \[B, H, W\]"):
        read_raw_batch(np.zeros((4, 6), np.uint16), **META)


# ----------------------------------------------------------------------------- refusals: files


def _bad(tmp_path, name, build):
    path = tmp_path / name
    build(path)
    return path


BAD_FILES = [
    ("empty.ARW", factory.empty_file, RawDecodeError, r"empty file \(0 bytes\)"),
    ("noise.NEF", factory.random_bytes_file, RawDecodeError, "not a raw file LibRaw can decode"),
    ("photo.ARW", factory.jpeg_as_raw, RawDecodeError, "this is a JPEG image, not a raw file"),
    ("fuji.dng", factory.xtrans_dng, UnsupportedSensorError, "X-Trans 6x6 colour filter array"),
    ("linear.dng", factory.linear_rgb_dng, UnsupportedSensorError, "linear / 3-channel raw data"),
    ("mono.dng", factory.monochrome_dng, UnsupportedSensorError, "monochrome sensor"),
    ("sigma.X3F", factory.foveon_x3f, UnsupportedSensorError, "Foveon X3F raw"),
    ("huge.dng", factory.absurd_dims_dng, InvalidRawError,
     "absurd dimensions in metadata: 20000x20000 pixels declared but the file holds only"),
]


@pytest.mark.parametrize("name, build, error, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files(tmp_path, name, build, error, message):
    path = _bad(tmp_path, name, build)
    with pytest.raises(error, match="^" + re.escape(str(path)) + ": .*" + message) as info:
        read_raw(path)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RawInputError)
    assert info.value.source == str(path)


@pytest.mark.parametrize("fraction", [0.98, 0.5, 0.05])
def test_truncated_file(tmp_path, fraction):
    good = tmp_path / "good.dng"
    factory.make_bayer_dng(good)
    path = factory.truncated_copy(good, tmp_path / "cut.dng", fraction)
    with pytest.raises(RawDecodeError, match=re.escape(str(path)) + ": truncated or unreadable raw file"):
        read_raw(path)


def test_corrupt_header(tmp_path):
    good = tmp_path / "good.dng"
    factory.make_bayer_dng(good)
    path = factory.corrupt_header(good, tmp_path / "bad.dng")
    with pytest.raises(RawDecodeError, match=re.escape(str(path)) + ": not a raw file LibRaw can decode"):
        read_raw(path)


def test_dimension_guard(tmp_path, monkeypatch):
    path = tmp_path / "big.dng"
    factory.make_bayer_dng(path, height=48, width=64)
    monkeypatch.setattr(rawio, "MAX_PIXELS", 48 * 64 - 1)
    with pytest.raises(InvalidRawError, match=re.escape(str(path)) + r": absurd dimensions in metadata: 64x48 pixels \(limits"):
        read_raw(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="raw file not found.*nope.ARW"):
        read_raw(tmp_path / "nope.ARW")
    with pytest.raises(RawDecodeError, match=re.escape(str(tmp_path)) + ": is a directory"):
        read_raw(tmp_path)


def test_libraw_errors_are_wrapped(monkeypatch, tmp_path):
    """Every LibRaw failure becomes a project exception naming the file."""
    path = tmp_path / "x.dng"
    factory.make_bayer_dng(path)
    cases = [(rawpy.LibRawTooBigError, InvalidRawError, "image too big"),
             (rawpy.LibRawDataError, RawDecodeError, "corrupt raw data"),
             (rawpy.LibRawUnsufficientMemoryError, RawDecodeError, "could not be decoded"),
             (rawpy.NotSupportedError, UnsupportedSensorError, "not supported by rawpy")]
    for raised, expected, message in cases:
        class FailingRaw:  # rawpy.RawPy is an extension type: swap it in rawio's view of rawpy
            def open_file(self, name, _e=raised):
                raise _e(b"simulated")

            def close(self):
                pass

        shim = types.SimpleNamespace(**{k: getattr(rawpy, k) for k in dir(rawpy) if not k.startswith("__")})
        shim.RawPy = FailingRaw
        monkeypatch.setattr(rawio, "rawpy", shim)
        with pytest.raises(expected, match=re.escape(str(path)) + f": .*{message}.*simulated"):
            read_raw(path)


# ----------------------------------------------------------------------------- refusals: arrays

ARRAY_CASES = [
    (np.zeros((8, 8), np.float32), META, "numpy array: dtype float32; expected uint16"),
    (np.zeros((8, 8), np.int32), META, "numpy array: dtype int32; expected uint16"),
    (np.zeros((8, 8), ">u2"), META, "numpy array: dtype >u2; expected uint16 DN in native byte order"),
    (torch.zeros(8, 8), META, "torch tensor on cpu: dtype torch.float32; expected uint16"),
    (torch.full((8, 8), float("nan")), META, "dtype torch.float32; expected uint16"),
    (np.zeros((2, 8, 8), np.uint16), META, r"shape \(2, 8, 8\): expected a 2-D \[H, W\] CFA mosaic; for several frames use read_raw_batch"),
    (np.zeros((8,), np.uint16), META, r"shape \(8,\): expected a 2-D"),
    (np.zeros((0, 8), np.uint16), META, r"zero-size array \(shape \(0, 8\)\)"),
    (np.zeros((1, 8), np.uint16), META, "frame 8x1 is smaller than one 2x2 CFA cell"),
    (np.zeros((8, 8), np.uint16), dict(pattern="RGGB"), "an array input needs its metadata: missing black_level, white_level"),
    (np.zeros((8, 8), np.uint16), {}, "missing pattern, black_level, white_level"),
    (np.zeros((8, 8), np.uint16), {**META, "black_level": 16383}, r"black level \(16383.0, .*\) must be below the white level 16383"),
    (np.zeros((8, 8), np.uint16), {**META, "black_level": (600, 600, 600, 20000)}, "must be below the white level"),
    (np.zeros((8, 8), np.uint16), {**META, "black_level": -1}, "must be >= 0"),
    (np.zeros((8, 8), np.uint16), {**META, "black_level": (1, 2)}, "black_level must be a number or 4 values .*got 2 values"),
    (np.zeros((8, 8), np.uint16), {**META, "black_level": float("nan")}, "black_level must be finite"),
    (np.zeros((8, 8), np.uint16), {**META, "white_level": 70000}, "white level 70000 is above the uint16 range"),
    (np.zeros((8, 8), np.uint16), {**META, "white_level": float("inf")}, "white_level must be a finite number > 0, got inf"),
    (np.zeros((8, 8), np.uint16), {**META, "pattern": "RGBG"}, "pattern 'RGBG' is not a 2x2 Bayer pattern"),
    (np.zeros((8, 8), np.uint16), {**META, "pattern": np.zeros((6, 6))}, "pattern must be one of"),
    (np.zeros((8, 8), np.uint16), {**META, "iso": 0}, "iso must be a finite number > 0, got 0"),
    (np.zeros((8, 8), np.uint16), {**META, "exposure_time": -0.1}, "exposure_time must be a finite number > 0, got -0.1"),
    (np.zeros((8, 8), np.uint16), {**META, "wb_gains": (2, 0, 1)}, "wb_gains .* must be > 0"),
    (np.zeros((8, 8), np.uint16), {**META, "color_matrix": np.eye(4)}, r"color_matrix must be 3x3"),
    ([[0, 1], [2, 3]], META, "list: unsupported input"),
]


@pytest.mark.parametrize("array, meta, message", ARRAY_CASES)
def test_bad_arrays(array, meta, message):
    with pytest.raises(InvalidRawError, match=message):
        read_raw(array, **meta)


def test_array_metadata_normalised():
    frame = read_raw(np.zeros((8, 8), np.uint16), **META, wb_gains=(4.0, 2.0, 3.0),
                     color_matrix=[1, 0, 0, 0, 2, 0, 0, 1, 8],
                     exposure_time=0.5, make=" Sony\x00", model=b"A7")
    assert frame.wb_gains == (2.0, 1.0, 1.5, 1.0)
    assert frame.color_matrix.shape == (3, 3) and frame.color_matrix[2, 2] == 8
    assert (frame.exposure_time, frame.make, frame.model) == (0.5, "Sony", "A7")


def test_rawframe_checks_direct_construction():
    with pytest.raises(InvalidRawError, match="mine: RawFrame.cfa must be a torch.Tensor"):
        RawFrame(cfa=np.zeros((4, 4), np.uint16), pattern="RGGB", black_level=0, white_level=1023, source="mine")
    with pytest.raises(InvalidRawError, match=r"RawFrame.cfa must be uint16 \[H, W\], got torch.int32"):
        RawFrame(cfa=torch.zeros(4, 4, dtype=torch.int32), pattern="RGGB", black_level=0, white_level=1023)


def test_errors_pickle():
    import pickle

    e = pickle.loads(pickle.dumps(RawDecodeError("a.ARW", "empty file (0 bytes)")))
    assert isinstance(e, RawDecodeError) and str(e) == "a.ARW: empty file (0 bytes)" and e.source == "a.ARW"
