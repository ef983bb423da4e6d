"""Faults and limits across engine, CLI and training (issue #6): arrays, a killed
training run, and the CLI over 200 files with bad ones among them."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from engine import BackboneConfig, InvalidRawError, Pipeline, save_checkpoint
from engine.cli import main as cli_main
from tests.dngfactory import jpeg_as_raw, make_bayer_dng, random_bytes_file, truncated_copy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"widths": (8, 8, 16, 16, 16)}
ARR = dict(pattern="RGGB", black_level=512, white_level=16383, K=1.0, ratio=10, steps=1)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    cfg = BackboneConfig(options=SMALL)
    return Pipeline(cfg.build(), cfg, device="cpu", precision="fp32", fidelity_scale=None)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.random.rand(32, 32).astype(np.float32) * 1000, "dtype float32; expected uint16 DN"),
        (np.full((32, 32), np.nan, dtype=np.float32), "dtype float32; expected uint16 DN"),
        (-np.ones((32, 32), dtype=np.int16), "dtype int16; expected uint16 DN"),
        (np.zeros((0, 32), dtype=np.uint16), r"zero-size array \(shape \(0, 32\)\)"),
        (np.full((1, 5), 600, dtype=np.uint16), "smaller than one 2x2 CFA cell"),
        (np.full((2, 3, 32, 32), 600, dtype=np.uint16), r"expected a 2-D \[H, W\] CFA mosaic"),
    ],
)
def test_bad_arrays_are_refused(pipe, array, match):
    with pytest.raises(InvalidRawError, match=match):
        pipe(array, **ARR)


def test_limits_that_are_accepted(pipe):
    """Values above white saturate (as the sensor does); frames below the backbone's
    16-pixel granularity are padded; non-contiguous views are read in place."""
    above = pipe(np.full((32, 32), 60000, dtype=np.uint16), stochastic=False, **ARR)
    at_white = pipe(np.full((32, 32), 16383, dtype=np.uint16), stochastic=False, **ARR)
    assert torch.equal(above.raw, at_white.raw)
    tiny = pipe(np.full((2, 2), 600, dtype=np.uint16), **ARR)
    assert tiny.raw.shape == (4, 1, 1)
    base = np.random.default_rng(0).integers(512, 4000, (64, 64)).astype(np.uint16)
    view = pipe(base[::2, ::2], stochastic=False, **ARR).raw
    copy = pipe(np.ascontiguousarray(base[::2, ::2]), stochastic=False, **ARR).raw
    assert torch.equal(view, copy)


def test_same_seed_is_bit_identical_single_and_batch(pipe):
    frames = np.random.default_rng(1).integers(512, 3000, (3, 32, 48)).astype(np.uint16)
    kw = dict(ARR, ratio=100, steps=3)
    for src in (frames[0], frames):
        a, b = pipe(src, seed=11, **kw), pipe(src, seed=11, **kw)
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        assert all(torch.equal(x.raw, y.raw) for x, y in zip(a, b))


class _PixelwiseNet(torch.nn.Module):
    """A backbone whose arithmetic cannot depend on the batch size (no convolution
    algorithm choice): 9-channel head from pointwise maps of the 4 + 4 input channels."""

    def forward(self, x):
        a, photon = x[:, :4], x[:, 4:8]
        return torch.cat([a[:, :1] - 0.5, 0.9 * a + 0.05, 0.1 * a - photon], 1)


def test_a_frame_gives_the_same_draws_alone_or_in_a_batch():
    """With a fixed seed, frame i of a batch is enhanced bit-identically to frame i alone
    when the backbone's arithmetic is batch-independent: each step's Philox key is shared
    by the batch and draws are indexed within a frame."""
    cfg = BackboneConfig(options=SMALL, with_photon=True)
    pixelwise = Pipeline(_PixelwiseNet(), cfg, device="cpu", precision="fp32", fidelity_scale=None)
    frames = np.random.default_rng(2).integers(512, 3000, (3, 32, 48)).astype(np.uint16)
    kw = dict(ARR, ratio=100, steps=3)
    batch = pixelwise(frames, seed=21, **kw)
    for i in range(3):
        assert torch.equal(batch[i].raw, pixelwise(frames[i], seed=21, **kw).raw), i
    assert not torch.equal(batch[0].raw, pixelwise(frames[0], seed=22, **kw).raw)  # still stochastic


def test_a_frame_in_a_batch_matches_it_alone_up_to_convolution_rounding(pipe):
    """A real UNet: oneDNN / cuDNN may sum in another order for another batch size, so a
    frame in a batch agrees with the frame alone to float rounding (an occasional
    Poisson count one apart), not bit for bit."""
    frames = np.random.default_rng(2).integers(512, 3000, (3, 32, 48)).astype(np.uint16)
    kw = dict(ARR, ratio=100, steps=3)
    batch = pipe(frames, seed=21, **kw)
    other_seed = pipe(frames[0], seed=22, **kw).raw
    for i in range(3):
        alone = pipe(frames[i], seed=21, **kw).raw
        assert (batch[i].raw - alone).abs().max() < 1e-3, i
    assert (batch[0].raw - other_seed).abs().max() > 1e-3  # the tolerance is far below the noise


def _train_cmd(out, extra=()):
    return [sys.executable, "-m", "training", "train", "--out", str(out), "--patch", "32", "--batch", "2",
            "--widths", "8", "8", "16", "16", "16", "--steps", "2", "--epochs", "4", "--iters-per-epoch", "10",
            "--save-every", "2", "--log-every", "1000", "-q", *extra]


def test_training_killed_mid_epoch_resumes_with_nothing_lost(tmp_path):
    """Weights bit-identical to an uninterrupted run, and log.jsonl too: no step logged
    twice (the steps after the last checkpoint are dropped on resume, issue 15 item 7)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log_each = ("--log-every", "1")
    straight = subprocess.run(_train_cmd(tmp_path / "straight", log_each), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    victim = subprocess.Popen(_train_cmd(tmp_path / "killed", log_each), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline, last = time.time() + 300, tmp_path / "killed" / "last.pt"
    step = 0
    while time.time() < deadline and victim.poll() is None:
        if last.is_file():
            try:
                step = torch.load(last, weights_only=True)["global_step"]
            except Exception:  # noqa: BLE001 - cannot be half-written (atomic), but be safe
                step = 0
            if step >= 6:
                break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert 6 <= step < 40  # killed in the middle of epoch 0..3
    resumed = subprocess.run(_train_cmd(tmp_path / "killed", log_each), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 40
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert not list((tmp_path / "killed").glob(".*.tmp"))
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("straight", "killed")]
    assert [r["global_step"] for r in logs[1]] == list(range(1, 41))
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, sig, code):
    """Issue 22, item 5, with a real process: Ctrl-C printed a KeyboardInterrupt traceback and
    lost every step since the last save (here no periodic save at all); the same command
    then restarted from step 0 and emptied log.jsonl. Now: a checkpoint at the step
    boundary, exit 128 + signal, a line saying how to resume; the rerun continues the log."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    cmd = _train_cmd(out, ("--log-every", "1", "--save-every", "1000"))
    victim = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, deadline = out / "log.jsonl", time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if log.is_file() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be stopped"
    victim.send_signal(sig)
    err = victim.communicate(timeout=300)[1]
    assert victim.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    step = torch.load(out / "last.pt", weights_only=True)["global_step"]
    assert 3 <= step < 40
    assert f"stopped by {sig.name} at step {step}" in err and "To resume, run the same command again: " in err
    steps = [json.loads(line)["global_step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, step + 1))
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and f"resumed from {out}/last.pt at epoch" in again.stderr, again.stderr
    assert [json.loads(line)["global_step"] for line in log.read_text().splitlines()] == list(range(1, 41))
    assert torch.load(out / "last.pt", weights_only=True)["global_step"] == 40


def test_stale_temporaries_of_a_killed_save_are_removed_on_resume(tmp_path):
    """SIGKILL during a checkpoint write leaves ``.last.pt.<hex>.tmp`` (last.pt itself is
    intact); the next run's resume removes exactly those, nothing else."""
    from engine.io.atomic import remove_stale_temporaries
    from training.trainer import TrainConfig, Trainer
    from tests.test_trainer import ToyPatches

    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".last.pt.0123456789ab.tmp", out / ".model.pt.ba9876543210.tmp"]
    kept = [out / ".last.pt.notours.tmp", out / ".other.pt.0123456789ab.tmp", out / "notes.txt"]
    for f in stale + kept:
        f.write_bytes(b"partial")
    trainer = Trainer(TrainConfig(widths=(8, 8, 16, 16, 16), patch=32, batch=2, steps=1, noise_model="P+g"),
                      ToyPatches(), out, device="cpu", progress=False)
    assert trainer.resume() is False  # nothing to resume from, but the litter is gone
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)
    assert remove_stale_temporaries(out / "last.pt") == []


def test_cli_over_200_files_with_bad_ones(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = BackboneConfig(options=SMALL)
    save_checkpoint(cfg.build(), cfg, tmp_path / "m.pt")
    src = tmp_path / "in"
    src.mkdir()
    make_bayer_dng(src / "proto.dng", height=32, width=32)
    proto = (src / "proto.dng").read_bytes()
    files = []
    for i in range(196):
        p = src / f"f{i:03d}.dng"
        p.write_bytes(proto)
        files.append(p)
    bad = [random_bytes_file(src / "bad0.ARW"), truncated_copy(src / "proto.dng", src / "bad1.dng"),
           jpeg_as_raw(src / "bad2.ARW"), src / "bad3.NEF"]
    bad[3].write_bytes(b"")
    (src / "proto.dng").unlink()
    out = tmp_path / "out"
    code = cli_main(["enhance", *map(str, files + bad), "--ratio", "20", "--checkpoint", str(tmp_path / "m.pt"),
                     "-o", str(out), "--device", "cpu", "--steps", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 1
    for b in bad:
        assert f"FAILED {b}" in err
    assert err.count("FAILED") == 4 and "196 of 200 files enhanced" in err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f.stem + ".png" for f in files)
