"""White balance when the input has none (issue 15, item 11): a uint16 array of a grey card
rendered green (camera RGB without gains, green being the most sensitive channel). Now:
the daylight balance implied by the colour matrix when there is one, else grey world."""
import numpy as np
import pytest
import torch

from engine import BackboneConfig, Pipeline
from engine.camera import (MAX_GREY_WORLD_GAIN, SRGB_TO_XYZ, daylight_white_balance, default_white_balance,
                           grey_world_white_balance)
from tests.dngfactory import DEFAULT_COLOR_MATRIX

SENSITIVITY = np.array([0.5, 1.0, 0.625])  # camera RGB of grey: green the most sensitive
LEVELS = dict(black_level=512, white_level=16383)


class Identity(torch.nn.Module):
    def forward(self, x):  # a plain 4-channel estimate: the state itself, so colour is the input's
        return x[:, :4]


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(Identity(), BackboneConfig(out_channels=4, with_photon=False), device="cpu", precision="fp32")


def mosaic(rgb_by_site, pattern="RGGB", h=32, w=48, card=None) -> np.ndarray:
    """uint16 DN mosaic of a flat camera-RGB colour (optionally a different ``card`` colour in the
    middle), normalised values scaled to the levels."""
    img = np.empty((h, w, 3))
    img[:] = rgb_by_site
    if card is not None:
        img[8:24, 12:36] = card
    out = np.empty((h, w))
    for i in range(2):
        for j in range(2):
            c = {"R": 0, "G": 1, "B": 2}[pattern[2 * i + j]]
            out[i::2, j::2] = img[i::2, j::2, c]
    return np.round(512 + out * (16383 - 512)).astype(np.uint16)


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_grey_card_array_without_metadata_renders_grey(pipe, pattern):
    """No wb_gains and no colour matrix: grey world."""
    frame = mosaic(0.3 * SENSITIVITY, pattern)
    out = pipe(frame, pattern=pattern, **LEVELS, ratio=2, steps=1, K=1.0, stochastic=False).srgb(torch.uint8)
    rgb = out.reshape(-1, 3).double().mean(0)
    assert (rgb.max() - rgb.min()) <= 1.0, f"grey card rendered {rgb.tolist()}"


def test_grey_card_with_a_colour_matrix_uses_its_daylight_balance(pipe):
    """With a colour matrix the default is the daylight (D65) balance it implies: a grey card
    under D65 is grey however colourful the rest of the frame is (grey world would not be)."""
    d65 = np.asarray(DEFAULT_COLOR_MATRIX) @ SRGB_TO_XYZ.sum(axis=1)  # camera RGB of D65 white
    frame = mosaic([0.4, 0.05, 0.05], card=0.3 * d65 / d65.max())  # a red scene around a grey card
    out = pipe(frame, pattern="RGGB", **LEVELS, color_matrix=DEFAULT_COLOR_MATRIX, ratio=2, steps=1, K=1.0,
               stochastic=False).srgb(torch.uint8)
    card = out[10:22, 14:34].reshape(-1, 3).double().mean(0)
    assert (card.max() - card.min()) <= 1.0, f"grey card rendered {card.tolist()}"


def test_given_white_balance_still_wins(pipe):
    frame = mosaic(0.3 * SENSITIVITY)
    out = pipe(frame, pattern="RGGB", **LEVELS, wb_gains=(1.0, 1.0, 1.0), ratio=2, steps=1, K=1.0,
               stochastic=False).srgb(torch.float32)
    rgb = out.reshape(-1, 3).mean(0)
    assert rgb[1] > rgb[0] + 0.1 and rgb[1] > rgb[2] + 0.1  # unbalanced camera RGB, as asked


def test_daylight_white_balance_makes_d65_neutral():
    gains = daylight_white_balance(DEFAULT_COLOR_MATRIX)
    d65 = np.asarray(DEFAULT_COLOR_MATRIX) @ SRGB_TO_XYZ.sum(axis=1)
    balanced = d65 * np.array(gains)[:3]
    assert gains[1] == gains[3] == 1.0 and np.allclose(balanced, balanced[1])


def test_grey_world_ignores_clipped_and_black_sites_and_bounds_gains():
    raw = torch.empty(4, 10, 10)
    raw[:] = torch.tensor([0.2, 0.4, 0.25, 0.4])[:, None, None]
    raw[:, :2] = 1.0  # clipped rows: would pull every gain towards 1
    raw[:, -2:] = 0.0  # black rows
    assert torch.allclose(grey_world_white_balance(raw), torch.tensor([2.0, 1.0, 1.6, 1.0]))
    mono = torch.zeros(4, 4, 4)
    mono[1] = mono[3] = 0.5  # nothing in red or blue
    assert grey_world_white_balance(mono).tolist() == [1.0, 1.0, 1.0, 1.0]
    faint = torch.full((4, 4, 4), 0.5)
    faint[0] = 0.003
    assert grey_world_white_balance(faint)[0] == MAX_GREY_WORLD_GAIN
    assert default_white_balance(raw, None).tolist() == grey_world_white_balance(raw).tolist()
