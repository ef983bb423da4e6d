"""The anchored-states screen's evaluation (training/recipes/step_fidelity_screen.py): with the
anchoring taken out it is the ordinary restoration, a 1-step run is never changed, and the
anchoring moves the later steps. (The anchoring itself, ``training.objective.anchored_estimate``,
and the training with it are tested in tests/test_anchor_states.py.)"""
import pytest
import torch

from engine.models.backbones import BackboneConfig
from tests.test_anchor_states import _batch, _net
from training.evaluate import restore
from training.recipes import step_fidelity_screen as screen

CONFIG = BackboneConfig(with_photon=True)


@pytest.fixture
def no_anchoring(monkeypatch):
    monkeypatch.setattr(screen, "anchored_estimate", lambda estimate, unclipped, scale=32: estimate)


def _restorations(steps, size=32):
    _, unclipped, first, ratio, K = _batch(size=size)
    net = _net()
    ref = restore(net, CONFIG, first, ratio=ratio, K=K, steps=steps, stochastic=False)
    got = screen.restore_anchored(net, CONFIG, first, unclipped, ratio=ratio, K=K, steps=steps, stochastic=False)
    return ref, got


def test_without_anchoring_the_restoration_is_the_ordinary_one(no_anchoring):
    ref, got = _restorations(3, size=40)  # not a multiple of 16: padded and cropped
    assert got.shape == (2, 4, 40, 40)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_one_step_is_never_anchored():
    ref, got = _restorations(1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_anchoring_changes_the_later_steps():
    ref, got = _restorations(3)
    assert (got - ref).abs().max() > 1e-3


def test_only_evaluate_is_screened(capsys):
    with pytest.raises(SystemExit):
        screen.main(["--", "train", "--out", "unused"])
    assert "train --anchor-states" in capsys.readouterr().err
