"""The folder run: batches of same-size frames, every format byte-identical between modes,
paths from stdin / @list, the failure report, --skip-existing after an interrupted run,
bad input (a full disk, an unwritable folder, two inputs for one name), and the files
shared out between ranks (--devices, torchrun; gloo on CPU processes)."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.cli import input_paths, main
from engine.inference.batch import enhance_files
from engine.io.output import OutputOptions
from tests.dngfactory import make_bayer_dng, random_bytes_file

from .helpers import small_cpu_pipeline
from .test_cli import small_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pipe():
    return small_cpu_pipeline()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Seven files: sizes A A A B A A (+ one that does not decode in the middle); no ISO in a5."""
    d = tmp_path_factory.mktemp("folder")
    files = []
    for i, (h, w) in enumerate([(48, 64)] * 3 + [(40, 64)] + [(48, 64)] * 2):
        files.append(d / f"a{i}.dng")
        make_bayer_dng(files[-1], height=h, width=w, seed=i, iso=None if i == 5 else 800)
    files.insert(4, random_bytes_file(d / "broken.ARW"))
    return files


class Recording:
    """A pipeline that records the size of each call."""

    def __init__(self, pipe):
        self.pipe, self.calls, self.device = pipe, [], pipe.device

    def __call__(self, source, **kw):
        self.calls.append(len(source))
        return self.pipe(source, **kw)


@pytest.mark.parametrize("options", [OutputOptions("png"), OutputOptions("png", bits=16), OutputOptions("jpeg"),
                                     OutputOptions("tiff", compression="small"), OutputOptions("dng")])
def test_batches_of_same_size_frames_byte_identical_between_modes(pipe, folder, tmp_path, options):
    runs = {}
    for workers in (0, 2):
        rec = Recording(pipe)
        out = tmp_path / f"w{workers}"
        out.mkdir()
        results = enhance_files(rec, folder, [out / (f.stem + options.extension) for f in folder], fmt=options,
                                workers=workers, batch=2, ratio=100, steps=2, seed=1)
        errors = {r.source.name: r.error for r in results if r.error}
        assert set(errors) == {"broken.ARW", "a5.dng"}, errors
        assert "the input carries no ISO" in errors["a5.dng"]  # its group failed; retried alone, the rest done
        # a0 a1 | a2 (then B) | a3 (B) | broken is left out, a4 a5 (fails; retried one by one: a4, a5)
        assert rec.calls == [2, 1, 1, 2, 1, 1], rec.calls
        runs[workers] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(runs[0]) == sorted(f"a{i}{options.extension}" for i in range(5))
    assert runs[0] == runs[2]


def test_a_frame_in_a_batch_matches_it_alone_closely(pipe, folder, tmp_path):
    """Batch size changes only the convolution library's summation order: the 8-bit
    renderings of a batched and a lone frame differ by at most one level."""
    import numpy as np
    from PIL import Image

    good = [folder[0], folder[1]]
    for batch in (1, 2):
        (tmp_path / str(batch)).mkdir()
        enhance_files(pipe, good, [tmp_path / str(batch) / f"{f.stem}.png" for f in good], batch=batch, ratio=100,
                      steps=2, seed=1)
    for f in good:
        a, b = (np.asarray(Image.open(tmp_path / str(k) / f"{f.stem}.png")).astype(int) for k in (1, 2))
        assert np.abs(a - b).max() <= 1


def test_paths_from_stdin_and_list_files(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.dng\n\n/abs/b dng.ARW\n")
    assert input_paths(["x.dng", f"@{listing}", "-"], stdin=__import__("io").StringIO("c.NEF\nd.dng\n")) == [
        Path("x.dng"), Path("a.dng"), Path("/abs/b dng.ARW"), Path("c.NEF"), Path("d.dng")]


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "training", "enhance", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, **kw)


def test_cli_reads_stdin_reports_every_failure_at_the_end(folder, tmp_path):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, folder[4:])) + "\n")  # broken, a4, a5
    done = _cli(["-", f"@{listing}", "--ratio", "100", "--checkpoint", str(ckpt), "-o", str(tmp_path / "out"),
                 "--device", "cpu", "--steps", "1", "--format", "jpeg", "-q"],
                input="\n".join(map(str, folder[:4])) + "\n")
    assert done.returncode == 1, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"a{i}.jpg" for i in range(5)]
    summary = done.stderr[done.stderr.index("5 of 7 files enhanced"):]
    assert "2 failed:" in summary and f"  {folder[4]}" in summary and f"  {folder[6]}" in summary  # the report


