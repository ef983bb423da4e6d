"""steps="auto" (engine.inference.adaptive): the photon count, the policy, the Pipeline hook."""
import pytest
import torch

from engine import BackboneConfig, Pipeline
from engine.inference.adaptive import DEFAULT_POLICY, AutoStepsPolicy, choose_steps, input_psnr, steps_for_batch
from kernels._common import DEFAULT_DN_SCALE


def test_input_psnr_of_a_flat_frame():
    a_t = torch.full((2, 4, 32, 32), 0.05)
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([2.0, 1.0])
    p = input_psnr(a_t, ratio, K)
    torch.testing.assert_close(p, -10 * torch.log10(0.05 * ratio.double() * K.double() / DEFAULT_DN_SCALE))


def test_input_psnr_is_the_psnr_of_shot_noise():
    """A Poisson frame at the expected level: its measured PSNR agrees within 0.1 dB."""
    g = torch.Generator().manual_seed(0)
    ratio, K, x = 100.0, 2.0, 0.05
    photons = torch.poisson(torch.full((1, 4, 128, 128), x * DEFAULT_DN_SCALE / (ratio * K)), generator=g)
    a_t = photons * ratio * K / DEFAULT_DN_SCALE
    measured = -10 * torch.log10(((a_t - x) ** 2).mean()).item()
    assert abs(float(input_psnr(a_t, ratio, K)) - measured) < 0.1


def test_policy_steps_and_refusals():
    p = AutoStepsPolicy((40.0, 12.0), (1, 2, 3))
    assert [p.steps(e) for e in (100, 40, 39.9, 12, 11.9, 0)] == [1, 1, 2, 2, 3, 3]
    assert AutoStepsPolicy((30.0, 30.0), (1, 2, 3)).steps(29.0) == 3  # equal thresholds skip a count
    assert AutoStepsPolicy.from_meta({"auto_steps": p.to_meta()}) == p
    assert AutoStepsPolicy.from_meta({}) == DEFAULT_POLICY
    with pytest.raises(ValueError, match="counts must hold"):
        AutoStepsPolicy((1.0,), (1, 2, 3))
    with pytest.raises(ValueError, match="non-increasing"):
        AutoStepsPolicy((1.0, 5.0), (1, 2, 3))


def test_noisier_frames_need_no_fewer_steps():
    """Higher ratio, gain or level: more noise in the amplified units: at least as many steps."""
    ratio, K = torch.tensor([20.0, 100.0, 100.0, 300.0, 300.0]), torch.tensor([0.5, 1.0, 3.0, 3.0, 6.0])
    a_t = torch.full((5, 4, 16, 16), 0.05)
    counts = choose_steps(a_t, ratio, K)
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert steps_for_batch(a_t, ratio, K) == counts[-1]


def test_pipeline_auto_steps_follow_the_policy():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    pipe = Pipeline(cfg.build(), cfg, device="cpu", precision="fp32")
    pipe.auto_policy = AutoStepsPolicy((30.0, 25.0), (1, 2, 4))
    common = dict(pattern="RGGB", black_level=512, white_level=16383, K=1.0, seed=0)
    # input PSNR at ratio 100, K 1: -10 log10(DN over black * 100 / 15871 * 100 / 15583)
    for dn, expected in ((512 + 10, 1), (512 + 40, 2), (512 + 200, 4)):
        frame = torch.full((64, 64), dn, dtype=torch.int32).to(torch.uint16).numpy()
        out = pipe(frame, ratio=100, steps="auto", **common)
        assert out.steps == expected and len(out.schedule) == expected + 1
        fixed = pipe(frame, ratio=100, steps=expected, **common)
        assert torch.equal(out.raw, fixed.raw)  # the same loop as the fixed count
    frame = torch.full((64, 64), 600, dtype=torch.int32).to(torch.uint16).numpy()
    with pytest.raises(ValueError, match="steps=.auto. chooses the step count itself; give an integer steps with explicit"):
        pipe(frame, ratio=100, steps="auto", schedule=[1, 50, 100], **common)
    with pytest.raises(ValueError, match=r"steps must be 'auto' or an integer in \[1, 100\], got 'many'"):
        pipe(frame, ratio=100, steps="many", **common)


