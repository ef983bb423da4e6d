"""The exposure-diffusion command line: per-file errors, exit codes, outputs."""
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from engine import BackboneConfig, save_checkpoint
from engine.cli import main
from tests.dngfactory import make_bayer_dng, random_bytes_file, truncated_copy


def small_checkpoint(path):
    torch.manual_seed(0)
    cfg = BackboneConfig(arch="unet", options={"widths": (8, 16, 16, 32, 32)})
    save_checkpoint(cfg.build(), cfg, path)
    return path


def test_batch_with_bad_files_reports_each_and_continues(tmp_path, capsys):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    good = []
    for i, pattern in enumerate(["RGGB", "BGGR", "GBRG"]):
        p = tmp_path / f"img{i}.dng"
        make_bayer_dng(p, height=64, width=64, pattern=pattern, seed=i)
        good.append(p)
    bad = [random_bytes_file(tmp_path / "noise.ARW"), truncated_copy(good[0], tmp_path / "cut.dng")]
    out = tmp_path / "out"
    code = main(["enhance", *map(str, good + bad), "--ratio", "100", "--checkpoint", str(ckpt), "-o", str(out),
                 "--device", "cpu", "--steps", "2", "--seed", "0", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED" in err and "noise.ARW" in err and "cut.dng" in err
    assert "3 of 5 files enhanced" in err
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["img0.png", "img1.png", "img2.png"]
    assert np.asarray(Image.open(out / "img0.png")).shape == (64, 64, 3)


def test_all_good_exit_zero_and_formats(tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    make_bayer_dng(tmp_path / "a.dng", height=32, width=48)
    for fmt, ext in (("tiff", ".tiff"), ("dng", ".dng")):
        code = main(["enhance", str(tmp_path / "a.dng"), "--ratio", "50", "--checkpoint", str(ckpt), "-o",
                     str(tmp_path / fmt), "--device", "cpu", "--steps", "1", "--format", fmt, "-q", "--deterministic"])
        assert code == 0 and (tmp_path / fmt / f"a{ext}").is_file()


def test_same_stem_inputs_do_not_overwrite_each_other(tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    make_bayer_dng(tmp_path / "y" / "a.dng", height=32, width=48, seed=1)
    make_bayer_dng(tmp_path / "x" / "a.DNG", height=32, width=48, seed=2)
    code = main(["enhance", str(tmp_path / "y" / "a.dng"), str(tmp_path / "x" / "a.DNG"), "--ratio", "50",
                 "--checkpoint", str(ckpt), "-o", str(tmp_path / "out"), "--device", "cpu", "--steps", "1", "-q"])
    # a.dng.png and a.DNG.png would be one file on a case-insensitive file system: the folders tell them apart
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_a.DNG.png", "y_a.dng.png"]


def test_usage_errors_exit_2(tmp_path, capsys):
    code = main(["enhance", "x.dng", "--ratio", "50", "--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path)])
    assert code == 2 and "cannot load the model" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "enhance", "x.dng"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--ratio" in proc.stderr
