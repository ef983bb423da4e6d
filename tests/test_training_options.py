"""The training commands' options (issue 15, items 6 and 7): every numeric option refused
at parse time with a message naming it; TrainConfig refuses the same values; every option
of every command has help; after a kill the log does not repeat steps; an unreadable
last.pt stops with a clear message, and --restart starts over without deleting anything."""
import json

import pytest
import torch

from engine.cli import build_parser
from training.cli import add_training_commands, main
from training.trainer import Trainer, TrainingStateError
from tests.test_trainer import ToyPatches, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def parse_error(argv, capsys) -> str:
    """The usage error argparse prints for ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as info:
        build_parser(add_training_commands).parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


TRAIN = ["train", "--out", "unused"]


@pytest.mark.parametrize("option, value, message", [
    ("--batch", "0", "must be an integer in [1, 4096], got 0"),
    ("--batch", "-2", "must be an integer in [1, 4096], got -2"),
    ("--batch", "100000", "must be an integer in [1, 4096], got 100000"),
    ("--batch", "two", "expected an integer, got 'two'"),
    ("--steps", "0", r"must be an integer in [1, 100], got 0"),
    ("--steps", "101", r"must be an integer in [1, 100], got 101"),
    ("--accumulate", "0", "must be an integer in [1, 4096], got 0"),
    ("--save-every", "0", "must be an integer >= 1, got 0"),
    ("--log-every", "0", "must be an integer >= 1, got 0"),
    ("--max-steps", "-5", "must be an integer >= 1, got -5"),
    ("--max-steps", "0", "must be an integer >= 1, got 0"),
    ("--epochs", "-1", "must be an integer in [1, 1000000], got -1"),
    ("--iters-per-epoch", "0", "must be an integer in [1, 10000000], got 0"),
    ("--eval-every", "-1", "must be an integer >= 0, got -1"),
    ("--clip-grad", "-1", "must be a finite number > 0, got -1"),
    ("--clip-grad", "0", "must be a finite number > 0, got 0"),
    ("--clip-grad", "nan", "must be a finite number > 0, got nan"),
    ("--lr", "0", "must be a finite number in (0, 1], got 0"),
    ("--lr", "inf", "must be a finite number in (0, 1], got inf"),
    ("--patch", "20", "must be a multiple of 16, got 20"),
    ("--patch", "0", "must be an integer in [16, 8192], got 0"),
    ("--seed", "-1", "must be an integer in [0, 18446744073709551615], got -1"),
    ("--seed", "1.5", "expected an integer, got '1.5'"),
    ("--device", "meta", "'meta' holds no data"),
    ("--device", "gpu0", "expected auto, cpu, cuda or cuda:N, got 'gpu0'"),
    ("--noise-model", "P+x", "unknown noise component 'x'"),
    ("--camera", "NoSuchCam", "unknown camera 'NoSuchCam'"),
])
def test_train_options_are_refused_at_parse_time(capsys, option, value, message):
    err = parse_error([*TRAIN, option, value], capsys)
    assert f"argument {option}: {message}" in err


@pytest.mark.parametrize("argv, message", [
    (["--widths", "8", "8", "16", "16", "0"], "argument --widths: must be an integer in [1, 4096], got 0"),
    (["--ratio-range", "0", "300"], "argument --ratio-range: must be a finite number in (1, 10000], got 0"),
])
def test_multi_value_train_options(capsys, argv, message):
    assert message in parse_error([*TRAIN, *argv], capsys)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: must be an integer in [1, 100], got 0"),
    (["--holdout", "0"], "argument --holdout: must be an integer >= 1, got 0"),
    (["--patch", "100"], "argument --patch: must be a multiple of 16, got 100"),
    (["--ratios", "100", "-3"], "argument --ratios: must be a finite number in (1, 10000], got -3"),
])
def test_evaluate_options_are_refused_at_parse_time(capsys, argv, message):
    assert message in parse_error(["evaluate", "--checkpoint", "m.pt", *argv], capsys)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: must be an integer in [1, 100], got 0"),
    (["--ratio", "0"], "argument --ratio: must be a finite number in (0, 10000], got 0"),
    (["--K", "1e-45"], "argument --K: must be a finite number in [0.01, 10000], got 1e-45"),
    (["--iso", "-100"], "argument --iso: must be a finite number > 0, got -100"),
    (["--seed", "-3"], "argument --seed: must be an integer in [0, 18446744073709551615], got -3"),
    (["--max-tile", "100"], "argument --max-tile: must be a multiple of 16, got 100"),
])
def test_enhance_options_are_refused_at_parse_time(capsys, argv, message):
    argv = ["enhance", "a.dng", *(["--ratio", "100"] if "--ratio" not in argv else []), *argv]
    assert message in parse_error(argv, capsys)


def test_evaluate_holdout_too_large_for_memory(capsys):
    assert main(["evaluate", "--checkpoint", "m.pt", "--holdout", "4000", "--patch", "512"]) == 2
    assert "a hold-out of 4000 patches of 512^2 would take 7.8 GiB of memory, above the limit of 4 GiB" in \
        capsys.readouterr().err


def test_calibrate_ppcc_samples_refused_at_parse_time(capsys):
    err = parse_error(["calibrate", "capture", "-o", "p.json", "--ppcc-samples", "10"], capsys)
    assert "argument --ppcc-samples: must be an integer >= 1000, got 10" in err


def test_every_option_of_every_command_has_help():
    parser = build_parser(add_training_commands)
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items()
               for a in p._actions if a.dest != "help" and not (a.help or "").strip()]
    assert not missing, f"options without help: {missing}"
    assert set(sub.choices) >= {"enhance", "calibrate", "train", "evaluate", "export"}


@pytest.mark.parametrize("kw, message", [
    (dict(batch=0), r"batch must be an integer in \[1, 4096\], got 0"),
    (dict(accumulate=0), r"accumulate must be an integer in \[1, 4096\], got 0"),
    (dict(save_every=0), "save_every must be an integer >= 1, got 0"),
    (dict(log_every=0), "log_every must be an integer >= 1, got 0"),
    (dict(epochs=-1), r"epochs must be an integer in \[1, 1000000\], got -1"),
    (dict(iters_per_epoch=10**7, batch=16), r"iters_per_epoch x batch = 160000000 samples per epoch, above the "
                                            r"limit of 100000000"),
    (dict(clip_grad=-1.0), "clip_grad must be a finite number > 0, got -1"),
    (dict(steps=2.0), "steps must be an integer, got 2.0"),
    (dict(seed=2**64), "seed must be an integer in"),
    (dict(amp="int8"), "amp must be None, 'bf16' or 'fp16', got 'int8'"),
    (dict(noise_model="Q"), "unknown noise component 'Q'"),
    (dict(steps=5, ratio_range=(3, 10)), r"the lowest exposure ratio 3 leaves 1 integer exposure multiples in \[2, r - 1\], "
                                        r"fewer than steps - 1 = 4"),
    (dict(ratio_range=(50, 20000)), r"ratio_range must lie within \(0, 10000\]"),
    (dict(widths=(8, 8, 16, 16, 12000)), r"unet widths must be 5 integers in \[1, 4096\]"),
])
def test_train_config_refuses_the_same_values(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kw)


def test_train_config_accepts_numpy_integers():
    import numpy as np

    cfg = tiny_config(batch=np.int64(2), seed=np.uint64(7), lr=np.float32(1e-3))
    assert type(cfg.batch) is int and type(cfg.seed) is int and type(cfg.lr) is float


def test_max_steps_is_checked_by_fit(tmp_path):
    trainer = Trainer(tiny_config(), ToyPatches(), tmp_path, device="cpu", progress=False)
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1, got -5"):
        trainer.fit(max_steps=-5)
    assert not (tmp_path / "last.pt").exists()


# ------------------------------------------------------------------ item 7: resume
def _records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _comparable(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_log_has_no_repeated_steps_after_a_kill_and_resume(tmp_path, monkeypatch, capsys):
    cfg = dict(log_every=1, save_every=3, epochs=3, iters_per_epoch=3)
    straight = Trainer(tiny_config(**cfg), ToyPatches(), tmp_path / "straight", device="cpu", progress=False)
    straight.fit()

    run = tmp_path / "killed"
    Trainer(tiny_config(**cfg), ToyPatches(), run, device="cpu", progress=False).fit(max_steps=3)  # last.pt at 3
    doomed = Trainer(tiny_config(**cfg), ToyPatches(), run, device="cpu", progress=False)
    assert doomed.resume() and doomed.global_step == 3
    monkeypatch.setattr(doomed, "save", lambda: None)  # killed before its next checkpoint
    doomed.fit(max_steps=2)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"loss": 0.12, "l1_per')  # and mid-way through a log line
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines[:-1]] == [1, 2, 3, 4, 5]  # steps 4, 5 are lost

    resumed = Trainer(tiny_config(**cfg), ToyPatches(), run, device="cpu", progress=False)
    assert resumed.resume() and resumed.global_step == 3
    capsys.readouterr()
    resumed.fit()
    assert "log.jsonl: 3 record(s) of steps after the checkpoint's step 3 dropped" in capsys.readouterr().err
    steps = [r["global_step"] for r in _records(run)]
    assert steps == list(range(1, 10))
    assert _comparable(_records(run)) == _comparable(_records(tmp_path / "straight"))


def test_a_fresh_start_keeps_the_log_of_a_run_killed_before_its_first_checkpoint(tmp_path, capsys):
    """Issue 22, item 5: a run stopped before its first checkpoint left log.jsonl; the same
    command again found nothing to resume, started at step 0 and emptied the log (trimmed to
    step 0). It now moves the earlier files into previous-N/ and says so."""
    run = tmp_path / "run"
    run.mkdir()
    old = "".join(json.dumps({"global_step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3))
    (run / "log.jsonl").write_text(old)
    (run / "model.pt").write_bytes(b"an earlier model")
    trainer = Trainer(tiny_config(log_every=1, epochs=1, iters_per_epoch=2), ToyPatches(), run, device="cpu",
                      progress=False)
    assert not trainer.resume()
    trainer.fit()
    assert [r["global_step"] for r in _records(run)] == [1, 2] and _records(run)[0]["loss"] != 9.0
    assert (run / "previous-1" / "log.jsonl").read_text() == old
    assert (run / "previous-1" / "model.pt").read_bytes() == b"an earlier model"
    assert f"held files of an earlier run that this run does not continue (none resumed; e.g. a run stopped before " \
           f"its first save): moved them into {run / 'previous-1'}; starting at step 0" in capsys.readouterr().err


def _truncated_run(tmp_path):
    run = tmp_path / "run"
    Trainer(tiny_config(log_every=1), ToyPatches(), run, device="cpu", progress=False).fit(max_steps=2)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    return run


def test_truncated_last_pt_gives_a_clear_message(tmp_path):
    run = _truncated_run(tmp_path)
    trainer = Trainer(tiny_config(log_every=1), ToyPatches(), run, device="cpu", progress=False)
    with pytest.raises(TrainingStateError, match=r"cannot resume: checkpoint .*last.pt: not a readable PyTorch "
                                                 r"checkpoint \(truncated, corrupted.*run again with --restart"):
        trainer.resume()


CLI_TINY = ["--patch", "32", "--batch", "2", "--widths", "8", "8", "16", "16", "16", "--steps", "2",
            "--epochs", "1", "--iters-per-epoch", "2", "--noise-model", "P+g", "--device", "cpu", "-q"]


def test_cli_stops_on_a_truncated_last_pt_and_restart_keeps_the_old_files(tmp_path, capsys):
    run = _truncated_run(tmp_path)
    broken = (run / "last.pt").read_bytes()
    assert main(["train", "--out", str(run), *CLI_TINY]) == 2
    err = capsys.readouterr().err
    assert "error: cannot resume: checkpoint" in err and "--restart" in err and "Traceback" not in err
    assert (run / "last.pt").read_bytes() == broken  # nothing touched
    assert main(["train", "--out", str(run), "--restart", *CLI_TINY]) == 0
    assert f"the previous run's files are now in {run / 'previous-1'}" in capsys.readouterr().err
    assert (run / "previous-1" / "last.pt").read_bytes() == broken
    assert {p.name for p in (run / "previous-1").iterdir()} == {"last.pt", "model.pt", "log.jsonl"}
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 2


def test_cli_reports_options_contradicting_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *CLI_TINY]) == 0
    assert main(["train", "--out", str(run), *CLI_TINY, "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "was written with other options (saved, now): {'lr': (0.0001, 0.5)}" in err and "Traceback" not in err