def test_fit_policy_picks_the_cheapest_policy_within_tolerance():
    from training.auto_steps import fit_policy

    # clean inputs (high input PSNR): 1 step is as good as 3; noisy ones gain 1 dB from 3 steps
    e = [25.0, 27.0, 35.0, 38.0]
    measured = {100.0: {"input_psnr": e, "psnr": {1: [30.0, 30.0, 40.0, 40.0], 2: [30.5, 30.5, 40.0, 40.0],
                                                   3: [31.0, 31.0, 40.0, 40.0]}}}
    policy, report = fit_policy(measured, (1, 2, 3), tolerance=0.05)
    assert [policy.steps(v) for v in e] == [3, 3, 1, 1]
    assert report[100.0]["best_fixed"] == (3, 35.5) and report[100.0]["auto"] == (35.5, 2.0)
    # nothing cheaper qualifies when every frame gains: the policy takes 3 everywhere
    measured[100.0]["psnr"][3] = [31.0, 31.0, 41.0, 41.0]
    policy, _ = fit_policy(measured, (1, 2, 3))
    assert [policy.steps(v) for v in e] == [3, 3, 3, 3]
    # the drifting case: 3 steps worst for bright frames, 2 best for dark ones: 2 then 1
    measured[100.0]["psnr"] = {1: [30.0, 30.0, 40.0, 40.0], 2: [30.6, 30.6, 39.8, 39.8], 3: [30.4, 30.4, 39.0, 39.0]}
    policy, report = fit_policy(measured, (1, 2, 3))
    assert [policy.steps(v) for v in e] == [2, 2, 1, 1] and report[100.0]["auto"] == (35.3, 1.5)


def test_enhance_command_takes_steps_auto(tmp_path):
    from engine.cli import main as cli_main
    from tests.dngfactory import make_bayer_dng

    make_bayer_dng(tmp_path / "a.dng", height=64, width=64, iso=3200)
    assert cli_main(["enhance", str(tmp_path / "a.dng"), "--ratio", "100", "--steps", "auto", "-o",
                     str(tmp_path / "out"), "--device", "cpu", "-q"]) == 0
    assert (tmp_path / "out" / "a.png").is_file()
    with pytest.raises(SystemExit):
        cli_main(["enhance", str(tmp_path / "a.dng"), "--ratio", "100", "--steps", "0"])


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "argument --n: must be an integer in [1, 1000], got 0"),
    (["--patch", "24"], "argument --patch: must be a multiple of 16"),
    (["--counts", "0", "2"], "argument --counts: must be an integer in [1, 100], got 0"),
    (["--ratios", "1"], "argument --ratios: must be a finite number in (1, 10000]"),
    (["--tolerance", "-1"], "argument --tolerance: must be a finite number in [0, 10]"),
    (["--device", "meta"], "argument --device"),
    (["--seed", "0"], "--seed 0 of the photo scenes is the evaluation hold-out"),
])
def test_calibration_command_refuses_bad_options_at_parse_time(argv, message, capsys):
    from training.auto_steps import main

    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", "unused.pt", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_calibration_command_writes_a_calibrated_checkpoint_and_documents_its_options(tmp_path, capsys):
    from engine.models.checkpoint import load_checkpoint, save_checkpoint
    from training.auto_steps import build_parser, main

    assert not [a.dest for a in build_parser()._actions if a.dest != "help" and not (a.help or "").strip()]
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (4, 4, 8, 8, 8)})
    save_checkpoint(cfg.build(), cfg, tmp_path / "m.pt")
    argv = ["--checkpoint", str(tmp_path / "m.pt"), "--write", str(tmp_path / "m_auto.pt"), "--counts", "1", "2",
            "--ratios", "100", "--n", "2", "--patch", "16", "--measured", str(tmp_path / "measured.json")]
    assert main(argv) == 0
    _, _, meta = load_checkpoint(tmp_path / "m_auto.pt")
    assert AutoStepsPolicy.from_meta(meta).counts == (1, 2) and (tmp_path / "measured.json").is_file()
    with pytest.raises(SystemExit) as e:  # the written checkpoint is never replaced
        main(argv)
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
