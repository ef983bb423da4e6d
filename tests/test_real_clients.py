"""Our outputs opened by programs that photographers use and no one here wrote.

- darktable-cli and rawtherapee-cli render our enhanced DNG; the picture must agree with
  our own sRGB rendering of the same frame: the mean of each channel within
  ``MEAN_BOUND`` 8-bit levels, not black, and not green (a program that ignored our
  AsShotNeutral / ColorMatrix1 would render this Sony-like scene green: its raw green is
  about twice its red and blue). darktable runs with ``workflow=none`` (no scene-referred
  exposure lift and tone mapping, which it would add to any raw), RawTherapee with its
  built-in neutral defaults (no ``-p`` profile). Measured on 2026-11-30 (darktable 4.2.1,
  RawTherapee 5.9): within 0.3 (darktable) and 3.3 (RawTherapee, its demosaic and a
  4-pixel border crop) levels of ours.
- both open our 16-bit TIFF and give back our pixels (mean within the same bound);
- the orientation of the source reaches their renderings (a portrait shot stays portrait);
- exiftool reads the capture metadata back from every output format.

The tests install nothing: ``.ci/run`` installs the programs (Debian packages darktable,
rawtherapee, libimage-exiftool-perl); where one is absent its tests skip, saying so.
"""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from bench.scene import write_scene_dng
from engine import Pipeline, read_raw
from engine.io.output import OutputOptions

