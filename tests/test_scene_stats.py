"""Scene statistics (training.scene_stats) on scenes whose answers are known."""
import math

import pytest
import torch

from training.scene_stats import main, scene_statistics


def _power_law(alpha: float, n: int = 128, batch: int = 4, seed: int = 0) -> torch.Tensor:
    """Grey scenes whose luminance has the power spectrum f^-alpha (random phases), in [0.2, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    f = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    f[0, 0] = 1.0
    amplitude = f ** (-alpha / 2)
    amplitude[0, 0] = 0.0
    phase = torch.rand(batch, n, n, generator=g, dtype=torch.float64) * 2 * torch.pi
    lum = torch.fft.ifft2(amplitude * torch.exp(1j * phase)).real
    lum = (lum - lum.amin(dim=(1, 2), keepdim=True)) / (lum.amax(dim=(1, 2), keepdim=True) - lum.amin(dim=(1, 2), keepdim=True))
    return (0.2 + 0.6 * lum)[:, None].expand(batch, 4, n, n).float()


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_the_spectrum_slope_of_a_power_law_scene(alpha):
    s = scene_statistics(_power_law(alpha))
    assert s["spectrum_slope"] == pytest.approx(alpha, abs=0.25)
    assert sum(s["band_energy"]) == pytest.approx(1.0)
    assert s["chroma_spread"] < 1e-6 and s["chroma_detail"] < 1e-6  # grey: no colour at any scale


def test_white_noise_is_flat_and_keeps_its_energy_in_the_finest_octave():
    x = torch.rand(2, 4, 128, 128, generator=torch.Generator().manual_seed(1))
    s = scene_statistics(x)
    assert abs(s["spectrum_slope"]) < 0.3
    assert s["band_energy"][0] == pytest.approx(0.75, abs=0.05)  # the finest octave holds 3/4 of the frequencies


def test_edges_and_colour_of_flat_and_patterned_scenes():
    flat = torch.full((1, 4, 64, 64), 0.3)
    s = scene_statistics(flat)
    assert s["edge_density"] == 0 and s["chroma_spread"] < 1e-6 and s["chroma_detail"] < 1e-6
    check = flat.clone()
    cells = ((torch.arange(64)[:, None] // 8 + torch.arange(64)[None, :] // 8) % 2).bool()
    check[0, 0][cells] = 0.6  # red-ish squares on grey, every 8 pixels
    s = scene_statistics(check)
    edges_expected = 2 * 7 / 63 * 63 * 64 / (2 * 63 * 64)  # 7 boundaries per row and per column
    assert s["edge_density"] == pytest.approx(edges_expected, rel=0.05)
    # log(R/G) is 0 or log 2 on half the pixels each (spread log(2) / 2), log(B/G) 0: mean log(2) / 4
    assert s["chroma_spread"] == pytest.approx(math.log(2) / 4, rel=0.02) and s["chroma_detail"] > 0.1


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\[B, 4, n, n\] with n >= 32"):
        scene_statistics(torch.zeros(1, 4, 64, 48))
    with pytest.raises(ValueError, match=r"\[B, 4, n, n\]"):
        scene_statistics(torch.zeros(1, 3, 64, 64))


def test_the_command_prints_every_family(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    for i in range(2):  # a user's photo folder, made into raw as training makes it
        Image.fromarray((np.random.default_rng(i).random((96, 96, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["--n", "2", "--patch", "32", "--srgb-folder", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "photo-like hold-out" in out and "procedural" in out and "textured leaves" in out and "alpha" in out
    def alpha(name):
        row = next(line for line in out.splitlines() if line.startswith(name))
        return float(row[len(name):].split()[0])

    # photos of white noise: a far flatter spectrum than the smooth hold-out scenes
    assert alpha(f"sRGB folder {tmp_path}") < alpha("photo-like hold-out") - 1
