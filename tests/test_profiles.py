"""kernels.profiles: shipped camera profiles, ISO -> K, and per-sample noise parameters.

Statistical tests use fixed seeds; under a fresh seed each fails falsely with
probability at most ALPHA (Bonferroni-corrected where one test makes several
comparisons). Sample size N = 20_000 draws unless said otherwise.
"""
import json
import math
from importlib import resources

import numpy as np
import pytest
import scipy.stats as st
import torch

from kernels.profiles import (
    CameraProfile,
    NoiseParams,
    ScaleFit,
    available_cameras,
    load_profile,
    load_profiles,
    sample_noise_params,
)

ALPHA = 1e-3
N = 20_000
SHIPPED = ["CanonEOS5D4", "CanonEOS700D", "CanonEOS70D", "NikonD850", "SonyA7S2"]


def shipped_json() -> dict:
    return json.loads(resources.files("kernels").joinpath("data", "camera_params", "cameras.json").read_text())


def test_available_cameras():
    assert available_cameras() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_matches_json(name):
    raw = shipped_json()[name]
    p = load_profile(name)
    assert p.name == name and p.Kmin == raw["Kmin"] and p.Kmax == raw["Kmax"]
    assert p.G_shape == tuple(raw["G_shape"])
    for key in ("g_scale", "G_scale", "R_scale"):
        fit = raw["Profile-1"][key]
        assert getattr(p, key) == ScaleFit(fit["slope"], fit["bias"], fit["sigma"])
    assert load_profile(name.lower()) is p and load_profile(name.upper()) is p


@pytest.mark.parametrize("name", SHIPPED)
def test_K_from_iso(name):
    p = load_profile(name)
    assert p.K_from_iso(100) == pytest.approx(p.Kmin, rel=1e-12)
    assert p.K_from_iso(6400) == pytest.approx(p.Kmax, rel=1e-12)
    assert p.K_from_iso(3250) == pytest.approx((p.Kmin + p.Kmax) / 2, rel=1e-12)
    iso = torch.tensor([100.0, 6400.0], dtype=torch.float64)
    torch.testing.assert_close(p.K_from_iso(iso), torch.tensor([p.Kmin, p.Kmax], dtype=torch.float64))


@pytest.mark.parametrize("iso", [0, -100, float("nan")])
def test_K_from_iso_refuses_bad_iso(iso):
    with pytest.raises(ValueError, match="ISO must be a finite number > 0"):
        load_profile("SonyA7S2").K_from_iso(iso)


def test_K_from_iso_refuses_iso_below_the_line():
    p = CameraProfile("steep", 1.0, 200.0, (0.0,), ScaleFit(0, 0, 0), ScaleFit(0, 0, 0), ScaleFit(0, 0, 0))
    with pytest.raises(ValueError, match="below the range of steep's linear ISO->K map"):
        p.K_from_iso(1)


def test_json_round_trip(tmp_path):
    for name in SHIPPED:
        p = load_profile(name)
        assert CameraProfile.from_dict(json.loads(json.dumps(p.to_dict())), name=name) == p
        raw = shipped_json()[name]
        raw.pop("Profile-2", None)  # NikonD850's unused second profile is not kept
        assert p.to_dict() == raw
    p = load_profile("NikonD850")
    path = tmp_path / "mycam.json"
    p.save(path)
    assert load_profile(path) == p and load_profile(str(path)) == p
    # a single profile object, named by its "name" key or else by the file stem
    single = tmp_path / "single.json"
    single.write_text(json.dumps(p.to_dict()))
    assert load_profile(single).name == "single"
    single.write_text(json.dumps({**p.to_dict(), "name": "MyCam"}))
    assert load_profile(single).name == "MyCam"


def test_multi_profile_file(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({n: load_profile(n).to_dict() for n in ("SonyA7S2", "NikonD850")}))
    assert set(load_profiles(path)) == {"SonyA7S2", "NikonD850"}
    with pytest.raises(ValueError, match="holds 2 profiles .* use load_profiles"):
        load_profile(path)


def test_unknown_camera_refused():
    with pytest.raises(ValueError, match="unknown camera 'Pentax' .* available: CanonEOS5D4, CanonEOS700D"):
        load_profile("Pentax")
    with pytest.raises(ValueError, match="unknown camera 'Pentax'"):
        sample_noise_params(2, cameras=["SonyA7S2", "Pentax"])


