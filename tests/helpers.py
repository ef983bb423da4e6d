"""Small helpers shared by the test modules."""
import os
import signal

import numpy as np
import scipy.stats as st
import torch


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (or the max integer) so unwritten elements show."""
    if t.dtype.is_floating_point:
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).max)


def chi_square_pvalue(samples: np.ndarray, mean: float, n_bins: int = 30) -> float:
    """Chi-square goodness of fit of integer samples to Poisson(mean).

    Bins are intervals of integers between quantiles of the exact distribution, merged
    so every bin expects at least 5 samples; the two tails are open-ended bins.
    """
    dist = st.poisson(mean)
    edges = np.unique(dist.ppf(np.linspace(0, 1, n_bins + 1)[1:-1]).astype(np.int64))
    # bin j holds k in (edges[j-1], edges[j]]; first bin k <= edges[0], last k > edges[-1]
    cdf = dist.cdf(edges)
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    counts = np.bincount(np.searchsorted(edges, samples, side="left"), minlength=len(probs))
    expected = probs * len(samples)
    # merge bins with expected < 5 into their neighbour
    obs_m, exp_m, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(counts, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            obs_m.append(acc_o), exp_m.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0 and exp_m:
        obs_m[-1] += acc_o
        exp_m[-1] += acc_e
    if len(exp_m) < 2:
        # (nearly) degenerate distribution: every sample must sit in the one bin
        return 1.0 if counts.sum() == len(samples) else 0.0
    return st.chisquare(obs_m, exp_m).pvalue


SMALL_UNET = {"widths": (8, 8, 16, 16, 16)}  # a UNet small enough for many CPU frames in a test


def small_cpu_pipeline():
    """A fp32 CPU ``engine.Pipeline`` around a small, seeded random UNet."""
    from engine import BackboneConfig, Pipeline

    torch.manual_seed(0)
    cfg = BackboneConfig(options=SMALL_UNET)
    return Pipeline(cfg.build(), cfg, device="cpu", precision="fp32")


class CrashesInAChildProcess(torch.nn.Module):
    """A backbone that works in the process that made it and kills any other process that
    runs it with SIGSEGV (a native runtime crashing, as seen by the CPU choice's child)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.owner = net, os.getpid()

    def forward(self, x):
        if os.getpid() != self.owner:
            os.kill(os.getpid(), signal.SIGSEGV)
        return self.net(x)
