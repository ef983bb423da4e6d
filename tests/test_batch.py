"""engine.inference.batch: many files, decoding and encoding in worker processes overlapped with the
pipeline, the same outputs as one file after the other, per-file errors."""
import pytest
import rawpy

from engine.inference.batch import enhance_files
from engine.cli import main
from tests.dngfactory import make_bayer_dng, random_bytes_file, truncated_copy

from .helpers import small_cpu_pipeline
from .test_cli import small_checkpoint



@pytest.fixture(scope="module")
def pipe():
    return small_cpu_pipeline()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raws")
    files = []
    for i, pattern in enumerate(["RGGB", "GRBG", "BGGR", "GBRG"]):
        make_bayer_dng(folder / f"f{i}.dng", height=48 + 2 * i, width=64, pattern=pattern, seed=i)
        files.append(folder / f"f{i}.dng")
    bad = [random_bytes_file(folder / "noise.ARW"), truncated_copy(files[0], folder / "cut.dng")]
    return files[:2] + [bad[0]] + files[2:] + [bad[1]]  # bad ones in the middle and at the end


@pytest.mark.parametrize("fmt", ["png", "tiff", "dng"])
def test_worker_processes_write_what_one_after_the_other_writes(pipe, inputs, tmp_path, fmt):
    call = dict(ratio=100, steps=2, seed=3)
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        seen = []
        results = enhance_files(pipe, inputs, [out / f"{p.stem}.{fmt}" for p in inputs], fmt=fmt, workers=workers,
                                on_done=lambda r: seen.append(r.source.name), **call)
        assert sorted(seen) == sorted(p.name for p in inputs)  # progress once per file
        assert [r.source for r in results] == inputs
        failed = {r.source.name for r in results if r.error is not None}
        assert failed == {"noise.ARW", "cut.dng"}, [r.error for r in results]
        assert all("Error" in r.error for r in results if r.error)
        runs[workers] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(runs[0]) == sorted(f"f{i}.{fmt}" for i in range(4))  # every good output exactly once
    assert runs[0] == runs[2]  # byte for byte
    if fmt == "dng":
        with rawpy.imread(str(tmp_path / "w2" / "f1.dng")) as raw:  # a raw editor can open it
            assert raw.raw_image_visible.shape == (50, 64)


def test_refusals(pipe, inputs, tmp_path):
    with pytest.raises(ValueError, match="got 6 files but 1 output paths"):
        enhance_files(pipe, inputs, [tmp_path / "a.png"], ratio=100)
    with pytest.raises(ValueError, match="workers must be an integer >= 0, got -1"):
        enhance_files(pipe, inputs[:1], [tmp_path / "a.png"], workers=-1, ratio=100)


def test_cli_workers_option(inputs, tmp_path, capsys):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    code = main(["enhance", *map(str, inputs), "--ratio", "100", "--checkpoint", str(ckpt), "-o", str(out),
                 "--device", "cpu", "--steps", "1", "--seed", "0", "--workers", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "4 of 6 files enhanced" in err and err.count("FAILED") == 2
    assert sorted(p.name for p in out.iterdir()) == [f"f{i}.png" for i in range(4)]
    with pytest.raises(SystemExit):
        main(["enhance", str(inputs[0]), "--ratio", "100", "--workers", "many"])


def test_workers_start_from_a_script_without_a_main_guard(tmp_path, inputs):
    """Forked workers do not re-import the caller's __main__: library code run as a plain
    script (no ``if __name__ == "__main__":``) or from stdin works with workers."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from engine import BackboneConfig, Pipeline
        from engine.inference.batch import enhance_files
        cfg = BackboneConfig(options={{"widths": (8, 8, 16, 16, 16)}})
        pipe = Pipeline(cfg.build(), cfg, device="cpu", precision="fp32")
        files = {[str(p) for p in inputs[:2]]!r}
        results = enhance_files(pipe, files, [r"{tmp_path}/a.png", r"{tmp_path}/b.png"], workers=2, ratio=100, steps=1)
        assert [r.error for r in results] == [None, None], results
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()
