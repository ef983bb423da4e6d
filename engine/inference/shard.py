"""Many devices: one process per device (a rank), the files shared out between them.

``torchrun --nproc_per_node N -m training enhance ...`` starts N ranks (RANK, WORLD_SIZE,
LOCAL_RANK set by torchrun; several machines join through torchrun's rendezvous,
``--nnodes`` / ``--rdzv-endpoint``); ``enhance --devices cuda:0,cuda:1`` starts them
itself on this machine. Either way every rank:

1. plans the outputs of the whole list (the same names on every rank: they depend only on
   the set of inputs) and waits at a barrier, so no rank writes before all have planned
   (``--skip-existing`` sees the same files everywhere);
2. takes every ``WORLD_SIZE``-th file from its ``RANK`` on (``shard``), enhances it on its
   own device and writes its own outputs (disjoint names: no two ranks write one file);
3. sends its per-file results to the others (``gather``; a gloo process group, which
   carries Python objects whatever the devices), and rank 0 prints one summary.

With one process (no torchrun, no ``--devices``) none of this happens: rank 0 of 1.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
from typing import Callable

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class Rank:
    """This process's place: ``rank`` of ``world`` in all, ``local_rank`` of ``local_world`` on this machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1


def current_rank() -> Rank:
    """The rank torchrun (or ``run_ranks``) gave this process, from its environment."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank()
    return Rank(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")),
                int(env.get("LOCAL_WORLD_SIZE", str(world))))


def shard(items: list, rank: Rank) -> list:
    """This rank's share: items ``rank``, ``rank + world``, ... (balanced within one item)."""
    return items[rank.rank::rank.world]


def join(rank: Rank) -> None:
    """Join the ranks' gloo group (once) when there are several ranks."""
    if rank.distributed and not dist.is_initialized():
        dist.init_process_group("gloo")


def barrier(rank: Rank) -> None:
    if rank.distributed:
        dist.barrier()


def gather(obj, rank: Rank) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not rank.distributed:
        return [obj]
    out = [None] * rank.world
    dist.all_gather_object(out, obj)
    return out


def leave(rank: Rank) -> None:
    if rank.distributed and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(rank: Rank, device: str, devices: list[str] | None = None) -> torch.device:
    """The device of a rank: its entry of ``devices``; else under torchrun with ``device``
    "auto" or "cuda", the GPU of its local rank; else ``device`` ("auto": CUDA if any)."""
    if devices:
        return torch.device(devices[rank.rank])
    if device in ("auto", "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda", rank.local_rank % torch.cuda.device_count()) if rank.distributed \
                else torch.device("cuda")
        if device == "cuda":
            raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
        return torch.device("cpu")
    return torch.device(device)


def cpu_threads(rank: Rank) -> int:
    """torch threads for a CPU rank: this machine's cores shared among its ranks."""
    return max(1, (os.cpu_count() or 1) // rank.local_world)


def run_ranks(n: int, fn: Callable[..., int], *args) -> int:
    """Run ``fn(*args)`` in ``n`` processes on this machine as ranks 0..n-1 of one group
    (environment as torchrun sets it); return the largest exit status.

    The processes are spawned (fresh interpreters, as torchrun starts them): a forked
    copy of a process that already ran torch's OpenMP or CUDA could hang. ``fn`` and
    ``args`` must therefore be picklable (a module-level function).
    """
    ctx = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = []
    for r in range(n):
        env = {"RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(n),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        p = ctx.Process(target=_rank_main, args=(env, fn, args), name=f"enhance-rank-{r}")
        p.start()
        procs.append(p)
    codes = []
    for p in procs:
        p.join()
        codes.append(p.exitcode if p.exitcode is not None else 1)
    return max(c if c >= 0 else 1 for c in codes)  # a rank killed by a signal counts as failed


def _rank_main(env: dict, fn: Callable[..., int], args) -> None:
    os.environ.update(env)
    raise SystemExit(fn(*args))


def _free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
