"""The train / evaluate commands end to end on tiny sizes, and SID-pair evaluation."""
import json

import pytest
import torch

from engine import BackboneConfig, load_checkpoint
from engine.models.checkpoint import save_checkpoint
from tests.dngfactory import make_bayer_dng
from training.cli import main
from training.evaluate import evaluate_sid, evaluate_synthetic
from training.sid import SIDPairDataset

TINY = ["--patch", "64", "--batch", "2", "--widths", "8", "8", "16", "16", "16", "--steps", "2", "-q"]


def test_train_then_resume_then_evaluate_then_enhance(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "2", "--iters-per-epoch", "2", "--max-steps", "3", *TINY]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["global_step"] == 3 and (run / "model.pt").is_file()
    assert main(["train", "--out", str(run), "--epochs", "2", "--iters-per-epoch", "2", *TINY]) == 0
    assert "resumed from" in capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["global_step"] == 4
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "model.pt"), "--holdout", "2", "--patch", "64", "--steps", "2",
                 "--baselines", "wavelet", "--json", str(out_json), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "photo hold-out: 2 scenes" in printed and "noisy input" in printed and "model 2" in printed
    table = json.loads(out_json.read_text())["holdout"]
    assert set(table) == {"100.0", "300.0"}
    assert all(len(m["psnr"]) == 2 and min(m["psnr"]) > 0 for v in table.values() for m in v.values())
    assert main(["export", "--checkpoint", str(run / "model.pt"), "--public", str(tmp_path / "public.pt")]) == 0
    public = torch.load(tmp_path / "public.pt", weights_only=True)
    assert set(public) == {"netG", "epoch", "iterations"} and public["iterations"] == 4
    model, config, meta = load_checkpoint(tmp_path / "public.pt")
    ours, _, _ = load_checkpoint(run / "model.pt")
    assert meta["format"] == "public" and config.in_channels == 8
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in model.state_dict().items())
    make_bayer_dng(tmp_path / "a.dng", height=64, width=64)
    assert main(["enhance", str(tmp_path / "a.dng"), "--ratio", "50", "--checkpoint", str(run / "model.pt"),
                 "-o", str(tmp_path / "out"), "--device", "cpu", "--steps", "2", "-q"]) == 0
    assert (tmp_path / "out" / "a.png").is_file()


def test_train_options_reach_the_run(tmp_path, capsys):
    """--init from a narrower checkpoint with --concat-origin, --mean-photons, --detach-states,
    --inner-exposures geometric, --step-weights: the run's saved config carries them, its model
    records its photon mode and schedule, and its first layer is the init's, widened with zeros;
    step weights that do not fit the steps are a usage error."""
    base = tmp_path / "base"
    assert main(["train", "--out", str(base), "--epochs", "1", "--iters-per-epoch", "1", *TINY]) == 0
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--iters-per-epoch", "1", "--lr", "1e-9",
                 "--init", str(base / "model.pt"), "--concat-origin", "--mean-photons", "--detach-states",
                 "--inner-exposures", "geometric", *TINY, "--step-weights", "1", "3"]) == 0
    config = torch.load(run / "last.pt", weights_only=True)["config"]
    assert config["concat_origin"] and config["mean_photons"] and config["detach_states"]
    assert config["inner_exposures"] == "geometric" and config["step_weights"] == [0.25, 0.75]
    init, _, _ = load_checkpoint(base / "model.pt")
    model, backbone, meta = load_checkpoint(run / "model.pt")
    assert backbone.in_channels == 12 and meta["photons"] == "means" and meta["schedule"] == "geometric"
    assert meta["step_weights"] == [0.25, 0.75]
    assert load_checkpoint(base / "model.pt")[2]["photons"] == "draws"
    w = model.conv1_1.weight.float()
    torch.testing.assert_close(w[:, :8], init.conv1_1.weight.float(), rtol=0, atol=1e-6)  # lr 1e-9: one tiny step
    assert w[:, 8:].abs().max() < 1e-6
    assert main(["train", "--out", str(tmp_path / "bad"), *TINY, "--step-weights", "1", "2", "3"]) == 2
    assert "step weights must be 2 finite numbers" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "last.pt").exists()


def test_hold_out_noise_parameters_do_not_depend_on_the_sampler(monkeypatch):
    """The hold-out's per-sample gains are drawn once, up front: a synthesis that consumes
    its generator differently (another sampler) must not change them."""
    import training.evaluate as ev

    cfg = BackboneConfig(out_channels=9, options={"widths": (8, 8, 16, 16, 16)})
    net = cfg.build()
    real = ev.synthesize_noise

    def gains_seen(extra_draws: int) -> torch.Tensor:
        seen = []

        def synthesis(clean, model, *, params, generator, **kw):
            seen.append(params.K.clone())
            torch.rand(extra_draws, generator=generator)  # extra_draws > 0: a hungrier sampler
            return real(clean, model, params=params, generator=generator, **kw)

        monkeypatch.setattr(ev, "synthesize_noise", synthesis)
        ev.evaluate_synthetic(net, cfg, ratios=(100,), steps=1, n=4, patch=32, batch=2)
        return torch.cat(seen)

    plain, hungry = gains_seen(0), gains_seen(1000)
    assert plain.numel() == 4 and torch.equal(plain, hungry)


