"""engine.Pipeline in a server: calls from many threads give exactly the sequential results;
captured CUDA graphs are bounded (least recently used, by count and bytes) and released on
eviction; 500 varied calls leave memory, file handles and threads where they were."""
import os
import random
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from engine import BackboneConfig, Pipeline
from engine.inference.graphs import GraphCache, GraphedDiffusion

ARR = dict(pattern="RGGB", black_level=512, white_level=16383, K=2.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = BackboneConfig(options={"widths": (8, 8, 16, 16, 16)})
    return cfg.build().eval(), cfg


def _jobs(n, seed=0):
    rng = np.random.default_rng(seed)
    jobs = []
    for i in range(n):
        h, w = (int(rng.integers(2, 7)) * 16 for _ in range(2))
        frame = rng.integers(512, 4000, (h, w)).astype(np.uint16)
        jobs.append((frame, dict(ratio=float(rng.uniform(2, 300)), steps=int(rng.integers(1, 4)), seed=i,
                                 stochastic=bool(i % 2), **ARR)))
    return jobs


@pytest.mark.parametrize("threads", [4, 8])
def test_threads_give_the_sequential_results(model, threads, tmp_path, monkeypatch):
    """One pipeline shared by several threads (the backbone choice made at the first frame
    under the pipeline's lock, the candidates built once): every result is bit-identical to
    the same call made alone."""
    monkeypatch.setenv("EXPOSURE_DIFFUSION_CACHE", str(tmp_path))
    net, cfg = model
    jobs = _jobs(24)
    alone = Pipeline(net, cfg, device="cpu", backbone_path="eager")
    expected = [alone(frame, **kw).raw for frame, kw in jobs]
    shared = Pipeline(net, cfg, device="cpu", backbone_path="auto", isolate_choice=False)  # "twin" lives here
    shared._candidate_names = ["eager", "twin"]
    built = []
    shared._builders["twin"] = lambda: built.append(1) or shared._net  # same maths: any choice gives the same bits
    with ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(lambda job: shared(job[0], **job[1]).raw, jobs))
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    loops = {(kw["steps"], kw["stochastic"]) for _, kw in jobs}
    assert built == [1] and len(shared.backbone_timings) == len(loops)  # built once, each loop chosen once


class FakeEntry:
    def __init__(self, nbytes):
        self.nbytes, self.released = nbytes, False

    def release(self):
        self.released = True


def test_graph_cache_evicts_the_least_recently_used_by_count_and_bytes():
    cache = GraphCache(max_graphs=3, max_bytes=1000)
    a, b, c, d = (FakeEntry(300) for _ in range(4))
    for key, entry in (("a", a), ("b", b), ("c", c)):
        cache.put(key, entry)
    assert cache.get("a") is a  # a is now the most recently used
    cache.put("d", d)  # 4 > 3 graphs: the least recently used (b) goes
    assert b.released and not a.released and cache.get("b") is None and len(cache) == 3
    big = FakeEntry(700)
    cache.put("big", big)  # 4 graphs: c goes; then 300 + 300 + 700 > 1000 bytes: a goes
    assert c.released and a.released and not d.released and list(cache._entries) == ["d", "big"]
    huge = FakeEntry(5000)
    cache.put("huge", huge)  # alone over the bound: kept (the graph about to run), the rest go
    assert big.released and not huge.released and len(cache) == 1 and cache.evictions == 5
    with pytest.raises(ValueError, match="max_graphs must be >= 1"):
        GraphCache(0)


def test_graphed_runners_share_the_pipelines_bound(monkeypatch):
    """The bookkeeping of GraphedDiffusion on a CPU (capture stood in: no GPU): one graph per
    input shape, reused, evicted and released beyond the pipeline's bound."""
    captured = []

    def fake_capture(self, first_input, ratio, K, rho):
        entry = types.SimpleNamespace(graph=types.SimpleNamespace(replay=lambda: None),
                                      first_input=first_input.clone(), ratio=ratio.clone(), K=K.clone(),
                                      rho=rho.clone(), seeds=torch.zeros(rho.shape[1] - 1, dtype=torch.int64),
                                      estimate=first_input[:, :4].clone(), nbytes=first_input.numel() * 4,
                                      released=False)
        entry.release = lambda: setattr(entry, "released", True)
        captured.append(entry)
        return entry

    monkeypatch.setattr(GraphedDiffusion, "_capture", fake_capture)
    import engine.inference.graphs as graphs

    monkeypatch.setattr(graphs, "philox_seed", lambda generator, device: torch.zeros(1, dtype=torch.int64))
    cache = GraphCache(max_graphs=2)
    first, second = GraphedDiffusion(None, cache=cache), GraphedDiffusion(None, cache=cache)
    kw = dict(ratio=torch.tensor([10.0]), K=torch.tensor([1.0]), rho=torch.tensor([[1.0, 5.0, 10.0]]))
    first(torch.rand(1, 8, 16, 16), **kw)
    first(torch.rand(1, 8, 16, 16), **kw)  # the same shape: replayed, not captured again
    assert len(captured) == 1 and len(first) == 1
    second(torch.rand(1, 8, 32, 16), **kw)
    first(torch.rand(1, 8, 48, 16), **kw)  # a third graph over the pipeline's bound of 2
    assert len(captured) == 3 and captured[0].released and len(cache) == 2 and len(first) == 1 and len(second) == 1


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads memory and handles from /proc (Linux)")
def test_soak_500_calls_leave_memory_handles_and_threads_flat(model):
    """500 calls with random frame sizes, ratios, steps, photon modes and seeds on one CPU
    pipeline: after a warm-up of 100 calls the resident memory grows by less than 64 MB
    (allocator noise; a leak of one frame's tensors per call would be > 100 MB), and no file
    handle or thread is left behind."""
    net, cfg = model
    pipe = Pipeline(net, cfg, device="cpu", backbone_path="eager")
    jobs = _jobs(500, seed=1)
    random.Random(0).shuffle(jobs)
    for frame, kw in jobs[:100]:
        pipe(frame, **kw)
    rss, fds, threads = _rss(), _fds(), threading.active_count()
    for frame, kw in jobs[100:]:
        pipe(frame, **kw)
    assert _rss() - rss < 64 * 2**20, f"resident memory grew by {(_rss() - rss) / 2**20:.0f} MB"
    assert _fds() <= fds and threading.active_count() <= threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the GPU variant of the soak")
def test_soak_on_a_gpu_keeps_device_memory_flat(model):
    """The same soak on CUDA with graphs, bounded to 4: after the cache has filled, device
    memory stays within the bound (graphs evicted are released), not growing per shape."""
    net, cfg = model
    pipe = Pipeline(net, cfg, device="cuda", max_graphs=4)
    jobs = _jobs(300, seed=2)
    for frame, kw in jobs[:100]:
        pipe(frame, **kw)
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    for frame, kw in jobs[100:]:
        pipe(frame, **kw)
    torch.cuda.synchronize()
    assert len(pipe.graph_cache) <= 4 and pipe.graph_cache.evictions > 0
    assert torch.cuda.memory_allocated() - allocated < 64 * 2**20