def test_skip_existing_finishes_an_interrupted_run_and_trusts_no_temporary(pipe, folder, tmp_path):
    good = [f for f in folder if f.name not in ("broken.ARW", "a5.dng")]
    out = tmp_path / "out"
    out.mkdir()
    outputs = [out / f"{f.stem}.png" for f in good]
    enhance_files(pipe, good[:2], outputs[:2], ratio=100, steps=1, seed=0)
    # A run killed mid-write leaves only a hidden temporary beside the name, never the name.
    (out / ".a2.png.0123456789ab.tmp").write_bytes(b"\x89PNG half")
    done = []
    results = enhance_files(pipe, good, outputs, ratio=100, steps=1, seed=0, skip_existing=True,
                            on_done=lambda r: done.append(r.source.name))
    assert [r.skipped for r in results] == [True, True, False, False, False]
    assert all(r.error is None for r in results) and sorted(done) == sorted(f.name for f in good)
    assert all(o.is_file() and o.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for o in outputs)


def test_disk_full_mid_write_fails_that_file_only(folder, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes the kernel refuse a write part-way, as a full
    disk does: the big 16-bit TIFF of the large frame fails mid-write, the small ones are
    written, no partial file is left under any name, and the message says why."""
    ckpt = small_checkpoint(tmp_path / "m.pt")
    big = tmp_path / "big.dng"
    make_bayer_dng(big, height=160, width=240, seed=9)  # 16-bit TIFF: 160 * 240 * 6 = 230 kB
    out = tmp_path / "out"
    limit = 100_000  # bytes; the small frames' TIFFs are ~18 kB
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from engine.cli import main
        sys.exit(main({["enhance", str(folder[0]), str(big), str(folder[1]), "--ratio", "100", "--checkpoint", str(ckpt), "-o",
                        str(out), "--device", "cpu", "--steps", "1", "--format", "tiff", "--workers", "1", "-q"]!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a0.tiff", "a1.tiff"]  # no big.tiff, no temporary
    assert f"FAILED {big}" in done.stderr and "File too large" in done.stderr
    assert "nothing was left under that name" in done.stderr and "2 of 3 files enhanced" in done.stderr


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create files in: read-only permissions, and for root
    (whom permissions do not stop) the immutable attribute (chattr, e2fsprogs)."""
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    immutable = False
    if _can_write(d):
        if shutil.which("chattr") is None:
            pytest.skip("running as root and chattr (e2fsprogs) is not installed: no way to make a folder unwritable")
        immutable = subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
        if not immutable or _can_write(d):
            pytest.skip("running as root on a file system without the immutable attribute: no unwritable folder")
    yield d
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    d.chmod(0o755)


def test_unwritable_output_folder(pipe, folder, unwritable, tmp_path, capsys):
    good = folder[:2]
    results = enhance_files(pipe, good, [unwritable / f"{f.stem}.png" for f in good], ratio=100, steps=1)
    assert all(r.error and f"cannot write into {unwritable}" in r.error for r in results), results
    ckpt = small_checkpoint(tmp_path / "m.pt")
    code = main(["enhance", *map(str, good), "--ratio", "100", "--checkpoint", str(ckpt), "-o", str(unwritable),
                 "--device", "cpu", "-q"])
    assert code == 2 and f"cannot write into the output folder {unwritable}" in capsys.readouterr().err
    assert list(unwritable.iterdir()) == []


def test_two_inputs_for_one_name_get_distinct_outputs_and_progress_shows_rate_and_eta(tmp_path, capsys):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    make_bayer_dng(tmp_path / "x.dng", height=32, width=48, seed=1)
    (tmp_path / "b").mkdir()
    make_bayer_dng(tmp_path / "b" / "x.dng", height=32, width=48, seed=2)
    make_bayer_dng(tmp_path / "x.DNG.dng", height=32, width=48, seed=3)
    out = tmp_path / "out"
    code = main(["enhance", str(tmp_path / "x.dng"), str(tmp_path / "b" / "x.dng"), str(tmp_path / "x.DNG.dng"),
                 "--ratio", "50", "--checkpoint", str(ckpt), "-o", str(out), "--device", "cpu", "--steps", "1",
                 "--format", "jpeg"])
    assert code == 0
    err = capsys.readouterr().err
    bar = [part for part in err.split("\r") if "3/3 [" in part][-1]  # the bar's last refresh
    assert "<00:00" in bar and "file/s" in bar, bar  # done / total [elapsed<time left, rate]
    # x / x / x.DNG clash (case-insensitively) -> x.dng / x.dng / x.DNG.dng -> the folders tell the first two apart
    assert sorted(p.name for p in out.iterdir()) == sorted(["b_x.dng.jpg", f"{tmp_path.name}_x.dng.jpg",
                                                            "x.DNG.dng.jpg"])


# ----------------------------------------------------------------------------- ranks


def _ranks_agree_with_one_process(folder, tmp_path, launch):
    ckpt = small_checkpoint(tmp_path / "m.pt")
    good = [str(f) for f in folder if f.name not in ("broken.ARW",)]
    common = ["--ratio", "100", "--checkpoint", str(ckpt), "--steps", "1", "--seed", "2", "--format", "png", "-q"]
    one = _cli([*good, "-o", str(tmp_path / "one"), "--device", "cpu", *common])
    assert one.returncode == 1 and "5 of 6 files enhanced" in one.stderr  # a5 has no ISO
    many = launch(good, tmp_path / "many", common)
    assert many.returncode == 1, many.stderr
    assert many.stderr.count("files enhanced") == 1 and "5 of 6 files enhanced" in many.stderr  # one summary
    assert "by 2 processes" in many.stderr and "a5.dng" in many.stderr[many.stderr.index("files enhanced"):]
    ones = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    assert ones == {p.name: p.read_bytes() for p in (tmp_path / "many").iterdir()} and len(ones) == 5


def test_devices_share_the_files_between_processes(folder, tmp_path):
    _ranks_agree_with_one_process(folder, tmp_path, lambda files, out, common: _cli(
        [*files, "-o", str(out), "--devices", "cpu,cpu", *common]))


def test_torchrun_shares_the_files_between_ranks(folder, tmp_path):
    def torchrun(files, out, common):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "training", "enhance", *files, "-o", str(out), "--device", "cpu", *common],
                              capture_output=True, text=True, timeout=600, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    _ranks_agree_with_one_process(folder, tmp_path, torchrun)


