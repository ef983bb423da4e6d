"""Fast samplers for the plain-PyTorch (CPU) paths of the ops.

``torch.poisson`` runs one element after another on a single core on the CPU (ATen's
serial kernel), and it dominates the CPU reference of noise synthesis and of the
exposure step. ``poisson_draws`` splits a large tensor into fixed chunks, each drawn
by ``torch.poisson`` with its own generator seeded from the caller's generator, on a
pool of threads (ATen releases the GIL). The chunk size is fixed, so the result depends
on the generator only, not on the number of threads. ``tukey_lambda_draws`` is the
float32 form of the Tukey-lambda sampler, the same stable formula as the Triton kernel.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from ._common import device_generator, draw_key, generator_for

# Elements per chunk: large enough that a chunk's ~5 ms dwarfs the thread hand-off.
POISSON_CHUNK = 1 << 17

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None  # (process id, workers): a forked child needs its own threads
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_key
    key = (os.getpid(), workers)
    with _pool_lock:
        if _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool, _pool_key = ThreadPoolExecutor(workers, thread_name_prefix="poisson"), key
        return _pool


def poisson_draws(mu: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``torch.poisson(mu)`` in float32, drawn in parallel on the CPU for large tensors.

    Args:
        mu: non-negative means, any shape, float32 (other float dtypes are converted).
        generator: seeds the draws (default: torch's global generator, so
            ``torch.manual_seed`` makes them repeatable); on any device
            (``kernels._common.generator_for``): the draws are made on mu's device.

    Returns:
        float32 counts of mu's shape. On CUDA one ``torch.poisson`` call on a private
        generator keyed from ``generator`` (see the comment inside; note that
        curand_poisson approximates means above 4000 by a rounded normal: the exact
        sampler on CUDA is the Triton kernel). On the CPU above ``POISSON_CHUNK`` elements, chunk
        i is ``torch.poisson`` under a generator seeded by the i-th of a batch of keys
        drawn from ``generator``, spread over ``torch.get_num_threads()`` threads (the
        same draws whatever the thread count); otherwise one ``torch.poisson`` call.
    """
    mu = mu.to(torch.float32)
    generator = generator_for(generator, mu.device)  # any device's generator (kernels._common)
    n = mu.numel()
    if mu.device.type == "cuda":
        # torch.poisson on CUDA (curand_poisson) reserves 20 numbers of the generator's
        # Philox stream per element, but Knuth's method (means below 64) uses about
        # mean + 1 of them: the generator's next draws would repeat the tail
        # (pytorch/pytorch#136750), correlating e.g. shot with read noise (the first GPU
        # run: within-row variance 216 against 199). So every call draws on a private
        # generator keyed from the caller's.
        return torch.poisson(mu, generator=device_generator(mu.device, draw_key(generator, mu.device)))
    if mu.device.type != "cpu" or n <= POISSON_CHUNK:
        return torch.poisson(mu, generator=generator)
    workers = max(1, torch.get_num_threads())
    flat = mu.reshape(-1)
    chunks = -(-n // POISSON_CHUNK)
    keys = torch.randint(0, 2**62, (chunks,), generator=generator, dtype=torch.int64).tolist()
    parts: list[torch.Tensor | None] = [None] * chunks

    def draw(first: int) -> None:
        # new tensors only (no writes into the caller's): worker threads do not share the
        # caller's grad / inference mode
        for i in range(first, chunks, workers):
            mu_i = flat[i * POISSON_CHUNK : (i + 1) * POISSON_CHUNK]
            parts[i] = torch.poisson(mu_i, generator=torch.Generator().manual_seed(keys[i]))

    if workers == 1:
        draw(0)  # the same chunks and keys, in this thread
    else:
        for future in [_executor(workers).submit(draw, w) for w in range(min(workers, chunks))]:
            future.result()
    return torch.cat(parts).view(mu.shape)


def tukey_lambda_draws(lam: torch.Tensor, shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """Float32 Tukey-lambda(lam) draws (lam broadcasts to ``shape``), stable through lam = 0.

    ``(u^lam - v^lam) / lam = v^lam (log u - log v) expm1(d) / d`` with ``v = 1 - u`` and
    ``d = lam (log u - log v)``: no cancellation for small lam, the logistic
    ``log(u / v)`` exactly at lam = 0 (the Triton kernel's formula).
    """
    lam = lam.to(torch.float32)
    generator = generator_for(generator, lam.device)
    u = torch.rand(shape, generator=generator, dtype=torch.float32, device=lam.device).clamp_(min=2.0**-25)
    log_v = torch.log1p(-u)
    diff = torch.log(u).sub_(log_v)
    d = lam * diff
    ratio = torch.expm1(d).div_(d)
    ratio = torch.where(d == 0, torch.ones_like(ratio), ratio)
    return torch.exp(lam * log_v).mul_(diff).mul_(ratio)