def test_evaluations_are_repeatable_and_a_perfect_model_scores_high():
    cfg = BackboneConfig(out_channels=9, options={"widths": (8, 8, 16, 16, 16)})
    torch.manual_seed(0)
    net = cfg.build()
    a = evaluate_synthetic(net, cfg, ratios=(100,), steps=2, n=2, patch=64)
    b = evaluate_synthetic(net, cfg, ratios=(100,), steps=2, n=2, patch=64)
    assert a == b

    class Oracle(torch.nn.Module):
        """Predicts the clean image it was handed at construction (mask logit +30)."""

        def __init__(self, clean):
            super().__init__()
            self.clean = clean

        def forward(self, x):
            return torch.cat([torch.full_like(x[:, :1], 30.0), self.clean, torch.zeros_like(self.clean)], 1)

    from training.synthetic import synthetic_holdout
    from training.augment import normalise_packed

    h = synthetic_holdout(2, 64, 0)
    clean = normalise_packed(h.raw, h.black, h.white)
    perfect = evaluate_synthetic(Oracle(clean), cfg, ratios=(100,), steps=2, n=2, patch=64, batch=2)
    assert perfect[100.0]["psnr"] > 80 and perfect[100.0]["ssim"] > 0.999


def test_evaluate_sid_pairs(tmp_path):
    root = tmp_path / "SID"
    (root / "Sony" / "long").mkdir(parents=True)
    (root / "Sony" / "short").mkdir(parents=True)
    scene = torch.rand(64, 96, 3).numpy() * 0.5
    make_bayer_dng(root / "Sony" / "long" / "00001_00_10s.dng", scene=scene, iso=100, exposure_time=10)
    make_bayer_dng(root / "Sony" / "short" / "00001_00_0.1s.dng", scene=scene * 0.01, iso=100, exposure_time=0.1)
    (root / "list.txt").write_text("./Sony/short/00001_00_0.1s.dng ./Sony/long/00001_00_10s.dng ISO100 F8\n")
    pairs = SIDPairDataset(root, root / "list.txt", crop="center", patch=512)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    torch.manual_seed(0)
    table = evaluate_sid(cfg.build(), cfg, pairs, steps=2, correct_illuminance=True)
    assert list(table) == [100.0] and table[100.0]["count"] == 1
    assert table[100.0]["input_psnr"] > 20  # the x100 amplified short exposure is close to the long one
    # the same through `evaluate --sid-root`, in the model's photon mode unless told otherwise
    save_checkpoint(cfg.build(), cfg, tmp_path / "m.pt", meta={"photons": "means"})
    tables = {}
    for flag, mode in (([], "means"), (["--deterministic"], "means"), (["--draws"], "draws")):
        out = tmp_path / "sid.json"
        assert main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--holdout", "1", "--patch", "16",
                     "--baselines", "none", "--steps", "2", "--sid-root", str(root), "--sid-list",
                     str(root / "list.txt"), "--json", str(out), "--overwrite", "-q", *flag]) == 0
        saved = json.loads(out.read_text())
        assert saved["settings"]["photons"] == {"model": mode}
        tables[" ".join(flag)] = saved["sid"]["2"]["100.0"]
    assert tables[""]["count"] == 1 and tables[""] == tables["--deterministic"] != tables["--draws"]


