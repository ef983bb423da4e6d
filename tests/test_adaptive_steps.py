"""steps="auto" (engine.inference.adaptive): the photon count, the policy, the Pipeline hook."""
import pytest
import torch

from engine import BackboneConfig, Pipeline
from engine.inference.adaptive import (DEFAULT_POLICY, AutoStepsPolicy, choose_steps, frame_electrons,
                                       steps_for_batch)
from kernels._common import DEFAULT_DN_SCALE


def test_frame_electrons_of_a_flat_frame():
    a_t = torch.full((2, 4, 32, 32), 0.05)
    ratio, K = torch.tensor([100.0, 300.0]), torch.tensor([2.0, 1.0])
    e = frame_electrons(a_t, ratio, K)
    torch.testing.assert_close(e, 0.05 * DEFAULT_DN_SCALE / (ratio * K))


def test_frame_electrons_ignore_a_few_highlights():
    a_t = torch.full((1, 4, 64, 64), 0.01)
    a_t[..., :8, :8] = 1.0  # a lamp: 1.6% of the frame
    e = frame_electrons(a_t, torch.tensor([100.0]), torch.tensor([1.0]))
    assert float(e) == pytest.approx(0.01 * DEFAULT_DN_SCALE / 100)


def test_policy_steps_and_refusals():
    p = AutoStepsPolicy((40.0, 12.0), (1, 2, 3))
    assert [p.steps(e) for e in (100, 40, 39.9, 12, 11.9, 0)] == [1, 1, 2, 2, 3, 3]
    assert AutoStepsPolicy.from_meta({"auto_steps": p.to_meta()}) == p
    assert AutoStepsPolicy.from_meta({}) == DEFAULT_POLICY
    with pytest.raises(ValueError, match="counts must hold"):
        AutoStepsPolicy((1.0,), (1, 2, 3))
    with pytest.raises(ValueError, match="non-increasing"):
        AutoStepsPolicy((1.0, 5.0), (1, 2, 3))


def test_brighter_frames_need_no_more_steps():
    ratio, K = torch.tensor([100.0] * 5), torch.tensor([1.0] * 5)  # 155.8 electrons per unit level
    levels = torch.tensor([0.001, 0.01, 0.05, 0.1, 0.5]).view(5, 1, 1, 1)
    counts = choose_steps(levels.expand(5, 4, 16, 16), ratio, K)
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert steps_for_batch(levels.expand(5, 4, 16, 16), ratio, K) == counts[0]


def test_pipeline_auto_steps_follow_the_policy():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    pipe = Pipeline(cfg.build(), cfg, device="cpu", precision="fp32")
    pipe.auto_policy = AutoStepsPolicy((40.0, 12.0), (1, 2, 4))
    common = dict(pattern="RGGB", black_level=512, white_level=16383, K=1.0, seed=0)
    for dn, expected in ((512 + 60, 1), (512 + 20, 2), (512 + 2, 4)):  # electrons = DN over black / K
        frame = torch.full((64, 64), dn, dtype=torch.int32).to(torch.uint16).numpy()
        out = pipe(frame, ratio=100, steps="auto", **common)
        assert out.steps == expected and len(out.schedule) == expected + 1
        fixed = pipe(frame, ratio=100, steps=expected, **common)
        assert torch.equal(out.raw, fixed.raw)  # the same loop as the fixed count
    frame = torch.full((64, 64), 600, dtype=torch.int32).to(torch.uint16).numpy()
    with pytest.raises(ValueError, match="chooses the schedule itself"):
        pipe(frame, ratio=100, steps="auto", schedule=[1, 50, 100], **common)
    with pytest.raises(ValueError, match="integer >= 1 or 'auto'"):
        pipe(frame, ratio=100, steps="many", **common)


def test_fit_policy_picks_the_cheapest_policy_within_tolerance():
    from training.auto_steps import fit_policy

    # bright frames (many electrons): 1 step is as good as 3; dark ones gain 1 dB from 3 steps
    e = [5.0, 8.0, 60.0, 90.0]
    measured = {100.0: {"electrons": e, "psnr": {1: [30.0, 30.0, 40.0, 40.0], 2: [30.5, 30.5, 40.0, 40.0],
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
