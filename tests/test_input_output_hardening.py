"""Raw input and file writing, issue 22: a valid Blackmagic DNG refused (item 2), a raw with
no image data enhanced (item 3), and probe 2's classes A (data ending early), B (long
names), C (outputs that are inputs), E (a full disk), F (camera JSON bombs), J (names that
are not UTF-8), with hard-linked duplicates, unknown keywords and dangling output links."""
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rawpy
import torch

from engine import BackboneConfig, RawDecodeError, RawInputWarning, read_raw, save_checkpoint
from engine.io import atomic
from engine.io.dng import write_dng
from engine.io.paths import OutputPathError
from tests.dngfactory import (_tiff_dng, blackmagic_rows, dct_jpeg_encode, dct_tile_dng, ljpeg_encode, make_bayer_dng,
                              uncompressed_dng)

REPO = Path(__file__).resolve().parent.parent
MOSAIC = np.random.default_rng(0).integers(512, 16000, (48, 64)).astype(np.uint16)


def _scene12(h=64, w=96, seed=0, phase=0.0) -> np.ndarray:
    """A 12-bit mosaic with structure and noise (what a DCT codec meets in a raw)."""
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(seed).normal(0, 30, (h, w))
    wave = 800 * np.sin(x / 7.0 + phase) + 600 * np.cos(y / 5.0 + phase)
    return (1500 + wave + noise).clip(0, 4095).astype(np.uint16)


def _libraw(path) -> np.ndarray:
    with rawpy.imread(str(path)) as raw:
        return raw.raw_image_visible.astype(np.int64)