def test_gpu_training_recipe_runs_on_a_cpu_and_checks_its_options(tmp_path, capsys):
    """training/recipes/gpu_train.py (issue 14's GPU call, bench/gpu_check.sh train) at a toy
    size: the pool, the run and the fp16 model it hands back; bad options refused at parse time."""
    import json

    from training.recipes.gpu_train import main as gpu_train

    with pytest.raises(SystemExit):
        gpu_train(["--out", str(tmp_path / "x"), "--batch", "0"])
    assert "argument --batch: must be an integer in [1, 4096], got 0" in capsys.readouterr().err
    assert gpu_train(["--out", str(tmp_path / "run"), "--seconds", "120", "--scenes", "4", "--patch", "32",
                      "--batch", "2", "--total-steps", "10", "--workers", "1", "--device", "cpu", "--amp", "none",
                      "--textured"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["pool"] == {"scenes": 4, "bank": None, "textured": True, "illumination": "frame"}
    assert summary["global_step"] == 10 and (tmp_path / "run" / "model_fp16.pt").is_file()
    assert summary["config"]["mean_photons"] and summary["config"]["inner_exposures"] == "linspace"
    assert load_checkpoint(tmp_path / "run" / "model_fp16.pt")[2]["photons"] == "means"


# ----------------------------------------------------------------------------- issue 22
EVAL_TINY = ["--holdout", "1", "--patch", "16", "--steps", "1", "--baselines", "none", "-q"]


def test_evaluate_without_checkpoint_uses_the_shipped_model(tmp_path):
    """Item 6: --checkpoint was required; the default is the model shipped with the package."""
    from engine.inference.pipeline import DEFAULT_CHECKPOINT

    out = tmp_path / "e.json"
    assert main(["evaluate", *EVAL_TINY, "--ratios", "100", "--json", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["models"] == {"model": str(DEFAULT_CHECKPOINT)} and settings["photons"] == {"model": "means"}


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work fails the test: refusals must come before it."""
    import training.data
    import training.holdout_eval

    def work(*a, **k):
        pytest.fail("the work started before the paths were checked")

    for module, name in ((training.holdout_eval, "load_models"), (training.holdout_eval, "holdout_clean"),
                         (training.data, "build_training_dataset")):
        monkeypatch.setattr(module, name, work)


def _refused(argv, capsys, *messages):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for m in messages:
        assert m in err, err


@pytest.mark.parametrize("case", ["json exists", "json in a missing folder", "json is a folder",
                                  "json is the checkpoint", "cache is not JSON", "cache is other JSON",
                                  "cache is a folder"])
def test_evaluate_output_paths_are_checked_before_the_evaluation(tmp_path, capsys, no_work, case):
    """Class D: `--json existing` gave a FileExistsError traceback; `--json /missing/x.json`
    failed after the whole evaluation; a folder, a corrupt --baseline-cache: tracebacks."""
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"model bytes")
    (tmp_path / "d").mkdir()
    (tmp_path / "e.json").write_text("{}")
    (tmp_path / "bad.json").write_text('{"a": {"psnr": [1')
    (tmp_path / "list.json").write_text("[1, 2]")
    argv, message = {
        "json exists": (["--json", str(tmp_path / "e.json")], "already exists; use --overwrite"),
        "json in a missing folder": (["--json", str(tmp_path / "nope" / "x.json")], "nope does not exist"),
        "json is a folder": (["--json", str(tmp_path / "d"), "--overwrite"], "is a folder; expected a file name"),
        "json is the checkpoint": (["--json", str(ckpt), "--overwrite"], "which the evaluation reads"),
        "cache is not JSON": (["--baseline-cache", str(tmp_path / "bad.json")], "not a readable baseline cache"),
        "cache is other JSON": (["--baseline-cache", str(tmp_path / "list.json")], "JSON but not a baseline cache"),
        "cache is a folder": (["--baseline-cache", str(tmp_path / "d")], "is a folder"),
    }[case]
    _refused(["evaluate", "--checkpoint", str(ckpt), *EVAL_TINY, *argv], capsys, message)
    assert ckpt.read_bytes() == b"model bytes" and (tmp_path / "e.json").read_text() == "{}"
    assert (tmp_path / "bad.json").read_text() == '{"a": {"psnr": [1'


@pytest.mark.parametrize("case", ["out is a file", "out under a file", "last.pt is a folder"])
def test_train_out_is_checked_before_the_data(tmp_path, capsys, no_work, case):
    """Class D: `train --out <file>` gave a FileExistsError traceback from mkdir (exit 1); a
    folder named last.pt failed at the first checkpoint, after the steps before it."""
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    out, message = {"out is a file": (blocker, "is a file, not a folder"),
                    "out under a file": (blocker / "run", "is not a folder"),
                    "last.pt is a folder": (tmp_path / "run", "last.pt is a folder, where the run keeps")}[case]
    if case == "last.pt is a folder":
        (out / "last.pt").mkdir(parents=True)
    _refused(["train", "--out", str(out), *TINY], capsys, message)
    assert blocker.read_text() == "keep"


@pytest.mark.parametrize("case", ["missing folder", "a folder", "a folder with --overwrite",
                                  "the checkpoint itself"])
def test_export_public_is_checked_before_reading(tmp_path, capsys, case):
    """Class D (and C): --public into a missing folder: FileNotFoundError traceback; onto a
    folder with --overwrite: IsADirectoryError; onto the checkpoint it reads: replaced it."""
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    save_checkpoint(cfg.build(), cfg, tmp_path / "m.pt")
    kept = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "d").mkdir()
    argv, message = {"missing folder": ([str(tmp_path / "nope" / "p.pt")], "nope does not exist"),
                     "a folder": ([str(tmp_path / "d")], "is a folder"),
                     "a folder with --overwrite": ([str(tmp_path / "d"), "--overwrite"], "is a folder"),
                     "the checkpoint itself": ([str(tmp_path / "m.pt"), "--overwrite"], "is the checkpoint being "
                                                                                       "exported")}[case]
    _refused(["export", "--checkpoint", str(tmp_path / "m.pt"), "--public", *argv], capsys, message)
    assert (tmp_path / "m.pt").read_bytes() == kept and list((tmp_path / "d").iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["train", "--out", "unused"], ["evaluate"], ["enhance", "a.dng", "--ratio", "9"]])
def test_cuda_without_cuda_is_refused_while_parsing(command, capsys):
    """Class G: train / evaluate --device cuda gave torch's AssertionError traceback."""
    for device in ("cuda", "cuda:1"):
        with pytest.raises(SystemExit) as info:
            main([*command, "--device", device])
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"argument --device: '{device}': CUDA is not available on this machine" in err