@pytest.mark.parametrize(
    "data, match",
    [
        ({"Kmin": 1.0, "Kmax": 2.0, "G_shape": [0.1]}, "lacks key 'Profile-1'"),
        ({"Kmin": -1.0, "Kmax": 2.0, "G_shape": [0.1], "Profile-1": {k: {"slope": 0, "bias": 0, "sigma": 0} for k in ("g_scale", "G_scale", "R_scale")}}, "Kmin must be a finite number > 0"),
        ({"Kmin": 3.0, "Kmax": 2.0, "G_shape": [0.1], "Profile-1": {k: {"slope": 0, "bias": 0, "sigma": 0} for k in ("g_scale", "G_scale", "R_scale")}}, r"Kmax \(2.0\) must be >= Kmin"),
        ({"Kmin": 1.0, "Kmax": 2.0, "G_shape": [], "Profile-1": {k: {"slope": 0, "bias": 0, "sigma": 0} for k in ("g_scale", "G_scale", "R_scale")}}, "G_shape must be a non-empty list"),
    ],
)
def test_malformed_profile_refused(data, match):
    with pytest.raises(ValueError, match=match):
        CameraProfile.from_dict(data, name="bad")


# ----------------------------------------------------------------------------- sampling
def test_shapes_dtypes_and_device():
    p = sample_noise_params(7, device="cpu")
    assert isinstance(p, NoiseParams) and p.batch == 7
    for f in ("K", "ratio", "sigma_g", "sigma_TL", "lam", "sigma_r"):
        t = getattr(p, f)
        assert t.shape == (7,) and t.dtype == torch.float32 and t.device.type == "cpu", f
    assert p.camera_index.dtype == torch.int64 and p.cameras == tuple(SHIPPED) and p.model == "P+G+r+u"
    m = sample_noise_params(3, device="meta")
    assert m.K.device.type == "meta" and m.camera_index.device.type == "meta"
    assert p.to("meta").lam.device.type == "meta" and set(p.as_kwargs()) == {"ratio", "K", "sigma_g", "sigma_TL", "lam", "sigma_r"}


def test_reproducible_under_manual_seed_and_generator():
    torch.manual_seed(3)
    a = sample_noise_params(64)
    torch.manual_seed(3)
    b = sample_noise_params(64)
    c = sample_noise_params(64)
    for f in ("K", "ratio", "sigma_g", "sigma_TL", "lam", "sigma_r", "camera_index"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.K, c.K)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(sample_noise_params(16, generator=g1).K, sample_noise_params(16, generator=g2).K)


def test_default_K_range_and_ratio():
    """log K ~ U(log 0.1, log 30) (KS), ratio ~ U(100, 300) (KS), cameras uniform
    (chi-square); N draws, Bonferroni over 3."""
    p = sample_noise_params(N, generator=torch.Generator().manual_seed(1))
    log_k = torch.log(p.K.double()).numpy()
    lo, hi = math.log(0.1), math.log(30.0)
    assert log_k.min() >= lo - 1e-6 and log_k.max() <= hi + 1e-6
    assert st.kstest(log_k, st.uniform(lo, hi - lo).cdf).pvalue > ALPHA / 3
    r = p.ratio.double().numpy()
    assert r.min() >= 100 and r.max() <= 300
    assert st.kstest(r, st.uniform(100, 200).cdf).pvalue > ALPHA / 3
    counts = np.bincount(p.camera_index.numpy(), minlength=5)
    assert st.chisquare(counts).pvalue > ALPHA / 3


def test_continuous_and_explicit_ratio_ranges():
    c = sample_noise_params(N, continuous=True, generator=torch.Generator().manual_seed(2)).ratio.double().numpy()
    assert c.min() >= 20 and c.max() <= 300 and c.min() < 100
    assert st.kstest(c, st.uniform(20, 280).cdf).pvalue > ALPHA / 2
    e = sample_noise_params(1000, ratio_range=(250, 250), continuous=True).ratio
    assert torch.all(e == 250)
    f = sample_noise_params(N, ratio_range=(1.5, 4.0), generator=torch.Generator().manual_seed(3)).ratio.double().numpy()
    assert st.kstest(f, st.uniform(1.5, 2.5).cdf).pvalue > ALPHA / 2


