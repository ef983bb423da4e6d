"""Numbers from users (issue 15, item 5): what a Python user calls a number is accepted
everywhere (numpy scalars, 0-d arrays and tensors), the rest is refused up front with a
ValueError naming the parameter, the value and the accepted range."""
import numpy as np
import pytest
import torch

from engine import BackboneConfig, InvalidRawError, Pipeline
from engine.camera import K_RANGE, resolve_gain
from engine.inference.pipeline import MAX_SEED, MAX_STEPS
from kernels._common import per_sample
from kernels.numbers import NotANumberError, integer, is_number, real

pytestmark = pytest.mark.usefixtures("one_thread")
ARR = dict(pattern="RGGB", black_level=512, white_level=16383)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    return Pipeline(cfg.build(), cfg, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def frame():
    return np.random.default_rng(0).integers(512, 4000, (32, 32)).astype(np.uint16)


# ------------------------------------------------------------------ the shared parser
@pytest.mark.parametrize("value", [3, 3.0, np.float32(3), np.int64(3), np.uint8(3), np.array(3.0),
                                   torch.tensor(3.0), torch.tensor(3, dtype=torch.int32), torch.tensor(3.0).double()])
def test_real_accepts_what_python_users_call_numbers(value):
    assert is_number(value)
    v = real("x", value)
    assert v == 3.0 and type(v) is float


@pytest.mark.parametrize("value, match", [
    (True, "x must be a number .* got the bool True"),
    (np.bool_(False), "got the bool False"),
    ("3", "got str '3'"),
    (None, "got NoneType"),
    (1 + 2j, "got complex"),
    (np.ones(2), r"got an array of shape \(2,\)"),
    (torch.ones(1), r"got a tensor of shape \(1,\)"),
    (torch.tensor(True), "got a bool tensor"),
    (torch.tensor(1.0, device="meta"), "x is a meta tensor, which holds no value"),
])
def test_real_refuses_non_numbers(value, match):
    assert not is_number(value)
    with pytest.raises(NotANumberError, match=match) as info:
        real("x", value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_real_and_integer_ranges():
    assert real("r", 0.5, low=0, low_open=True) == 0.5
    with pytest.raises(ValueError, match=r"r must be a finite number > 0, got 0"):
        real("r", 0, low=0, low_open=True)
    with pytest.raises(ValueError, match=r"r must be a finite number in \[1, 2\], got nan"):
        real("r", float("nan"), low=1, high=2)
    with pytest.raises(ValueError, match=r"r must be a finite number, got inf"):
        real("r", np.float32("inf"))
    assert integer("n", np.int64(2**62)) == 2**62
    for bad in (1.5, 2.0, np.float32(2), torch.tensor(2.0)):
        with pytest.raises(ValueError, match=r"n must be an integer, got 2.0|n must be an integer, got 1.5"):
            integer("n", bad)
    with pytest.raises(ValueError, match=r"n must be an integer in \[0, 18446744073709551615\], got -1"):
        integer("n", -1, low=0, high=2**64 - 1)


def test_per_sample_takes_numpy_and_tensor_scalars():
    dev = torch.device("cpu")
    assert per_sample("K", np.float32(2), 2, dev).tolist() == [2.0, 2.0]
    assert per_sample("K", [np.float64(1), np.int32(2)], 2, dev).tolist() == [1.0, 2.0]
    assert per_sample("K", np.array(3.0), 1, dev).tolist() == [3.0]
    with pytest.raises(ValueError, match=r"K must be > 0, got \[0.0\]"):
        per_sample("K", np.float32(0), 1, dev, positive=True)


# ------------------------------------------------------------------ the pipeline
def test_numpy_and_tensor_scalars_give_the_same_result(pipe, frame):
    ref = pipe(frame, **ARR, ratio=100, steps=2, K=1.5, seed=3).raw
    for kw in (dict(ratio=np.float32(100), steps=np.int64(2), K=np.float64(1.5), seed=np.uint32(3)),
               dict(ratio=torch.tensor(100.0), steps=torch.tensor(2), K=torch.tensor(1.5), seed=torch.tensor(3)),
               dict(ratio=np.array(100), steps=np.array(2), K=np.array(1.5), seed=np.array(3))):
        assert torch.equal(pipe(frame, **ARR, **kw).raw, ref), kw
    by_iso = pipe(frame, **ARR, ratio=100, steps=1, iso=800, stochastic=False).raw
    assert torch.equal(pipe(frame, **ARR, ratio=100, steps=1, iso=np.float32(800), stochastic=False).raw, by_iso)


@pytest.mark.parametrize("kwargs, match", [
    (dict(K=1e-45), r"K must be a finite number in \[0.01, 10000\] DN per photo-electron, got 1e-45"),
    (dict(K=3e38), r"K must be a finite number in \[0.01, 10000\] DN per photo-electron, got 3e\+38"),
    (dict(K=1.0, steps=10**9), r"steps must be an integer in \[1, 100\], got 1000000000"),
    (dict(K=1.0, steps=MAX_STEPS + 1), r"steps must be an integer in \[1, 100\], got 101"),
    (dict(K=1.0, steps=2.0), r"steps must be an integer, got 2.0"),
    (dict(K=1.0, seed=2**64), r"seed must be an integer in \[0, 18446744073709551615\], got 18446744073709551616"),
    (dict(K=1.0, seed=-1), r"seed must be an integer in \[0, 18446744073709551615\], got -1"),
    (dict(K=1.0, seed=1.5), r"seed must be an integer, got 1.5"),
    (dict(K=1.0, seed=True), r"seed must be a number .* got the bool True"),
    (dict(K=1.0, ratio=True), r"ratio must be a number .* got the bool True"),
    (dict(K="2"), r"K must be a number .* got str '2'"),
    (dict(iso=1e9), r"ISO 1e\+09 gives K = \d+ DN per photo-electron through the SonyA7S2 profile, outside the "
                    r"accepted \[0.01, 10000\]"),
    (dict(iso=-100), r"iso must be a finite number > 0, got -100"),
])
def test_out_of_range_numbers_are_refused_up_front(pipe, frame, monkeypatch, kwargs, match):
    import engine.inference.pipeline as mod

    def never(*a, **k):
        raise AssertionError("reached the kernels before refusing")

    monkeypatch.setattr(mod, "pack_bayer", never)
    kwargs = {"ratio": 100, "steps": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(frame, **ARR, **kwargs)


def test_limits_are_the_documented_ones(pipe, frame):
    assert K_RANGE == (0.01, 1.0e4) and MAX_STEPS == 100 and MAX_SEED == 2**64 - 1
    assert resolve_gain(K=0.01) == 0.01 and resolve_gain(K=np.float32(1e4)) == 1e4  # bounds included
    pipe(frame, **ARR, ratio=100, steps=1, K=1.0, seed=MAX_SEED)  # the largest seed works


@pytest.mark.parametrize("ratio", [0.5, 1, np.float32(1)])
def test_ratio_up_to_one_with_one_step(pipe, frame, ratio):
    """docs/limits.md: ratio in (0, 10000], > 1 only when steps > 1: one step at r <= 1 is a plain denoise."""
    out = pipe(frame, **ARR, ratio=ratio, steps=1, K=1.0, stochastic=False)
    assert out.raw.shape == (4, 16, 16) and torch.isfinite(out.raw).all()
    assert out.schedule == [1.0, float(ratio)]


@pytest.mark.parametrize("source, match", [
    ([], r"empty batch \(empty list\): give at least one frame"),
    ((), r"empty batch \(empty tuple\): give at least one frame"),
    (np.zeros((0, 32, 32), np.uint16), r"empty batch \(array of shape \(0, 32, 32\)\): give at least one frame"),
    (torch.zeros((0, 32, 32), dtype=torch.uint16), r"empty batch \(array of shape \(0, 32, 32\)\)"),
])
def test_empty_batches_are_refused(pipe, source, match):
    with pytest.raises(InvalidRawError, match=match):
        pipe(source, **ARR, ratio=10, K=1.0)


def test_meta_tensors_and_device_are_refused(pipe):
    with pytest.raises(InvalidRawError, match="torch tensor on meta: a meta tensor holds no pixels"):
        pipe(torch.zeros(32, 32, dtype=torch.uint16, device="meta"), **ARR, ratio=10, K=1.0)
    with pytest.raises(InvalidRawError, match="a meta tensor holds no pixels"):
        pipe(torch.zeros(2, 32, 32, dtype=torch.uint16, device="meta"), **ARR, ratio=10, K=1.0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    with pytest.raises(ValueError, match="device 'meta' holds no data"):
        Pipeline(cfg.build(), cfg, device="meta")
