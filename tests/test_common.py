"""kernels._common: per-sample parameters, seeds, dispatch and the shared refusals."""
import threading

import pytest
import torch

from kernels import _common
from kernels._common import ValueChecks, check_same_device, check_tensor, per_sample, philox_seed, use_triton, value_checks_disabled


def test_per_sample_broadcasts_numbers_sequences_and_tensors():
    dev = torch.device("cpu")
    assert per_sample("K", 2, 3, dev).tolist() == [2.0, 2.0, 2.0]
    assert per_sample("K", [1, 2, 3], 3, dev).tolist() == [1.0, 2.0, 3.0]
    t = per_sample("K", torch.tensor([4.0], dtype=torch.float64), 2, dev)
    assert t.dtype == torch.float32 and t.tolist() == [4.0, 4.0] and t.is_contiguous()


@pytest.mark.parametrize(
    "value, kw, match",
    [
        ([1.0, 2.0], {}, "K has 2 values but the batch has 3 samples"),
        (0.0, {"positive": True}, r"K must be > 0, got \[0.0\]"),
        ([1.0, 0.0, 2.0], {"positive": True}, r"K must be > 0, got \[1.0, 0.0, 2.0\]"),
        (torch.tensor([1.0, -1.0, 2.0]), {"positive": True}, r"K must be > 0, got \[1.0, -1.0, 2.0\]"),
        (torch.tensor([float("nan")]), {}, r"K must be finite, got \[nan, nan, nan\]"),
        (-1.0, {"nonnegative": True}, "K must be >= 0"),
        (0.5, {"min_value": 1.0}, "K must be >= 1.0"),
        (float("inf"), {}, "K must be finite"),
        ("2", {}, "K must be a number, a sequence or a tensor, got str"),
    ],
)
def test_per_sample_refusals(value, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        per_sample("K", value, 3, torch.device("cpu"), **kw)


def test_per_sample_refuses_tensor_on_other_device():
    with pytest.raises(ValueError, match="K is on meta but the data is on cpu"):
        per_sample("K", torch.ones(3, device="meta"), 3, torch.device("cpu"))


def test_value_checks_can_be_disabled_for_graph_capture():
    negative = torch.tensor([-1.0])
    with value_checks_disabled():
        assert per_sample("K", negative, 2, torch.device("cpu"), positive=True).tolist() == [-1.0, -1.0]
        # plain numbers are checked on the host, which never touches the device: still refused
        with pytest.raises(ValueError, match="K must be > 0"):
            per_sample("K", -1.0, 2, torch.device("cpu"), positive=True)
    with pytest.raises(ValueError, match="K must be > 0"):
        per_sample("K", negative, 2, torch.device("cpu"), positive=True)


def test_disabled_checks_do_not_even_compute_their_conditions():
    """Inside a CUDA graph capture a computed condition would be a kernel in the graph."""
    computed = []
    checks = ValueChecks()
    with value_checks_disabled():
        checks.require(lambda: computed.append(1) or torch.tensor([False]), lambda: "never raised")
        per_sample("K", torch.tensor([-1.0]), 1, torch.device("cpu"), positive=True, checks=checks)
        checks.run()
    assert computed == []
    checks.require(lambda: computed.append(1) or torch.tensor([False]), lambda: "raised")
    with pytest.raises(ValueError, match="raised"):
        checks.run()
    assert computed == [1]


def test_value_checks_switch_is_per_thread():
    """A thread capturing a graph (checks off) must not turn them off for another thread."""
    inside, seen = threading.Event(), {}

    def other():
        inside.wait()
        try:
            per_sample("K", torch.tensor([-1.0]), 1, torch.device("cpu"), positive=True)
            seen["raised"] = False
        except ValueError:
            seen["raised"] = True

    worker = threading.Thread(target=other)
    worker.start()
    with value_checks_disabled():
        inside.set()
        worker.join()
    assert seen == {"raised": True}


def test_value_checks_read_the_device_once_per_batch_of_checks(monkeypatch):
    reads = []
    monkeypatch.setattr(_common, "host_read_bool", lambda flag: reads.append(1) or bool(flag))
    checks = ValueChecks()
    a = per_sample("a", torch.tensor([1.0, 2.0]), 2, torch.device("cpu"), positive=True, checks=checks)
    b = per_sample("b", torch.tensor([0.0, 3.0]), 2, torch.device("cpu"), nonnegative=True, checks=checks)
    checks.require(b < a + 5, lambda: "b too large")
    assert reads == []  # nothing read until run()
    checks.run()
    assert len(reads) == 1
    checks.require(a > 1.5, lambda: f"a must be > 1.5, got {a.tolist()}")
    checks.require(a > 100, lambda: "never reached: the first failing check raises")
    with pytest.raises(ValueError, match=r"a must be > 1.5, got \[1.0, 2.0\]"):
        checks.run()


def test_philox_seed_follows_the_generator():
    a = philox_seed(torch.Generator().manual_seed(3), torch.device("cpu"))
    b = philox_seed(torch.Generator().manual_seed(3), torch.device("cpu"))
    assert a.dtype == torch.int64 and a.shape == (1,) and torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    assert not torch.equal(philox_seed(g, torch.device("cpu")), philox_seed(g, torch.device("cpu")))


def test_check_tensor_and_same_device_messages():
    with pytest.raises(TypeError, match=r"x must have dtype in \(float32\), got int32"):
        check_tensor("x", torch.zeros(2, dtype=torch.int32), dtypes=(torch.float32,))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got shape \(2,\)"):
        check_tensor("x", torch.zeros(2), ndims=(4,))
    with pytest.raises(ValueError, match="all tensors must be on one device, got a on cpu, b on meta"):
        check_same_device(a=torch.zeros(1), b=torch.zeros(1, device="meta"))


def test_auto_dispatch_is_by_device():
    assert use_triton(torch.device("cpu"), "auto") is False
    assert use_triton(torch.device("cpu"), "torch") is False
