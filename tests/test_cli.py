"""The exposure-diffusion command line: per-file errors, exit codes, outputs."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import BackboneConfig, save_checkpoint
from engine.cli import main
from tests.dngfactory import make_bayer_dng, random_bytes_file, truncated_copy

REPO = Path(__file__).resolve().parent.parent


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


# ----------------------------------------------------------------------------- issue 22, items 4 and 6
def _parse(argv):
    from engine.cli import build_parser
    from training.cli import add_training_commands

    return build_parser(add_training_commands).parse_args(argv)


@pytest.mark.parametrize("argv", [["--ratio", "1"], ["--ratio", "0.5", "--steps", "2"], ["--ratio", "1", "--steps", "3"]])
def test_ratio_at_most_1_with_several_steps_is_refused_while_parsing(argv, capsys):
    """Item 4: --ratio 1 with the default 3 steps failed per file at run time (exit 1)."""
    with pytest.raises(SystemExit) as info:
        _parse(["enhance", "a.dng", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "argument --ratio: must be > 1 with --steps" in err
    assert "use --steps 1 (a plain denoise)" in err


def test_ratio_at_most_1_is_a_plain_denoise_with_one_step_or_auto(tmp_path):
    assert _parse(["enhance", "a.dng", "--ratio", "0.5", "--steps", "1"]).ratio == 0.5
    assert _parse(["enhance", "a.dng", "--ratio", "1", "--steps", "auto"]).steps == "auto"  # auto runs one step
    ckpt = small_checkpoint(tmp_path / "m.pt")
    make_bayer_dng(tmp_path / "a.dng", height=32, width=48)
    for extra, name in ((["--steps", "1", "--ratio", "0.5"], "one"), (["--steps", "auto", "--ratio", "1"], "auto")):
        code = main(["enhance", str(tmp_path / "a.dng"), "--checkpoint", str(ckpt), "-o", str(tmp_path / name),
                     "--device", "cpu", "-q", *extra])
        assert code == 0 and (tmp_path / name / "a.png").is_file()


def test_the_command_exits_2_before_any_file_for_ratio_1(tmp_path, capsys):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    make_bayer_dng(tmp_path / "a.dng", height=32, width=48)
    with pytest.raises(SystemExit) as info:
        main(["enhance", str(tmp_path / "a.dng"), "--ratio", "1", "--checkpoint", str(ckpt), "-o",
              str(tmp_path / "out"), "--device", "cpu", "-q"])
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


_IMPORTS = """
import sys
from training.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "triton", "numpy", "scipy", "rawpy") if m in sys.modules), file=sys.stderr)
"""


def test_help_imports_neither_torch_nor_triton():
    """Item 6: `exposure-diffusion --help` took 5-8 s, importing torch and Triton. Measured by
    the modules imported (not by time, which depends on the machine): the entry point
    (training.cli:main), the top-level help and every command's help, and a usage error."""
    argvs = [["--help"], *[[c, "--help"] for c in ("enhance", "calibrate", "train", "evaluate", "export")],
             ["enhance"], ["evaluate", "--holdout", "x"]]
    proc = subprocess.run([sys.executable, "-c", _IMPORTS.format(argvs=argvs)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr[-2000:]
    assert "usage: exposure-diffusion [-h] {enhance,calibrate,train,evaluate,export}" in proc.stdout


def test_the_limits_of_the_parser_are_the_engines():
    """engine.limits (torch-free, for the parser) mirrors the modules that enforce each limit."""
    import engine.limits as limits
    from engine.calibration.stats import PPCC_SAMPLES
    from engine.camera import K_RANGE
    from engine.inference import pipeline
    from engine.inference.loop import SIZE_MULTIPLE

    assert (limits.MAX_RATIO, limits.MAX_STEPS, limits.MAX_SEED, limits.DEFAULT_CHECKPOINT) == \
        (pipeline.MAX_RATIO, pipeline.MAX_STEPS, pipeline.MAX_SEED, pipeline.DEFAULT_CHECKPOINT)
    assert (limits.SIZE_MULTIPLE, limits.K_RANGE, limits.PPCC_SAMPLES) == (SIZE_MULTIPLE, K_RANGE, PPCC_SAMPLES)


def test_a_single_file_shows_progress_inside_it(tmp_path, capsys):
    """Item 6: one large file sat at 0% until it was written (70 s on a CPU): the bar moves at
    every network evaluation (steps 1, 2 of 3 before the file is done)."""
    ckpt = small_checkpoint(tmp_path / "m.pt")
    make_bayer_dng(tmp_path / "a.dng", height=64, width=64)
    code = main(["enhance", str(tmp_path / "a.dng"), "--ratio", "50", "--checkpoint", str(ckpt), "-o",
                 str(tmp_path / "out"), "--device", "cpu", "--steps", "3"])
    assert code == 0
    frames = capsys.readouterr().err.split("\r")
    shown = [next(i for i, f in enumerate(frames) if f" {text}/1 [" in f) for text in ("0.33", "0.67", "1")]
    assert shown == sorted(shown), frames


def test_the_pipeline_reports_each_step():
    from engine import Pipeline

    torch.manual_seed(0)
    cfg = BackboneConfig(arch="unet", options={"widths": (8, 8, 16, 16, 16)})
    pipe = Pipeline(cfg.build(), cfg, device="cpu", precision="fp32")
    frame = np.full((32, 32), 600, dtype=np.uint16)
    kw = dict(pattern="RGGB", black_level=512, white_level=16383, K=1.0, ratio=10, seed=0)
    for steps in (3, 1):
        seen = []
        pipe(frame, steps=steps, progress=lambda i, n: seen.append((i, n)), **kw)
        assert seen == [(i, steps) for i in range(1, steps + 1)]
    with pytest.raises(ValueError, match=r"schedule must be one of \('linspace', 'geometric'\) or explicit exposure "
                                         r"multiples, got 'abc'"):
        pipe(frame, steps=3, schedule="abc", **kw)  # was: "new(): invalid data type 'str'"


def test_the_command_lines_backbone_names_are_the_engines():
    from engine.cli import BACKBONES
    from engine.inference.backbone_choice import BACKBONE_PATHS

    assert BACKBONES == BACKBONE_PATHS


def test_ratio_auto_is_chosen_per_file_printed_and_in_the_metadata(tmp_path, capsys):
    from bench.scene import write_cfa_dng
    from engine.scene import clean_packed, render_scene, short_exposure_cfa

    clean = clean_packed(render_scene(128, 192, 0))
    files = [write_cfa_dng(tmp_path / f"r{r:g}.dng", short_exposure_cfa(clean, ratio=r, noise_seed=1), ratio=r)
             for r in (30.0, 200.0)]
    out = tmp_path / "out"
    code = main(["enhance", *map(str, files), "--ratio", "auto", "--checkpoint", str(small_checkpoint(tmp_path / "m.pt")),
                 "-o", str(out), "--device", "cpu", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    printed = {line.split(":")[0]: float(line.split("ratio ")[1].split(" ")[0]) for line in err.splitlines()
               if "(auto)" in line}
    assert set(printed) == {"r30.dng", "r200.dng"} and printed["r200.dng"] > 3 * printed["r30.dng"]
    description = Image.open(out / "r200.png").getexif().get(270)
    written = float(description.split("exposure ratio ")[1].split(",")[0])
    assert abs(written / printed["r200.dng"] - 1) < 5e-3, (description, printed)


@pytest.mark.parametrize("ratio, steps, message", [
    ("1e-320", "1", "is 0 in float32 (the photon maths' precision)"),
    (repr(1 + 2**-52), "3", "(= 1 in float32)"),
    ("abc", "1", "expected a number, got 'abc' (or 'auto')"),
])
def test_ratios_are_checked_as_the_kernels_see_them(tmp_path, capsys, ratio, steps, message):
    with pytest.raises(SystemExit) as e:
        main(["enhance", str(tmp_path / "x.dng"), "--ratio", ratio, "--steps", steps])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_pipeline_checks_the_float32_ratio():
    from engine import Pipeline

    cfg = BackboneConfig(options={"widths": (8, 8, 8, 8, 8)})
    pipe = Pipeline(cfg.build(), cfg, device="cpu", backbone_path="eager")
    cfa = np.full((32, 32), 600, np.uint16)
    kw = dict(K=1.0, pattern="RGGB", black_level=512, white_level=16383)
    with pytest.raises(ValueError, match=r"got ratio 1 \(1.0000000000000002 is 1 in float32\)"):
        pipe(cfa, ratio=1 + 2**-52, steps=3, **kw)
    with pytest.raises(ValueError, match=r"ratio 5e-324 is 0 in float32"):
        pipe(cfa, ratio=5e-324, steps=1, **kw)