def test_camera_K_range_lambda_and_scale_fits():
    """K_range="camera": every K within its camera's [Kmin, Kmax]; lam drawn from that camera's
    G_shape (each distinct shape's frequency chi-square against its multiplicity); the
    standardised residuals of the three log-linear fits ~ N(0, 1) (KS). Per camera,
    Bonferroni over 5 cameras x 4 tests."""
    p = sample_noise_params(N, K_range="camera", generator=torch.Generator().manual_seed(4))
    a = ALPHA / 20
    for i, name in enumerate(p.cameras):
        prof = load_profile(name)
        sel = p.camera_index == i
        K = p.K[sel].double()
        assert K.min() >= prof.Kmin * (1 - 1e-6) and K.max() <= prof.Kmax * (1 + 1e-6)
        lam = p.lam[sel].numpy()
        shapes = np.array(prof.G_shape, dtype=np.float32)
        assert np.all(np.isin(lam, shapes)), name
        values, mult = np.unique(shapes, return_counts=True)
        counts = np.array([(lam == v).sum() for v in values])
        if len(values) > 1:
            assert st.chisquare(counts, mult / mult.sum() * counts.sum()).pvalue > a
        log_k = torch.log(K)
        for field, fit in (("sigma_g", prof.g_scale), ("sigma_TL", prof.G_scale), ("sigma_r", prof.R_scale)):
            resid = (torch.log(getattr(p, field)[sel].double()) - fit.slope * log_k - fit.bias) / fit.sigma
            # float32 storage of K and sigma: ~1e-6 relative, far below the KS resolution
            assert st.kstest(resid.numpy(), "norm").pvalue > a, (name, field)


def test_camera_selection():
    p = sample_noise_params(500, cameras="sonya7s2")
    assert p.cameras == ("SonyA7S2",) and torch.all(p.camera_index == 0)
    prof = load_profile("NikonD850")
    q = sample_noise_params(500, cameras=[prof, "SonyA7S2"], K_range="camera")
    assert q.cameras == ("NikonD850", "SonyA7S2") and set(q.camera_index.tolist()) == {0, 1}
    nikon = q.camera_index == 0
    assert torch.all(q.lam[nikon] < 0)  # all of NikonD850's shapes are negative


def test_vectorised_over_batch_is_fast():
    import time

    t = time.perf_counter()
    sample_noise_params(200_000)
    assert time.perf_counter() - t < 5.0


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(batch=0), ValueError, r"batch must be an integer >= 1, got 0"),
        (dict(batch=2.0), ValueError, r"batch must be an integer, got 2.0"),
        (dict(cameras=[]), ValueError, "non-empty list"),
        (dict(cameras="Pentax"), ValueError, "unknown camera 'Pentax'"),
        (dict(K_range=(0.0, 30.0)), ValueError, r"K_range must satisfy 0 < low <= high"),
        (dict(K_range=(30.0, 0.1)), ValueError, r"K_range must satisfy 0 < low <= high"),
        (dict(K_range=(0.1,)), ValueError, r"K_range must be a pair"),
        (dict(K_range="iso"), ValueError, r"K_range must be a pair \(low, high\) or 'camera'"),
        (dict(ratio_range=(300, 100)), ValueError, r"ratio_range must satisfy 0 < low <= high"),
        (dict(ratio_range=(-1, 100)), ValueError, r"ratio_range must satisfy"),
        (dict(model="P+q"), ValueError, r"unknown noise component 'q'"),
    ],
)
def test_sample_refusals(kw, exc, match):
    kw.setdefault("batch", 4)
    with pytest.raises(exc, match=match):
        sample_noise_params(**kw)


def test_noise_params_select_keeps_the_chosen_samples():
    p = sample_noise_params(5, model="P+G+r+u", generator=torch.Generator().manual_seed(3))
    part = p.select(slice(1, 4))
    assert part.batch == 3 and part.cameras == p.cameras and part.model == p.model
    for name in ("K", "ratio", "sigma_g", "sigma_TL", "lam", "sigma_r", "camera_index"):
        assert torch.equal(getattr(part, name), getattr(p, name)[1:4]), name
    assert torch.equal(p.select(torch.tensor([4, 0])).K, p.K[[4, 0]])