MEAN_BOUND = 8.0  # 8-bit levels, per channel mean
DARKTABLE, RAWTHERAPEE, EXIFTOOL = shutil.which("darktable-cli"), shutil.which("rawtherapee-cli"), shutil.which("exiftool")
CAPTURE = dict(lens="FE 35mm F1.8", f_number=1.8, focal_length=35.0, capture_time="2026:11:30 21:15:42")
needs = {name: pytest.mark.skipif(path is None, reason=f"{name} is not installed (apt-get install {pkg}; .ci/run "
                                                         "installs it)")
         for name, path, pkg in (("darktable-cli", DARKTABLE, "darktable"),
                                 ("rawtherapee-cli", RAWTHERAPEE, "rawtherapee"),
                                 ("exiftool", EXIFTOOL, "libimage-exiftool-perl"))}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The scene enhanced by the shipped model, saved in every format, plus a portrait
    (Orientation 6) version; ours = our own sRGB rendering."""
    folder = tmp_path_factory.mktemp("clients")
    pipe = Pipeline.from_checkpoint(device="cpu", precision="fp32")
    made = {}
    for name, orientation in (("landscape", 1), ("portrait", 6)):
        src = write_scene_dng(folder / f"{name}_src.dng", 256, 384, ratio=100, iso=3200, orientation=orientation,
                              **CAPTURE)
        result = pipe(str(src), ratio=100, steps=2, seed=0, stochastic=False)
        made[name] = {"ours": result.srgb().numpy()}
        for key, options in (("dng", "dng"), ("png", "png"), ("png16", OutputOptions("png", bits=16)),
                             ("jpeg", "jpeg"), ("tiff", "tiff"), ("tiff_deflate", OutputOptions("tiff", compression="small"))):
            ext = {"png16": "png", "tiff_deflate": "tiff"}.get(key, key)
            made[name][key] = result.save(folder / f"{name}_{key}.{ext}", options)
    return made


def _render(program: str, src, out, workdir) -> np.ndarray:
    if program == "darktable-cli":
        cmd = [DARKTABLE, str(src), str(out), "--core", "--configdir", str(workdir / "darktable"),
               "--library", ":memory:", "--conf", "plugins/darkroom/workflow=none"]
    else:
        cmd = [RAWTHERAPEE, "-o", str(out), "-n", "-Y", "-c", str(src)]  # -n: 8-bit PNG, -Y: overwrite
    home = workdir / "home"  # each program keeps its settings here, not in the user's home
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and out.is_file(), f"{' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return np.asarray(Image.open(out).convert("RGB")).astype(np.float64)


def _means(img: np.ndarray) -> np.ndarray:
    return img.reshape(-1, img.shape[-1])[:, :3].astype(np.float64).mean(axis=0)


def _agrees(theirs: np.ndarray, ours: np.ndarray) -> None:
    t, o = _means(theirs), _means(ours)
    assert t.min() > 20, f"rendered (nearly) black: mean RGB {t}"
    green_excess = lambda m: m[1] / ((m[0] + m[2]) / 2)  # noqa: E731
    assert abs(green_excess(t) - green_excess(o)) < 0.05, f"colour cast: theirs {t}, ours {o}"
    assert np.abs(t - o).max() <= MEAN_BOUND, f"mean RGB theirs {t.round(1)}, ours {o.round(1)}"


@pytest.mark.parametrize("program", [pytest.param("darktable-cli", marks=needs["darktable-cli"]),
                                     pytest.param("rawtherapee-cli", marks=needs["rawtherapee-cli"])])
def test_raw_editors_render_our_dng_as_we_do(program, outputs, tmp_path):
    theirs = _render(program, outputs["landscape"]["dng"], tmp_path / "render.png", tmp_path)
    _agrees(theirs, outputs["landscape"]["ours"])


@pytest.mark.parametrize("program", [pytest.param("darktable-cli", marks=needs["darktable-cli"]),
                                     pytest.param("rawtherapee-cli", marks=needs["rawtherapee-cli"])])
@pytest.mark.parametrize("tiff", ["tiff", "tiff_deflate"])
def test_raw_editors_open_our_tiff(program, tiff, outputs, tmp_path):
    theirs = _render(program, outputs["landscape"][tiff], tmp_path / "render.png", tmp_path)
    _agrees(theirs, outputs["landscape"]["ours"])


@pytest.mark.parametrize("program", [pytest.param("darktable-cli", marks=needs["darktable-cli"]),
                                     pytest.param("rawtherapee-cli", marks=needs["rawtherapee-cli"])])
def test_orientation_reaches_the_editors(program, outputs, tmp_path):
    """Our pixels stay as the sensor read them (landscape); the Orientation tag (6:
    rotate 90 degrees clockwise) makes the editors show a portrait picture."""
    h, w = outputs["portrait"]["ours"].shape[:2]
    assert w > h
    for key in ("dng", "tiff"):
        theirs = _render(program, outputs["portrait"][key], tmp_path / f"{key}.png", tmp_path)
        assert theirs.shape[0] > theirs.shape[1], (key, theirs.shape)


@needs["exiftool"]
def test_exiftool_reads_the_capture_metadata_of_every_output(outputs):
    files = {k: v for k, v in outputs["portrait"].items() if k != "ours"}
    done = subprocess.run([EXIFTOOL, "-json", "-n", "-Make", "-Model", "-ISO", "-ExposureTime", "-FNumber",
                           "-FocalLength", "-LensModel", "-DateTimeOriginal", "-Orientation", "-Software",
                           "-ImageDescription", "-BitsPerSample", "-BitDepth", *map(str, files.values())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    tags = {row["SourceFile"]: row for row in json.loads(done.stdout)}
    for key, path in files.items():
        t = tags[str(path)]
        assert (t.get("Make"), t.get("Model"), t.get("ISO")) == ("Sony", "ILCE-7SM2", 3200), (key, t)
        assert t.get("ExposureTime") == pytest.approx(0.1) and t.get("FNumber") == pytest.approx(1.8), (key, t)
        assert t.get("FocalLength") == pytest.approx(35.0) and t.get("LensModel") == CAPTURE["lens"], (key, t)
        assert t.get("DateTimeOriginal") == CAPTURE["capture_time"] and t.get("Orientation") == 6, (key, t)
        assert t.get("Software", "").startswith("ExposureDiffusion"), (key, t)
        assert "ratio 100, 2 step(s)" in t.get("ImageDescription", ""), (key, t)
    assert tags[str(files["png16"])]["BitDepth"] == 16 and tags[str(files["png"])]["BitDepth"] == 8
    assert str(tags[str(files["tiff"])]["BitsPerSample"]).split()[0] == "16"


def test_our_reader_reads_our_outputs_metadata_back(outputs):
    """What we write into a DNG, our own reader (rawpy + tifffile) finds again."""
    frame = read_raw(outputs["portrait"]["dng"])
    assert (frame.make, frame.model, frame.iso, frame.lens, frame.capture_time, frame.orientation) == (
        "Sony", "ILCE-7SM2", 3200, CAPTURE["lens"], CAPTURE["capture_time"], 6)
    assert frame.f_number == pytest.approx(1.8) and frame.focal_length == pytest.approx(35.0)
    assert frame.exposure_time == pytest.approx(0.1)