def _run(script: str, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def _checkpoint(path):
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    save_checkpoint(cfg.build(), cfg, path)
    return Path(path)


def _enhance(*args) -> subprocess.CompletedProcess:
    """The installed program (``python -m training``: every command) in a fresh process."""
    return subprocess.run([sys.executable, "-m", "training", "enhance", *map(str, args), "--ratio", "50", "--device",
                           "cpu", "--steps", "1", "--K", "1", "-q"], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


# ------------------------------------------------------------------ item 2: Blackmagic DCT tiles
def test_blackmagic_dct_tiles_are_read_as_libraw_decodes_them(tmp_path):
    """Compression 7 tiles of 12-bit extended-sequential DCT JPEG (SOF1), two tile rows per
    stream row: LibRaw decodes them right (within 1 DN of an independent inverse DCT of the
    stream's coefficients); refused before as "not a lossless JPEG stream"."""
    scene = _scene12()
    expected = dct_tile_dng(tmp_path / "bmd.dng", scene, tile=(32, 32))
    assert np.abs(_libraw(tmp_path / "bmd.dng") - expected).max() <= 1  # LibRaw's float IDCT vs ours
    assert np.abs(expected.astype(np.int64) - scene).max() <= 40  # lossy: within the quantisation's error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = read_raw(tmp_path / "bmd.dng")
    assert np.array_equal(frame.cfa.numpy().astype(np.int64), _libraw(tmp_path / "bmd.dng"))
    assert frame.white_level == 4095 and frame.black_level == (256.0,) * 4


def _sof1_strip(path, scene):
    """A SOF1 stream as one strip. LibRaw's DCT decoder places two rows per stream row only
    within a tile: in a strip it writes the even rows and leaves the odd ones as the memory
    was (zeros, or pixels of a buffer freed before: the test gives this case a scene of its
    own, which no earlier decode or array in the process held)."""
    stream, _ = dct_jpeg_encode(blackmagic_rows(scene))
    _tiff_dng(path, scene.shape[1], scene.shape[0], [stream], compression=7, bits=12, white=4095, black=256,
              rows_per_strip=scene.shape[0])


@pytest.mark.parametrize("write, reason", [
    (lambda p, s: dct_tile_dng(p, s, sof=0xFFC0), r"tile 0 is a baseline DCT \(SOF0\) JPEG"),
    (lambda p, s: dct_tile_dng(p, s, quant_bits=8), "an 8-bit quantisation table"),
    (lambda p, s: dct_tile_dng(p, s, layout="plain"), "a 32 x 32 stream for a 32 x 32 tile"),
    (lambda p, s: dct_tile_dng(p, s >> 4, precision=8), r"8-bit samples .*off by \+1920 DN"),
    (lambda p, s: dct_tile_dng(p, s, restart=4), "a restart interval of 4 blocks"),
    (_sof1_strip, r"the strip is an extended DCT \(SOF1\) JPEG: LibRaw decodes those only as tiles"),
], ids=["baseline-SOF0", "8-bit-DQT", "plain-layout", "8-bit-samples", "restart-markers", "SOF1-strip"])
def test_dct_streams_libraw_decodes_wrongly_are_refused(tmp_path, write, reason):
    """Each differs from the good file in one condition LibRaw's SOF1 decoder relies on; each
    is shown here to decode wrongly (or not at all) in LibRaw, so refusing it is right."""
    path = tmp_path / "odd.dng"
    scene = _scene12(seed=3, phase=np.pi) if write is _sof1_strip else _scene12()
    expected = write(path, scene)
    try:
        decoded = _libraw(path)
    except rawpy.LibRawError:
        decoded = None  # refused by LibRaw itself, with "data corrupted": not a reason a user can act on
    if decoded is not None and expected is not None:
        assert np.abs(decoded - expected).max() > 100
    elif decoded is not None:  # the strip: every other row never written
        assert np.abs(decoded - scene)[1::2].mean() > 300  # a right decode: within a few DN
    match = reason if reason.startswith("tile 0") or reason.startswith("the strip") else \
        r"tile 0 is an extended DCT JPEG \(SOF1\) with " + reason
    with pytest.raises(RawDecodeError, match=rf"odd.dng: {match}.*wrong pixels"):
        read_raw(path)


# ------------------------------------------------------------------ item 3: no image data
def test_a_raw_with_no_image_data_is_refused(tmp_path):
    """99.8% of the sites at 0 DN below a black level of 512 (a stripped RW2): refused, not
    enhanced into rings with a warning about the last rows."""
    stripped = np.zeros((48, 64), np.uint16)
    stripped[:2, :3] = 600  # the 0.2% left
    uncompressed_dng(tmp_path / "stripped.dng", stripped, black=512)
    with pytest.raises(RawDecodeError, match=r"stripped.dng: no image data: 99.8% of sites at 0 DN, below the black "
                                             r"level \(512 DN\).*refused above 50%"):
        read_raw(tmp_path / "stripped.dng")
    uncompressed_dng(tmp_path / "black.dng", np.zeros((48, 64), np.uint16), black=512)
    with pytest.raises(RawDecodeError, match="no image data: 100.0% of sites at 0 DN"):
        read_raw(tmp_path / "black.dng")


def test_zero_sites_below_the_stated_share_are_read(tmp_path):
    """40% of the sites at 0 DN (scattered dead sites, not a missing end) is below the share:
    read; a black level of 0 makes 0 DN an ordinary dark value: read."""
    dead = MOSAIC.copy()
    dead.reshape(-1)[np.random.default_rng(1).random(dead.size) < 0.4] = 0
    uncompressed_dng(tmp_path / "dead.dng", dead, black=512)
    assert np.array_equal(read_raw(tmp_path / "dead.dng").cfa.numpy(), dead)
    dark = np.where(np.random.default_rng(2).random((48, 64)) < 0.9, 0, 3).astype(np.uint16)
    uncompressed_dng(tmp_path / "dark.dng", dark, black=0)
    assert np.array_equal(read_raw(tmp_path / "dark.dng").cfa.numpy(), dark)


def test_input_warnings_show_no_engine_source_line(tmp_path):
    """A library user sees their own line; the program (and its worker processes) none:
    never a line of the engine (``return _read_rawpy(...)`` before)."""
    short = MOSAIC.copy()
    short[40:] = 0
    uncompressed_dng(tmp_path / "short.dng", short)
    script = tmp_path / "user.py"
    script.write_text(f"from engine import read_raw\nframe = read_raw({str(tmp_path / 'short.dng')!r})\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert f"{script}:2: RawInputWarning: {tmp_path / 'short.dng'}: the last 8 of 48 rows are all 0" in done.stderr
    assert "frame = read_raw(" in done.stderr and "engine" + os.sep not in done.stderr
    ckpt = _checkpoint(tmp_path / "m.pt")
    for workers in ("0", "1"):
        run = _enhance(tmp_path / "short.dng", "--checkpoint", ckpt, "-o", tmp_path / f"out{workers}",
                       "--workers", workers)
        assert run.returncode == 0, run.stderr
        assert "RawInputWarning: " + str(tmp_path / "short.dng") + ": the last 8 of 48 rows are all 0" in run.stderr
        assert "engine" + os.sep not in run.stderr and "_read_rawpy" not in run.stderr, run.stderr


# ------------------------------------------------------------------ class A: data ending early
def _short_stream_dng(path, rows_stored, rows_declared, width=64):
    """A lossless-JPEG DNG whose one strip holds ``rows_stored`` rows of data but whose SOF3
    header and tags declare ``rows_declared`` (the encoder stopped, or the header was patched)."""
    data = np.random.default_rng(0).integers(512, 16000, (rows_stored, width)).astype(np.uint16)
    stream = bytearray(ljpeg_encode(data))
    at = stream.index(b"\xff\xc3") + 5
    stream[at:at + 2] = rows_declared.to_bytes(2, "big")
    if width > 65535 or rows_declared > 65535:
        raise ValueError("a JPEG header holds 16-bit sizes")
    _tiff_dng(path, width, rows_declared, [bytes(stream)], compression=7, rows_per_strip=rows_declared)
    return data


def test_a_lossless_stream_ending_early_is_refused_with_how_much_is_missing(tmp_path):
    """10 of 64 declared rows: LibRaw fills the other 54 with one repeated value, silently."""
    data = _short_stream_dng(tmp_path / "short.dng", 10, 64)
    decoded = _libraw(tmp_path / "short.dng")
    assert np.array_equal(decoded[:10], data) and np.unique(decoded[11:]).size == 1  # what LibRaw does
    # The bound (every sample costs at least the shortest Huffman code, 5 bits here) is loose
    # for noisy data (18 bits a sample): "at most 34" of the 10 stored rows; exact, never wrong.
    with pytest.raises(RawDecodeError, match=r"short.dng: the strip ends early: its \d+ bytes of JPEG data hold at "
                                             r"most 34 of the 64 rows its header declares \(45% or more of the "
                                             r"image missing"):
        read_raw(tmp_path / "short.dng")


def test_a_huge_image_declared_by_a_small_file_is_refused_at_once(tmp_path):
    """A 23170 x 23170 lossless JPEG declared in ~530 KB (over the 1 byte per 1024 pixels the
    generic check asks): LibRaw took 20 s and 2.4 GB to return garbage. Refused from the
    stream's length before LibRaw allocates anything."""
    path = tmp_path / "huge.dng"
    side = 23170
    data = np.full((37, side), 1000, np.uint16)  # 37 rows of 5-bit codes: 536 KB
    stream = bytearray(ljpeg_encode(data))
    at = stream.index(b"\xff\xc3") + 5
    stream[at:at + 2] = side.to_bytes(2, "big")
    _tiff_dng(path, side, side, [bytes(stream)], compression=7, rows_per_strip=side)
    assert path.stat().st_size > side * side / 1024  # passes the generic bytes-per-pixel check
    start = time.perf_counter()
    assert path.stat().st_size < 540_000
    with pytest.raises(RawDecodeError, match=rf"huge.dng: the strip ends early: .* hold at most 37 of the {side} "
                                             r"rows its header declares \(99% or more"):
        read_raw(path)
    assert time.perf_counter() - start < 5


def test_a_strip_reaching_past_the_end_of_the_file_says_how_much_is_missing(tmp_path):
    uncompressed_dng(tmp_path / "good.dng", MOSAIC)  # the strip is the file's end
    data = (tmp_path / "good.dng").read_bytes()
    (tmp_path / "cut.dng").write_bytes(data[:len(data) - 1000])
    with pytest.raises(RawDecodeError, match=r"cut.dng: truncated or unreadable raw file: the strip ends 1000 bytes "
                                             r"past the end of the file .*1000 of 6144 bytes of image data \(16.3%\) "
                                             r"are missing"):
        read_raw(tmp_path / "cut.dng")


def test_trailing_rows_of_one_value_are_warned_about(tmp_path):
    """What a stream ending early decodes to when nothing in the headers shows it: rows of
    one repeated value. A warning with the count (the pixels alone are a sign, not proof);
    rows at the white level are a clipped highlight and pass quietly."""
    frozen = MOSAIC.copy()
    frozen[10:] = 9670
    uncompressed_dng(tmp_path / "frozen.dng", frozen)
    with pytest.warns(RawInputWarning, match=r"frozen.dng: the last 38 of 48 rows are all 9670: the raw data probably "
                                             r"ends early"):
        read_raw(tmp_path / "frozen.dng")
    clipped = MOSAIC.copy()
    clipped[40:] = 16383
    uncompressed_dng(tmp_path / "clipped.dng", clipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_raw(tmp_path / "clipped.dng")


# ------------------------------------------------------------------ class B: long names
def test_temporary_names_fit_whatever_the_name(tmp_path):
    """Names of 238..255 bytes (ASCII and two-byte UTF-8): "File name too long" before, from
    the temporary name ``.<name>.<12 hex>.tmp`` (18 bytes longer)."""
    for name in ("d" * 251 + ".dng", "é" * 125 + ".dng", "x" * 234 + ".dng"):
        assert len(name.encode()) >= 238
        write_dng(tmp_path / name, MOSAIC, pattern="RGGB", black_level=512, white_level=16383)
        assert read_raw(tmp_path / name).shape == (48, 64)
    from kernels.profiles import load_profile

    long_profile = tmp_path / ("c" * 250 + ".json")
    load_profile("SonyA7S2").save(long_profile)
    assert load_profile(long_profile).Kmin == load_profile("SonyA7S2").Kmin
    assert sorted(len(p.name.encode()) for p in tmp_path.iterdir()) == [238, 254, 255, 255]  # no temporary left


def test_stale_temporaries_of_long_names_are_found(tmp_path):
    target = tmp_path / ("e" * 250 + ".pt")
    prefix = atomic.temporary_prefix(target.name, tmp_path)
    stale = tmp_path / f"{prefix}0123456789ab.tmp"
    stale.write_bytes(b"partial")
    assert len(stale.name.encode()) == 255
    assert atomic.remove_stale_temporaries(target) == [stale] and not stale.exists()


def test_enhance_writes_outputs_with_long_names(tmp_path):
    src = tmp_path / ("f" * 245 + ".dng")
    make_bayer_dng(src, height=32, width=48)
    ckpt = _checkpoint(tmp_path / "m.pt")
    run = _enhance(src, "--checkpoint", ckpt, "-o", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["f" * 245 + ".png"]


# ------------------------------------------------------------------ class C: outputs that are inputs
def test_save_after_chdir_never_replaces_the_raw(tmp_path, monkeypatch):
    """A frame read by a relative path, saved after ``os.chdir`` onto the raw's full path with
    overwrite=True: the check compared the relative source against the new folder, and the
    raw was replaced. The file's identity is taken when it is read."""
    from tests.helpers import small_cpu_pipeline

    (tmp_path / "photos").mkdir()
    (tmp_path / "elsewhere").mkdir()
    raw = tmp_path / "photos" / "in.dng"
    make_bayer_dng(raw, height=32, width=48)
    before = raw.read_bytes()
    monkeypatch.chdir(tmp_path / "photos")
    result = small_cpu_pipeline()("in.dng", ratio=50, steps=1, seed=0)
    monkeypatch.chdir(tmp_path / "elsewhere")
    for fmt in ("dng", "png"):
        with pytest.raises(OutputPathError, match=rf"would overwrite the input {raw}"):
            result.save(raw, format=fmt, overwrite=True)
    os.link(raw, tmp_path / "elsewhere" / "alias.dng")  # a hard link made after the read
    with pytest.raises(OutputPathError, match="would overwrite the input"):
        result.save("alias.dng", overwrite=True)
    assert raw.read_bytes() == before
    result.save("in.dng")  # a different in.dng (the working folder's): fine
    assert (tmp_path / "elsewhere" / "in.dng").read_bytes() != before


def test_writers_check_the_inputs_again_when_the_file_takes_its_name(tmp_path):
    """The output name comes to reach an input while the file is being made (a symlink made
    by another process): refused at the rename, the input intact, no temporary left."""
    raw = tmp_path / "in.dng"
    raw.write_bytes(b"the raw")
    out = tmp_path / "out.dng"
    with pytest.raises(OutputPathError, match=f"the output {out} would overwrite the input {raw}"):
        with atomic.atomic_path(out, overwrite=True, protect=[raw]) as tmp:
            tmp.write_bytes(b"enhanced")
            os.symlink(raw, out)
    assert raw.read_bytes() == b"the raw" and sorted(p.name for p in tmp_path.iterdir()) == ["in.dng", "out.dng"]


def test_calibrate_never_writes_onto_its_input_frames(tmp_path):
    """``calibrate(out=<a bias raw>, overwrite=True)`` (the library: the command line checks
    its options itself): refused before a frame is read, for the profile and the report."""
    from engine.calibration import calibrate

    bias = [tmp_path / f"bias{i}.dng" for i in range(2)]
    flats = [tmp_path / f"flat{i}.dng" for i in range(2)]
    for i, p in enumerate(bias + flats):
        make_bayer_dng(p, height=32, width=48, seed=i)
    before = bias[0].read_bytes()
    os.link(bias[1], tmp_path / "hard.dng")
    for kw in (dict(out=bias[0]), dict(out=tmp_path / "p.json", report=flats[1]), dict(out=tmp_path / "hard.dng")):
        with pytest.raises(OutputPathError, match="would overwrite the input frame"):
            calibrate(bias, flats, overwrite=True, **kw)
    assert bias[0].read_bytes() == before and not (tmp_path / "p.json").exists()


def test_export_never_replaces_the_checkpoint_it_reads(tmp_path):
    from engine import export_public, load_checkpoint

    ckpt = _checkpoint(tmp_path / "m.pt")
    before = ckpt.read_bytes()
    model, _, _ = load_checkpoint(ckpt)
    os.link(ckpt, tmp_path / "hard.pt")
    for target in (ckpt, tmp_path / "hard.pt"):
        with pytest.raises(OutputPathError, match="would overwrite the input"):
            export_public(model, target, overwrite=True, protect=[ckpt])
    assert ckpt.read_bytes() == before


# ------------------------------------------------------------------ class E: a full disk
def _limited(body: str, limit: int) -> str:
    """``body`` in a process whose files may not grow past ``limit`` bytes: write() fails
    part-way with EFBIG, as it does with ENOSPC on a full disk (NOTES.md)."""
    return textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    """) + textwrap.dedent(body)


def test_disk_full_writing_a_dng_says_so(tmp_path):
    """tifffile's numpy writes lose the error number ("98304 requested and 61104 written")."""
    out = tmp_path / "big.dng"
    done = _run(_limited(f"""
        import numpy as np
        from engine.io.dng import write_dng
        try:
            write_dng({str(out)!r}, np.full((160, 240), 700, np.uint16), pattern="RGGB", black_level=512,
                      white_level=16383)
        except OSError as e:
            print(type(e).__name__, e.errno, e)
    """, 50_000))
    assert done.returncode == 0, done.stderr
    assert f"DiskFullError 27 disk full (or file size limit) writing {out}: File too large" in done.stdout
    assert "requested and" not in done.stdout and list(tmp_path.iterdir()) == []


def test_disk_full_writing_a_checkpoint_or_an_export_says_so(tmp_path):
    """torch's zip writer: "[enforce fail at inline_container.cc:672]" before."""
    ckpt = _checkpoint(tmp_path / "m.pt")
    done = _run(_limited(f"""
        import torch
        from engine import BackboneConfig, save_checkpoint
        cfg = BackboneConfig(options={{"widths": (8, 8, 16, 16, 16)}})
        try:
            save_checkpoint(cfg.build(), cfg, {str(tmp_path / 'new.pt')!r})
        except OSError as e:
            print(type(e).__name__, e)
        from training.cli import main
        sys.exit(main(["export", "--checkpoint", {str(ckpt)!r}, "--public", {str(tmp_path / 'public.pt')!r}]))
    """, 100_000))
    assert f"DiskFullError disk full (or file size limit) writing {tmp_path / 'new.pt'}" in done.stdout
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"error: disk full (or file size limit) writing {tmp_path / 'public.pt'}" in done.stderr
    assert "inline_container" not in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_disk_full_during_training_says_so(tmp_path):
    out = tmp_path / "run"
    done = _run(_limited(f"""
        from training.cli import main
        sys.exit(main(["train", "--out", {str(out)!r}, "--patch", "32", "--batch", "2", "--widths", "8", "8", "16",
                       "16", "16", "--steps", "1", "--epochs", "1", "--iters-per-epoch", "2", "--save-every", "1",
                       "-q"]))
    """, 100_000))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"error: disk full (or file size limit) writing {out}" in done.stderr
    assert "inline_container" not in done.stderr


# ------------------------------------------------------------------ class F: camera JSON bombs
@pytest.mark.parametrize("content, reason", [
    ("[" * 100_000 + "]" * 100_000, r"JSON nested 100000 levels deep \(at most 16"),
    ('{"a": {"Kmin": ' + "7" * 5000 + "}}", "not a profile: an integer of 5000 digits"),
], ids=["nested-100000-deep", "5000-digit-integer"])
def test_camera_json_bombs_name_the_file(tmp_path, content, reason):
    from engine import Pipeline
    from engine.camera import resolve_gain
    from kernels.profiles import load_profile

    path = tmp_path / "cam.json"
    path.write_text(content)
    message = rf"camera profile file {path}: {reason}"
    with pytest.raises(ValueError, match=message):
        load_profile(path)
    with pytest.raises(ValueError, match=message):
        resolve_gain(iso=800, camera=str(path))
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    with pytest.raises(ValueError, match=message):
        Pipeline(cfg.build(), cfg, device="cpu", precision="fp32", camera=str(path))(
            MOSAIC, pattern="RGGB", black_level=512, white_level=16383, iso=800, ratio=10, steps=1)


def test_camera_json_bombs_on_the_command_line(tmp_path):
    path = tmp_path / "cam.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    raw = tmp_path / "x.dng"
    make_bayer_dng(raw, height=32, width=48)
    ckpt = _checkpoint(tmp_path / "m.pt")
    run = _enhance(raw, "--checkpoint", ckpt, "-o", tmp_path / "out", "--camera", path)
    assert run.returncode != 0 and "Traceback" not in run.stderr and "RecursionError" not in run.stderr
    assert f"camera profile file {path}: JSON nested 100000 levels deep" in run.stderr
    train = subprocess.run([sys.executable, "-m", "training", "train", "--out", str(tmp_path / "run"), "--camera",
                            str(path), "--steps", "1", "--epochs", "1", "-q"], capture_output=True, text=True,
                           timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert train.returncode == 2 and "Traceback" not in train.stderr, train.stderr
    assert f"camera profile file {path}: JSON nested 100000 levels deep" in train.stderr


# ------------------------------------------------------------------ class J: names that are not UTF-8
@pytest.mark.skipif(sys.platform != "linux", reason="Linux file names are bytes; macOS requires UTF-8")
def test_a_file_name_that_is_not_utf8_is_read(tmp_path):
    """``caf\\xe9.dng`` (Latin-1): rawpy raised UnicodeEncodeError encoding the path."""
    make_bayer_dng(tmp_path / "plain.dng")
    latin = os.fsencode(tmp_path) + b"/caf\xe9.dng"
    with open(latin, "wb") as f:
        f.write((tmp_path / "plain.dng").read_bytes())
    expected = read_raw(tmp_path / "plain.dng")
    for name in (latin, os.fsdecode(latin), Path(os.fsdecode(latin))):
        frame = read_raw(name)
        assert torch.equal(frame.cfa, expected.cfa) and frame.iso == expected.iso and frame.make == expected.make
        assert frame.source == os.fsdecode(latin)
    ckpt = _checkpoint(tmp_path / "m.pt")
    run = _enhance(os.fsdecode(latin), "--checkpoint", ckpt, "-o", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert os.listdir(os.fsencode(tmp_path / "out")) == [b"caf\xe9.png"]


# ------------------------------------------------------------------ also
def test_a_hard_linked_duplicate_input_is_refused(tmp_path):
    raw = tmp_path / "x.dng"
    make_bayer_dng(raw, height=32, width=48)
    os.link(raw, tmp_path / "y.dng")
    run = _enhance(raw, tmp_path / "y.dng", "--checkpoint", _checkpoint(tmp_path / "m.pt"), "-o", tmp_path / "out")
    assert run.returncode == 2
    assert f"{tmp_path / 'y.dng'} is listed more than once (also as {raw}) (a hard link to the same file)" in run.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_keywords_of_read_raw_say_which_it_takes(tmp_path):
    make_bayer_dng(tmp_path / "x.dng")
    with pytest.raises(TypeError, match=r"read_raw\(\) got unknown keyword argument\(s\) 'K', 'blacklevel' \(did you "
                                        r"mean 'black_level'\?\); it takes the source and the keywords pattern, "
                                        r"black_level, white_level"):
        read_raw(tmp_path / "x.dng", blacklevel=512, K=1.0)
    from engine import read_raw_batch

    with pytest.raises(TypeError, match=r"read_raw_batch\(\) got unknown keyword argument\(s\) 'ratio'"):
        read_raw_batch([tmp_path / "x.dng"], ratio=100)


def test_output_folder_that_is_a_dangling_symlink_says_so(tmp_path):
    raw = tmp_path / "x.dng"
    make_bayer_dng(raw, height=32, width=48)
    os.symlink(tmp_path / "gone", tmp_path / "out")
    run = _enhance(raw, "--checkpoint", _checkpoint(tmp_path / "m.pt"), "-o", tmp_path / "out")
    assert run.returncode == 2 and "File exists" not in run.stderr
    assert f"output folder {tmp_path / 'out'} is a symlink to {tmp_path / 'gone'}, which does not exist" in run.stderr
