"""training data: the SID layout on DNGs written here, the uint16 caches, the batched
augmentation's Bayer semantics, sRGB photos -> raw, procedural scenes, mixing and loaders."""
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import engine.io.raw as rawio
from engine.camera import camera_to_srgb
from kernels import pack_bayer_reference, render_srgb_reference
from training.augment import apply_dihedral, augment_and_normalise, normalise_packed, random_dihedral
from training.data import (EpochTaggedSampler, MixedPatchDataset, build_training_dataset, make_patch_loader)
from training.patches import DataWarning, EmptyDatasetError, PackedBatch, collate_patches, pack_dn
from training.sid import SIDLongDataset, SIDPairDataset, collate_pairs, exposure_from_name, read_sid_list
from training.synthetic import (SONY_A7S2_XYZ_TO_CAMERA, ProceduralSceneDataset, SRGBFolderDataset, srgb_to_linear,
                                srgb_to_packed_raw, synthetic_holdout)

from . import dngfactory as factory

BLACK = (512, 510, 514, 508)  # R, G1, B, G2
PATCH = 16  # packed; the DNGs are 48 x 64 sensor pixels = 24 x 32 packed


def _dng(path, seed, *, height=48, width=64, pattern="RGGB", exposure_time=10.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    return factory.make_bayer_dng(path, height=height, width=width, pattern=pattern, black_level=BLACK,
                                  exposure_time=exposure_time, seed=seed)


@pytest.fixture
def sid(tmp_path):
    """A tiny SID layout: two scenes (RGGB and BGGR), three short exposures, one list file."""
    root = tmp_path / "SID"
    mosaics = {
        "long1": _dng(root / "Sony/long/00001_00_10s.ARW", 1),
        "long2": _dng(root / "Sony/long/00002_00_10s.ARW", 2, pattern="BGGR"),
        "s1": _dng(root / "Sony/short/00001_00_0.1s.ARW", 11, exposure_time=0.1),
        "s2": _dng(root / "Sony/short/00001_01_0.04s.ARW", 12, exposure_time=0.04),
        "s3": _dng(root / "Sony/short/00002_00_0.01s.ARW", 13, pattern="BGGR", exposure_time=0.01),
    }
    (root / "Sony_train_list.txt").write_text(
        "./Sony/short/00001_00_0.1s.ARW ./Sony/long/00001_00_10s.ARW ISO200 F8\n"
        "./Sony/short/00001_01_0.04s.ARW ./Sony/long/00001_00_10s.ARW ISO250 F8\n"
        "\n"
        "./Sony/short/00002_00_0.01s.ARW ./Sony/long/00002_00_10s.ARW ISO3200 F4.5\n")
    return root, mosaics


@pytest.fixture
def decodes(monkeypatch):
    """Counts every raw decode (the datasets call engine.io.raw.read_raw at call time)."""
    calls = []
    real = rawio.read_raw

    def counting(source, *a, **k):
        calls.append(os.fspath(source))
        return real(source, *a, **k)

    monkeypatch.setattr(rawio, "read_raw", counting)
    return calls


def _windows(packed, patch):
    """Every patch x patch window of packed [4, h, w] -> {(top, left): window}."""
    h, w = packed.shape[1:]
    return {(t, l): packed[:, t : t + patch, l : l + patch] for t in range(h - patch + 1) for l in range(w - patch + 1)}


def _is_window(crop, packed):
    return any(torch.equal(crop, win) for win in _windows(packed, crop.shape[-1]).values())


# ----------------------------------------------------------------------------- list files


def test_list_file_and_exposure_names(sid, tmp_path):
    root, _ = sid
    assert exposure_from_name("./Sony/short/00001_00_0.04s.ARW") == 0.04
    assert exposure_from_name("00001_00_10s.ARW") == 10.0
    assert exposure_from_name("00001_00.ARW") is None
    (root / "bad_list.txt").write_text("# a comment\n./Sony/short/only_one_path.ARW\n"
                                       f"{root}/Sony/short/00001_00_0.1s.ARW ./Sony/long/00001_00_10s.ARW\n")
    entries, problems = read_sid_list(root, ["Sony_train_list.txt", "bad_list.txt"])
    assert len(entries) == 4 and len(problems) == 1 and "malformed row" in problems[0][1]
    assert entries[0].short == os.path.normpath(root / "Sony/short/00001_00_0.1s.ARW")  # relative to the root
    assert entries[2].iso == 3200 and entries[2].fnumber == 4.5
    assert entries[3].iso is None and entries[3].long == entries[0].long
    with pytest.raises(FileNotFoundError, match="list file not found"):
        read_sid_list(root, "nope.txt")


# ----------------------------------------------------------------------------- long exposures + caches


def test_long_exposures_decoded_once_in_memory(sid, decodes):
    root, m = sid
    ds = SIDLongDataset(root, "Sony_train_list.txt", patch=PATCH, cache="memory", repeat=3, seed=5)
    assert len(decodes) == 2 and ds.cache.decodes == 2  # two distinct long files, three rows
    assert len(ds) == 6 and ds.skipped == []
    full = {os.path.basename(f): ds.cache.full(f) for f in ds.files}
    assert all(t.dtype == torch.uint16 and t.shape == (4, 24, 32) for t in full.values())
    assert torch.equal(full["00001_00_10s.ARW"], pack_dn(torch.from_numpy(m["long1"]), "RGGB"))
    assert torch.equal(full["00002_00_10s.ARW"], pack_dn(torch.from_numpy(m["long2"]), "BGGR"))
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            it = ds[i]
            assert it["raw"].dtype == torch.uint16 and it["raw"].shape == (4, PATCH, PATCH)
            assert _is_window(it["raw"], full[os.path.basename(it["source"])])
            assert it["black"].tolist() == list(BLACK) and it["white"] == 16383 and it["index"] == i
            assert it["exposure_time"] == 10.0
    assert len(decodes) == 2  # crops never decode again
    # A sample is a function of (seed, epoch, index): explicit pairs, set_epoch, a new dataset.
    ds.set_epoch(1)
    again = SIDLongDataset(root, "Sony_train_list.txt", patch=PATCH, repeat=3, seed=5)
    assert all(torch.equal(ds[i]["raw"], ds[(1, i)]["raw"]) and torch.equal(ds[i]["raw"], again[(1, i)]["raw"])
               for i in range(len(ds)))
    assert any(not torch.equal(ds[(0, i)]["raw"], ds[(1, i)]["raw"]) for i in range(len(ds)))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_disk_cache_is_reused_and_rebuilt_when_stale(sid, decodes, tmp_path):
    root, _ = sid
    cache_dir = tmp_path / "cache"
    first = SIDLongDataset(root, "Sony_train_list.txt", patch=PATCH, cache="disk", cache_dir=cache_dir)
    assert len(decodes) == 2
    npys = sorted(cache_dir.glob("*.npy"))
    assert len(npys) == 2 and len(list(cache_dir.glob("*.json"))) == 2 and not list(cache_dir.glob(".*tmp"))
    arr = np.load(npys[0])
    assert arr.dtype == np.uint16 and arr.shape == (4, 24, 32)

    second = SIDLongDataset(root, "Sony_train_list.txt", patch=PATCH, cache="disk", cache_dir=cache_dir)
    assert len(decodes) == 2 and second.cache.decodes == 0  # read from the disk cache, nothing decoded
    assert all(torch.equal(first[i]["raw"], second[i]["raw"]) for i in range(len(first)))
    assert [i.black for i in second.infos] == [i.black for i in first.infos]

    # Replace one long exposure: its cache entry no longer matches (mtime, size) and is rebuilt.
    path = root / "Sony/long/00001_00_10s.ARW"
    new = _dng(path, 99, height=50, width=64)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = SIDLongDataset(root, "Sony_train_list.txt", patch=PATCH, cache="disk", cache_dir=cache_dir)
    assert third.cache.decodes == 1 and decodes[-1] == os.fspath(path)
    assert torch.equal(third.cache.full(os.fspath(path)), pack_dn(torch.from_numpy(new), "RGGB"))
    assert third.infos[0].shape == (25, 32) and len(list(cache_dir.glob("*.npy"))) == 2


def test_no_cache_decodes_at_every_access(sid, decodes):
    root, _ = sid
    ds = SIDLongDataset(root, "Sony_train_list.txt", patch=PATCH, cache=None)
    n = len(decodes)
    ds[0], ds[1]
    assert len(decodes) == n + 2


def test_long_dataset_without_list_takes_the_long_folder(sid):
    root, _ = sid
    ds = SIDLongDataset(root, patch=PATCH)
    assert [os.path.basename(f) for f in ds.files] == ["00001_00_10s.ARW", "00002_00_10s.ARW"]


# ----------------------------------------------------------------------------- augmentation


def _transform_mosaic(a, hflip, vflip, transpose):
    if hflip:
        a = a[:, ::-1]
    if vflip:
        a = a[::-1, :]
    if transpose:
        a = a.T
    return np.ascontiguousarray(a)


ALL_FLAGS = torch.tensor([[h, v, t] for h in (0, 1) for v in (0, 1) for t in (0, 1)], dtype=torch.bool)


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_dihedral_is_the_packing_of_the_transformed_scene(pattern):
    """Flip / transpose the *mosaic*, re-read its pattern, pack: the batched augmentation of
    the packed planes must give exactly that (every value distinct, so any wrong plane or
    position shows)."""
    S = 12
    mosaic = np.random.default_rng(0).permutation(S * S).astype(np.uint16).reshape(S, S) + 600
    letters = np.tile(np.array(list(pattern)).reshape(2, 2), (S // 2, S // 2))
    packed = pack_dn(torch.from_numpy(mosaic), pattern)
    out = apply_dihedral(packed.expand(8, 4, S // 2, S // 2).contiguous(), ALL_FLAGS)
    for b, (h, v, t) in enumerate(ALL_FLAGS.tolist()):
        m2 = _transform_mosaic(mosaic, h, v, t)
        l2 = _transform_mosaic(letters, h, v, t)
        expected = pack_dn(torch.from_numpy(m2), "".join(l2[:2, :2].reshape(-1)))
        assert torch.equal(out[b], expected), (pattern, h, v, t)
        # Row structure: planes 0 and 1 (R, G1) come from one sensor row of the transformed scene.
        r_row = "".join(l2[:2, :2].reshape(-1)).index("R") // 2
        assert torch.equal(out[b, 1], torch.from_numpy(m2[r_row::2][:, [i for i in range(S) if l2[r_row, i] == "G"]]))
    # Float data and several groups of 4 planes (a target and an input together) alike.
    x = torch.rand(8, 8, 5, 5)
    y = apply_dihedral(x, ALL_FLAGS)
    assert torch.equal(y[:, :4], apply_dihedral(x[:, :4].contiguous(), ALL_FLAGS))
    assert torch.equal(y[:, 4:], apply_dihedral(x[:, 4:].contiguous(), ALL_FLAGS))


def test_normalise_matches_pack_bayer():
    rng = np.random.default_rng(1)
    cfa = torch.from_numpy(rng.integers(0, 17000, (3, 20, 26)).astype(np.uint16))
    black = torch.tensor([[512.0, 510, 514, 508], [0, 0, 0, 0], [2047, 2046, 2045, 2044]])
    white = torch.tensor([16383.0, 4095.0, 16383.0])
    for pattern in ("RGGB", "GBRG"):
        packed = torch.stack([pack_dn(c, pattern) for c in cfa])
        ref = pack_bayer_reference(cfa, pattern, black, white, ratio=torch.tensor([1.0, 2.0, 3.5]))
        got = normalise_packed(packed, black, white, ratio=torch.tensor([1.0, 2.0, 3.5]))
        assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_augment_and_normalise_batched_and_seeded():
    B, p = 64, 8
    rng = np.random.default_rng(2)
    raw = torch.from_numpy(rng.integers(500, 16384, (B, 4, p, p)).astype(np.uint16))
    black = torch.tensor(BLACK, dtype=torch.float32).expand(B, 4)
    white = torch.full((B,), 16383.0)
    out, flags = augment_and_normalise(raw, black, white, torch.Generator().manual_seed(7), return_flags=True)
    assert out.shape == (B, 4, p, p) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert out.is_contiguous()
    assert flags.shape == (B, 3) and bool(flags.any(0).all()) and bool((~flags).any(0).all())  # all choices occur
    assert torch.equal(out, apply_dihedral(normalise_packed(raw, black, white), flags))
    again = augment_and_normalise(raw, black, white, torch.Generator().manual_seed(7))
    assert torch.equal(out, again)
    # Values are only moved (per plane group up to the 1 <-> 3 swap): sorted samples agree.
    base = normalise_packed(raw, black, white)
    assert torch.equal(out.flatten(1).sort(1).values, base.flatten(1).sort(1).values)
    plain = augment_and_normalise(raw, black, white, torch.Generator().manual_seed(7), flips=False, transpose=False)
    assert torch.equal(plain, base)
    assert not random_dihedral(16, generator=torch.Generator().manual_seed(0), transpose=False)[:, 2].any()
    with pytest.raises(ValueError, match="square"):
        augment_and_normalise(raw[:, :, :, :6], black, white)


# ----------------------------------------------------------------------------- pairs


def test_pairs_ratio_from_names_and_exif(sid):
    root, m = sid
    # A pair whose names carry no exposure time: the ratio comes from the files' EXIF.
    s4 = _dng(root / "Sony/short/00003_00.ARW", 14, exposure_time=0.05)
    l3 = _dng(root / "Sony/long/00003_00_gt.ARW", 3, exposure_time=10.0)
    with open(root / "Sony_train_list.txt", "a") as f:
        f.write("./Sony/short/00003_00.ARW ./Sony/long/00003_00_gt.ARW ISO100 F2\n")
    ds = SIDPairDataset(root, "Sony_train_list.txt", crop="center", patch=PATCH)
    assert [p.ratio for p in ds.pairs] == pytest.approx([100, 250, 300, 200], rel=1e-6)  # 1000 capped at 300
    assert ds.skipped == [] and ds.cache.decodes == 3
    expect = [("s1", "long1", "RGGB"), ("s2", "long1", "RGGB"), ("s3", "long2", "BGGR")]
    for i, (s, l, pattern) in enumerate(expect):
        it = ds[i]
        short, long = pack_dn(torch.from_numpy(m[s]), pattern), pack_dn(torch.from_numpy(m[l]), pattern)
        assert torch.equal(it["input"], short[:, 4:20, 8:24]) and torch.equal(it["target"], long[:, 4:20, 8:24])
        assert it["black_input"].tolist() == list(BLACK) and it["white"] == 16383
    assert torch.equal(ds[3]["input"], pack_dn(torch.from_numpy(s4), "RGGB")[:, 4:20, 8:24])
    assert torch.equal(ds[3]["target"], pack_dn(torch.from_numpy(l3), "RGGB")[:, 4:20, 8:24])
    batch = collate_pairs([ds[i] for i in range(4)])
    assert batch["input"].shape == (4, 4, PATCH, PATCH) and batch["ratio"].tolist() == pytest.approx([100, 250, 300, 200])
    assert batch["iso"].tolist() == [200, 250, 3200, 100]

    full = SIDPairDataset(root, "Sony_train_list.txt", crop=None)
    assert full[0]["input"].shape == (4, 24, 32)
    rand = SIDPairDataset(root, "Sony_train_list.txt", crop="random", patch=PATCH, seed=1)
    it = rand[(2, 0)]
    top, left, _, _ = rand.window(0, epoch=2)
    assert torch.equal(it["input"], pack_dn(torch.from_numpy(m["s1"]), "RGGB")[:, top : top + PATCH, left : left + PATCH])
    assert torch.equal(it["target"], pack_dn(torch.from_numpy(m["long1"]), "RGGB")[:, top : top + PATCH, left : left + PATCH])
    paired = SIDPairDataset(root, None, crop="center", patch=PATCH)  # no list: scene ids pair the files
    assert len(paired) == 4


# ----------------------------------------------------------------------------- bad data


def test_bad_data_is_skipped_with_one_counted_warning(sid, tmp_path):
    root, _ = sid
    factory.random_bytes_file(root / "Sony/short/00004_00_0.1s.ARW")
    _dng(root / "Sony/short/00001_02_0.1s.ARW", 20, height=40)  # 40 rows, its long has 48
    factory.truncated_copy(root / "Sony/long/00002_00_10s.ARW", root / "Sony/long/00005_00_10s.ARW")
    (root / "bad_list.txt").write_text(
        "./Sony/short/00001_00_0.1s.ARW ./Sony/long/00001_00_10s.ARW ISO200 F8\n"  # good
        "./Sony/short/00004_00_0.1s.ARW ./Sony/long/00001_00_10s.ARW ISO200 F8\n"  # unreadable short
        "./Sony/short/00001_02_0.1s.ARW ./Sony/long/00001_00_10s.ARW ISO200 F8\n"  # size mismatch
        "./Sony/short/00002_00_0.01s.ARW ./Sony/long/00005_00_10s.ARW ISO200 F8\n"  # unreadable long
        "./Sony/short/00002_00_0.01s.ARW\n"  # malformed row
        "./Sony/short/00002_00_0.01s.ARW ./Sony/long/missing_10s.ARW\n")  # missing long
    with pytest.warns(DataWarning, match=r"skipped 5 of 6 pairs") as record:
        pairs = SIDPairDataset(root, "bad_list.txt", patch=PATCH)
    assert len(record) == 1
    assert len(pairs) == 1 and len(pairs.skipped) == 5
    reasons = " | ".join(r for _, r in pairs.skipped)
    for needed in ("not a raw file", "size mismatch: short 64x40 pixels, long 64x48", "long exposure unreadable",
                   "malformed row", "FileNotFoundError"):
        assert needed in reasons
    with pytest.warns(DataWarning, match=r"skipped 3 of 4 files") as record:
        longs = SIDLongDataset(root, "bad_list.txt", patch=PATCH)
    assert len(record) == 1 and len(longs.files) == 1 and len(longs.skipped) == 3
    assert sum("00005_00_10s.ARW" in p for p, _ in longs.skipped) == 1
    with pytest.warns(DataWarning, match=r"skipped 5 of 6 pairs"):  # full decode finds the same
        decoded = SIDPairDataset(root, "bad_list.txt", patch=PATCH, validate="decode")
    assert [p.short for p in decoded.pairs] == [p.short for p in pairs.pairs]


def test_nothing_usable_is_a_clear_error(sid):
    root, _ = sid
    factory.random_bytes_file(root / "Sony/long/00009_00_10s.ARW")
    (root / "empty.txt").write_text("./Sony/short/00001_00_0.1s.ARW ./Sony/long/00009_00_10s.ARW\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(EmptyDatasetError, match=r"no usable long exposure.*00009_00_10s.ARW"):
            SIDLongDataset(root, "empty.txt", patch=PATCH)
        with pytest.raises(EmptyDatasetError, match=r"no usable \(short, long\) pair"):
            SIDPairDataset(root, "empty.txt", patch=PATCH)
        with pytest.raises(EmptyDatasetError, match="smaller than the patch"):
            SIDLongDataset(root, "Sony_train_list.txt", patch=25)
    (root / "blank.txt").write_text("\n# nothing\n")
    with pytest.raises(EmptyDatasetError, match="no files listed"):
        SIDLongDataset(root, "blank.txt", patch=PATCH)


# ----------------------------------------------------------------------------- sRGB photos


def _smooth_photo(h, w, seed=0):
    """A smooth, in-gamut sRGB image (uint8): gentle colour gradients."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [0.35 + 0.25 * np.sin(2.0 * x * rng.uniform(0.5, 1.5) + 3 * y * rng.uniform(0.5, 1.5) + c) for c in range(3)]
    return np.round(np.stack(chans, -1) * 255).astype(np.uint8)


def test_srgb_grey_maps_to_the_expected_linear_value():
    grey = np.full((8, 10, 3), 128, dtype=np.uint8)
    lin = 0.21586050011389926  # sRGB 128/255 through the inverse transfer curve
    assert float(srgb_to_linear(torch.tensor(128 / 255))) == pytest.approx(lin, rel=1e-6)
    x = srgb_to_packed_raw(grey, xyz_to_camera=None, wb_gains=(1, 1, 1))
    assert x.shape == (4, 4, 5) and torch.allclose(x, torch.full_like(x, lin), atol=1e-6)
    # A camera matrix keeps a neutral neutral (rows sum to 1); the white balance divides it.
    x = srgb_to_packed_raw(grey, xyz_to_camera=SONY_A7S2_XYZ_TO_CAMERA, wb_gains=(2.0, 1.0, 1.6))
    assert torch.allclose(x.mean((1, 2)), torch.tensor([lin / 2, lin, lin / 1.6, lin]), atol=1e-5)


def test_srgb_round_trip_through_the_isp():
    photo = _smooth_photo(40, 48)
    gains = (2.1, 1.0, 1.5)
    x = srgb_to_packed_raw(photo, wb_gains=gains)
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() < 1  # in gamut: nothing clipped
    back = render_srgb_reference(x[None], "RGGB", gains, camera_to_srgb(SONY_A7S2_XYZ_TO_CAMERA), out_dtype=torch.float32)[0]
    err = (back[1:-1, 1:-1] - torch.from_numpy(photo[1:-1, 1:-1]) / 255.0).abs()
    assert float(err.max()) < 0.02 and float(err.mean()) < 0.005


def test_srgb_folder_dataset(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_smooth_photo(80, 96, 1)).save(folder / "a.png")
    Image.fromarray(_smooth_photo(70, 90, 2)).save(folder / "sub" / "b.jpg", quality=95)
    Image.fromarray(_smooth_photo(20, 24, 3)).save(folder / "small.png")  # enlarged to fit the patch
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(DataWarning, match=r"skipped 1 of 4 images.*broken.png"):
        ds = SRGBFolderDataset(folder, patch=PATCH, repeat=2, seed=3)
    assert [os.path.basename(f) for f in ds.files] == ["a.png", "small.png", "b.jpg"]
    assert len(ds) == 6 and ds.packed(0).shape == (4, 40, 48) and min(ds.packed(1).shape[1:]) >= PATCH
    # The cache is the converted photo in DN; a crop is a window of it.
    x = srgb_to_packed_raw(np.asarray(Image.open(folder / "a.png")), wb_gains=ds.gains[0])
    assert torch.equal(ds.packed(0), torch.round(512 + x * (16383 - 512)).to(torch.int32).to(torch.uint16))
    for i in range(len(ds)):
        it = ds[i]
        assert it["raw"].dtype == torch.uint16 and it["raw"].shape == (4, PATCH, PATCH)
        assert _is_window(it["raw"], ds.packed(i % 3)) and it["white"] == 16383 and it["black"].tolist() == [512] * 4
    lo, hi = ds.gains[0][0], ds.gains[0][2]
    assert 1.3 <= lo <= 2.8 and 1.2 <= hi <= 2.6 and ds.gains[0] != ds.gains[1]
    again = SRGBFolderDataset(folder, patch=PATCH, repeat=2, seed=3, warn=False)
    assert all(torch.equal(ds[i]["raw"], again[i]["raw"]) for i in range(len(ds)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="no usable image"):
        SRGBFolderDataset(tmp_path / "empty", patch=PATCH)


# ----------------------------------------------------------------------------- procedural scenes


def test_procedural_scenes_deterministic_and_in_range():
    ds = ProceduralSceneDataset(4, patch=32, seed=3)
    a, b = ds[1], ds[1]
    assert a["raw"].dtype == torch.uint16 and a["raw"].shape == (4, 32, 32) and torch.equal(a["raw"], b["raw"])
    assert int(a["raw"].to(torch.int32).min()) >= 512 and int(a["raw"].to(torch.int32).max()) <= 16383
    assert not torch.equal(ds[1]["raw"], ds[2]["raw"])
    assert not torch.equal(ds[1]["raw"], ProceduralSceneDataset(4, patch=32, seed=4)[1]["raw"])
    assert not torch.equal(ds[(0, 1)]["raw"], ds[(1, 1)]["raw"])  # new scenes every epoch
    x = ds.render(2)
    assert x.dtype == torch.float32 and x.shape == (4, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert float(x.std()) > 0 and torch.equal(ds[2]["raw"], torch.round(512 + x * (16383 - 512)).to(torch.int32).to(torch.uint16))
    for i in range(4):  # plausible exposure: mean in the documented range, structure present
        x = ds.render(i, epoch=5)
        assert 0.005 < float(x.mean()) < 0.4 and float((x[1] - x[3]).abs().mean()) < float(x[1].std()) + 1e-3


def test_synthetic_holdout_is_fixed():
    h1, h2 = synthetic_holdout(3, 32, seed=0), synthetic_holdout(3, 32, seed=0)
    assert isinstance(h1, PackedBatch) and h1.raw.shape == (3, 4, 32, 32) and h1.raw.dtype == torch.uint16
    assert torch.equal(h1.raw, h2.raw) and h1.black.shape == (3, 4) and h1.white.tolist() == [16383.0] * 3
    assert not torch.equal(synthetic_holdout(3, 32, seed=1).raw, h1.raw)
    assert not any(torch.equal(h1.raw[0], ProceduralSceneDataset(8, patch=32, seed=0)[i]["raw"]) for i in range(8))
    x = h1.normalised()
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


# ----------------------------------------------------------------------------- mixing, loaders


def test_mixed_dataset_and_loader(sid, tmp_path):
    root, _ = sid
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_smooth_photo(64, 64, 5)).save(folder / "p.png")
    ds = build_training_dataset(sid_root=root, sid_list="Sony_train_list.txt", srgb_folder=folder, procedural=8,
                                patch=PATCH, length=24, seed=1)
    assert isinstance(ds, MixedPatchDataset) and len(ds) == 24 and len(ds.sources) == 3
    sources = [ds[i]["source"] for i in range(24)]
    assert any(s.endswith(".ARW") for s in sources) and any(s.endswith("p.png") for s in sources)
    assert "procedural" in sources
    loader = make_patch_loader(ds, 4, num_workers=0, seed=2)
    assert isinstance(loader.sampler, EpochTaggedSampler)
    loader.sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == 6 and all(isinstance(b, PackedBatch) for b in batches)
    first = batches[0]
    assert first.raw.shape == (4, 4, PATCH, PATCH) and first.raw.dtype == torch.uint16
    assert first.black.shape == (4, 4) and first.white.shape == (4,) and first.index.dtype == torch.int64
    assert sorted(i for b in batches for i in b.index.tolist()) == list(range(24))
    for b in batches:  # each sample is ds[(epoch, index)]
        for k, i in enumerate(b.index.tolist()):
            assert torch.equal(b.raw[k], ds[(1, i)]["raw"])
    # Worker processes (persistent, epoch given through the sampler) give the same batches.
    workers = make_patch_loader(ds, 4, num_workers=2, persistent_workers=True, seed=2)
    workers.sampler.set_epoch(0)
    list(workers)
    workers.sampler.set_epoch(1)
    for b, c in zip(batches, workers):
        assert torch.equal(b.raw, c.raw) and torch.equal(b.index, c.index)
    out = augment_and_normalise(first.raw, first.black, first.white, torch.Generator().manual_seed(0))
    assert out.shape == (4, 4, PATCH, PATCH) and 0 <= out.min() and out.max() <= 1
    only = build_training_dataset(procedural=5, patch=PATCH)
    assert len(only) == 5 and only[0]["source"] == "procedural"
    with pytest.raises(ValueError, match="weights"):
        MixedPatchDataset(ds.sources, [1, -1, 0])
    assert collate_patches([ds[0], ds[1]]).raw.shape == (2, 4, PATCH, PATCH)
