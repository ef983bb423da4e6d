"""Files a user owns (issue 15, items 1-3): an input is never written over, two inputs never
share an output, an existing output is replaced only when asked; for the ``enhance``
command, ``enhance_files``, ``EnhancedFrame.save`` and the other writers."""
import hashlib
import os

import pytest

from engine import BackboneConfig, export_public
from engine.cli import main
from engine.inference.batch import enhance_files
from engine.io import atomic
from engine.io.paths import OutputPathError, output_names
from training.cli import main as program
from tests.dngfactory import make_bayer_dng

from .helpers import small_cpu_pipeline
from .test_cli import small_checkpoint


def dng(path, seed=0):
    make_bayer_dng(path, height=32, width=48, seed=seed)
    return path


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return small_checkpoint(tmp_path_factory.mktemp("model") / "m.pt")


@pytest.fixture(scope="module")
def pipe():
    return small_cpu_pipeline()


def enhance(ckpt, *args):
    return main(["enhance", *map(str, args), "--ratio", "50", "--checkpoint", str(ckpt), "--device", "cpu",
                 "--steps", "1", "--seed", "0", "-q"])


# ------------------------------------------------------------------ 1. never over an input
def test_dng_output_into_the_input_folder_is_refused_and_the_raw_kept(tmp_path, ckpt, capsys):
    raw = dng(tmp_path / "in.dng")
    before = digest(raw)
    assert enhance(ckpt, raw, "--format", "dng", "-o", tmp_path) == 2
    err = capsys.readouterr().err
    assert "would overwrite the input" in err and str(raw) in err and err.count("in.dng") >= 2
    assert digest(raw) == before and sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".dng") == ["in.dng"]


def test_output_reaching_an_input_through_symlinks_is_refused(tmp_path, ckpt, capsys):
    (tmp_path / "photos").mkdir()
    raw = dng(tmp_path / "photos" / "in.dng")
    before = digest(raw)
    os.symlink(tmp_path / "photos", tmp_path / "link_to_photos")  # -o names the input folder by another path
    assert enhance(ckpt, raw, "--format", "dng", "-o", tmp_path / "link_to_photos") == 2
    assert "would overwrite the input" in capsys.readouterr().err
    os.symlink(raw, tmp_path / "alias.dng")  # the input named through a link, the output onto its target
    assert enhance(ckpt, tmp_path / "alias.dng", "--format", "dng", "-o", tmp_path / "photos") == 2
    assert digest(raw) == before


def test_save_never_writes_over_the_frames_source(tmp_path, pipe):
    raw = dng(tmp_path / "in.dng")
    before = digest(raw)
    result = pipe(str(raw), ratio=50, steps=1, seed=0)
    for overwrite in (False, True):
        with pytest.raises(OutputPathError, match="would overwrite the input"):
            result.save(raw, overwrite=overwrite)
    assert digest(raw) == before


# ------------------------------------------------------------------ 2. one output per input
def test_output_names_are_distinct_and_independent_of_order(tmp_path):
    files = [tmp_path / "a" / "x.ARW", tmp_path / "b" / "x.ARW", tmp_path / "a" / "x.NEF", tmp_path / "a" / "x.ARW.dng",
             tmp_path / "a" / "y.dng"]
    names = [p.name for p in output_names(files, tmp_path / "out", ".png")]
    assert names == ["a_x.ARW.png", "b_x.ARW.png", "x.NEF.png", "x.ARW.dng.png", "y.png"]
    assert len({n.casefold() for n in names}) == len(names)
    shuffled = [files[i] for i in (3, 1, 4, 0, 2)]
    again = dict(zip(shuffled, output_names(shuffled, tmp_path / "out", ".png")))
    assert [again[f].name for f in files] == names
    # x.ARW and x.ARW.dng as DNG outputs: x.dng and x.ARW.dng
    assert [p.name for p in output_names(files[3:4] + files[:1], tmp_path, ".dng")] == ["x.ARW.dng", "x.dng"]


def test_same_name_in_two_folders_gives_two_outputs(tmp_path, ckpt, capsys):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        dng(tmp_path / folder / "x.dng", seed=seed)
    out = tmp_path / "out"
    assert enhance(ckpt, tmp_path / "a" / "x.dng", tmp_path / "b" / "x.dng", "-o", out) == 0
    assert "2 of 2 files enhanced" in capsys.readouterr().err
    outs = sorted(out.iterdir())
    assert [p.name for p in outs] == ["a_x.dng.png", "b_x.dng.png"] and digest(outs[0]) != digest(outs[1])


def test_a_file_listed_twice_is_refused(tmp_path, ckpt, capsys):
    raw = dng(tmp_path / "x.dng")
    os.symlink(raw, tmp_path / "y.dng")
    for second in (tmp_path / "." / "x.dng", tmp_path / "y.dng"):
        assert enhance(ckpt, raw, second, "-o", tmp_path / "out") == 2
        assert "listed more than once" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