# ----------------------------------------------------------------------------- issue 22
def test_workers_are_capped_by_files_and_cores(pipe, folder, tmp_path, monkeypatch):
    """`--workers 16` for 2 files started 32 processes (6.2 GB): a pool gets at most one
    process per file to enhance (and, from the command line, one per core)."""
    import engine.cli as cli
    import engine.inference.batch as batch

    started, alive = [], []
    real_pool = batch.worker_pool

    def counting_pool(workers, start_method=None):
        pool = real_pool(workers, start_method)
        started.append(pool)
        shutdown = pool.shutdown

        def counted_shutdown(*a, **k):
            alive.append(len(pool._processes))  # the processes the pool really started
            return shutdown(*a, **k)

        pool.shutdown = counted_shutdown
        return pool

    monkeypatch.setattr(batch, "worker_pool", counting_pool)
    results = enhance_files(pipe, folder[:2], [tmp_path / "a.png", tmp_path / "b.png"], workers=16, ratio=50, steps=1,
                            K=1.0)
    assert all(r.error is None for r in results)
    assert [p._max_workers for p in started] == [2, 2]
    assert alive and max(alive) <= 2
    import torch

    cores = cli._cores()
    assert cli._workers("16", torch.device("cpu"), files=2) == min(2, cores)
    assert cli._workers("16", torch.device("cpu"), files=100) == min(16, cores)
    assert cli._workers("16", torch.device("cuda"), ranks_here=cores, files=100) == 1
    assert cli._workers("auto", torch.device("cpu"), files=100) == 0
    assert cli._workers("auto", torch.device("cuda"), files=1) == 1


def test_progress_inside_a_group_of_frames(pipe, folder, tmp_path):
    """on_step: (step, steps, frames of the call) after each network evaluation, so a bar can
    move inside a large file; with batch 2, two frames share each call."""
    seen = []
    enhance_files(pipe, folder[:3], [tmp_path / f"{i}.png" for i in range(3)], batch=2, ratio=50, steps=2, K=1.0,
                  on_step=lambda *a: seen.append(a))
    assert seen == [(1, 2, 2), (2, 2, 2), (1, 2, 1), (2, 2, 1)]