# ------------------------------------------------------------------ 3. existing outputs
def test_existing_outputs_refused_unless_overwrite_or_skip(tmp_path, ckpt, capsys):
    raws = [dng(tmp_path / f"f{i}.dng", seed=i) for i in range(3)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "f1.png").write_bytes(b"the user's own file")
    assert enhance(ckpt, *raws, "-o", out) == 2
    err = capsys.readouterr().err
    assert "1 output(s) already exist" in err and "f1.png" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["f1.png"]  # nothing done
    assert (out / "f1.png").read_bytes() == b"the user's own file"

    assert enhance(ckpt, *raws, "-o", out, "--skip-existing") == 0
    err = capsys.readouterr().err
    assert "2 of 3 files enhanced" in err and "1 skipped (output exists)" in err
    assert (out / "f1.png").read_bytes() == b"the user's own file"
    assert sorted(p.name for p in out.iterdir()) == ["f0.png", "f1.png", "f2.png"]
    first = digest(out / "f0.png")

    assert enhance(ckpt, *raws, "-o", out, "--overwrite") == 0
    assert (out / "f1.png").read_bytes()[:4] == b"\x89PNG" and digest(out / "f0.png") == first
    with pytest.raises(SystemExit):  # the two policies exclude each other
        enhance(ckpt, *raws, "-o", out, "--overwrite", "--skip-existing")


def test_skip_existing_summary(tmp_path, ckpt, capsys):
    raws = [dng(tmp_path / f"f{i}.dng", seed=i) for i in range(2)]
    out = tmp_path / "out"
    assert enhance(ckpt, raws[0], "-o", out) == 0
    capsys.readouterr()
    assert enhance(ckpt, *raws, "-o", out, "--skip-existing") == 0
    assert "1 of 2 files enhanced" in capsys.readouterr().err


def test_python_api_refuses_existing_outputs(tmp_path, pipe):
    raws = [dng(tmp_path / f"f{i}.dng", seed=i) for i in range(2)]
    result = pipe(str(raws[0]), ratio=50, steps=1, seed=0)
    for ext in ("png", "tiff", "dng"):
        target = tmp_path / f"taken.{ext}"
        target.write_bytes(b"keep")
        with pytest.raises(FileExistsError, match="taken.* already exists; pass overwrite=True"):
            result.save(target)
        assert target.read_bytes() == b"keep"
        result.save(target, overwrite=True)
        assert target.read_bytes() != b"keep"
    outs = [tmp_path / "o0.png", tmp_path / "o1.png"]
    outs[1].write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="o1.png"):
        enhance_files(pipe, raws, outs, ratio=50, steps=1)
    assert not outs[0].exists()  # refused before any work
    results = enhance_files(pipe, raws, outs, ratio=50, steps=1, skip_existing=True)
    assert [r.skipped for r in results] == [False, True] and outs[1].read_bytes() == b"keep" and outs[0].is_file()
    with pytest.raises(OutputPathError, match="would overwrite the input"):
        enhance_files(pipe, raws[:1], raws[:1], fmt="dng", overwrite=True, ratio=50, steps=1)


@pytest.mark.parametrize("workers", [0, 1])
def test_an_output_appearing_during_the_run_is_not_replaced(tmp_path, pipe, monkeypatch, workers):
    """Another process creates the output while it is being encoded: the finished file
    takes its name only if it is still free (hard link, not rename), else that file fails."""
    raw = dng(tmp_path / "f.dng")
    out = tmp_path / "o.png"
    real_link = atomic._link_without_replacing

    def racing(tmp, path):
        path.write_bytes(b"appeared")
        real_link(tmp, path)

    monkeypatch.setattr(atomic, "_link_without_replacing", racing)
    results = enhance_files(pipe, [raw], [out], ratio=50, steps=1, workers=workers, start_method="fork")
    assert results[0].error and "FileExistsError" in results[0].error
    assert out.read_bytes() == b"appeared"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary left


def test_atomic_path_no_clobber_leaves_the_existing_file(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        with atomic.atomic_path(target, overwrite=False) as tmp:
            tmp.write_bytes(b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    with atomic.atomic_path(tmp_path / "y.bin", overwrite=False) as tmp:
        tmp.write_bytes(b"new")
    assert (tmp_path / "y.bin").read_bytes() == b"new"


def test_other_writers_refuse_existing_files(tmp_path, ckpt, capsys):
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    public = tmp_path / "public.pt"
    public.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        export_public(cfg.build(), public)
    assert program(["export", "--checkpoint", str(ckpt), "--public", str(public)]) == 2
    assert "already exists; use --overwrite" in capsys.readouterr().err and public.read_bytes() == b"keep"
    assert program(["export", "--checkpoint", str(ckpt), "--public", str(public), "--overwrite"]) == 0
    assert public.read_bytes() != b"keep"
    from engine.calibration import calibrate

    profile = tmp_path / "cam.json"
    profile.write_text("{}")
    with pytest.raises(FileExistsError, match="cam.json already exists"):  # before reading a single frame
        calibrate([tmp_path / "missing_bias.dng"], [tmp_path / "missing_flat.dng"], out=profile)
