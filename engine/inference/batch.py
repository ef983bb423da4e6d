"""Many raw files to enhanced files, with decoding and encoding off the device's path.

``enhance_files(pipe, files, outputs, ...)`` runs a ``Pipeline`` over a list of files:

- ``workers=0``: one file after the other in this process (decode, enhance, write);
- ``workers=N``: N decoder processes read ahead (at most 2N files in flight, so a long
  list does not pile up decoded frames in memory), the pipeline enhances in this process,
  and N writer processes encode and write. The sRGB rendering stays on the pipeline's
  device (the fused kernel); writers only encode (PNG / TIFF) or build the DNG. On a GPU
  the device then never waits for rawpy or zlib; on a 2-core CPU there is nothing to gain
  (``bench/RESULTS.md``, file-to-file batch).

Both modes compute the same outputs (same calls, same seeds) and write them atomically.
A file that fails (decode, enhancement or write) is reported with its error and the
batch carries on.

Worker processes are forked where the platform can (Linux), as PyTorch's DataLoader
does: a forked worker never touches CUDA (it only decodes and encodes on the CPU) and
runs torch with one thread (an OpenMP region the parent started does not survive a
fork). Spawned workers would re-import the caller's ``__main__``, which breaks scripts
without an ``if __name__ == "__main__":`` guard and code run from stdin; ``start_method``
chooses another method.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..io.dng import write_frame_dng
from ..io.output import mosaic_dn, output_format, srgb_dtype, srgb_image, write_srgb
from ..io.paths import plan_outputs
from ..io.raw import RawFrame, read_raw


@dataclasses.dataclass
class FileResult:
    """What became of one input: ``error`` is None when ``output`` was written, or when it
    existed already and was left alone (``skipped``, with ``skip_existing=True``)."""

    source: Path
    output: Path
    error: str | None = None
    skipped: bool = False


def worker_pool(workers: int, start_method: str | None = None) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` decoder or writer processes (see the module docstring).

    ``start_method``: "fork" (default where available), "spawn" or "forkserver".
    """
    if start_method is None:
        start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method),
                                  initializer=_worker_init)


def enhance_files(pipe, files, outputs, *, fmt: str = "png", workers: int = 0, overwrite: bool = False,
                  skip_existing: bool = False, on_done: Callable[[FileResult], None] | None = None,
                  pools: tuple[cf.Executor, cf.Executor] | None = None, start_method: str | None = None,
                  **call) -> list[FileResult]:
    """Enhance ``files`` into ``outputs`` (same length, one output path per file).

    Args:
        pipe: an ``engine.Pipeline``.
        fmt: "png" (8-bit sRGB), "tiff" (16-bit sRGB) or "dng" (linear mosaic).
        workers: 0 for one file after the other; N > 0 for N decoder and N writer processes.
        overwrite: replace outputs that exist. Default: refuse them all before any work
            (``FileExistsError``); an output that appears during the run is never replaced
            (that file fails). ``engine.io.paths.plan_outputs`` also refuses, before any
            work, a file listed twice and an output that is one of the inputs.
        skip_existing: leave existing outputs alone and enhance only the other files
            (their results say ``skipped``).
        on_done: called with each file's ``FileResult`` as soon as it is known (progress).
        pools: (decoders, writers) process pools to use instead of starting ``workers`` of
            each (``worker_pool``; a service keeps its workers warm across calls; the caller
            shuts them down).
        start_method: how to start the workers ("fork" where available, else "spawn").
        call: keyword arguments of every ``pipe(...)`` call (ratio, steps, K, iso, seed, ...).

    Returns:
        One ``FileResult`` per file, in input order.
    """
    files, outputs = [Path(f) for f in files], [Path(o) for o in outputs]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    todo = plan_outputs(files, outputs, overwrite=overwrite, skip_existing=skip_existing)
    kind = output_format(outputs[0] if outputs else "x.png", fmt)
    results = [FileResult(f, o, skipped=i not in todo) for i, (f, o) in enumerate(zip(files, outputs))]
    for r in results:
        if r.skipped and on_done is not None:
            on_done(r)
    files, outputs = [files[i] for i in todo], [outputs[i] for i in todo]
    results_todo = [results[i] for i in todo]

    def fail(i: int, e: BaseException) -> None:
        results_todo[i].error = f"{type(e).__name__}: {e}"

    def done(i: int) -> None:
        if on_done is not None:
            on_done(results_todo[i])

    if workers == 0:
        for i, (src, dst) in enumerate(zip(files, outputs)):
            try:
                pipe(str(src), **call).save(dst, format=kind, overwrite=overwrite)
            except Exception as e:  # one bad file must not stop the batch
                fail(i, e)
            done(i)
        return results

    if pools is not None:
        _overlapped(pipe, files, outputs, kind, overwrite, 2 * workers, *pools, fail, done, call)
        return results
    with worker_pool(workers, start_method) as decoders, worker_pool(workers, start_method) as writers:
        _overlapped(pipe, files, outputs, kind, overwrite, 2 * workers, decoders, writers, fail, done, call)
    return results


def _overlapped(pipe, files, outputs, kind, overwrite, ahead, decoders, writers, fail, done, call) -> None:
    """Decoders read ahead (at most ``ahead`` files in flight), this process enhances,
    writers encode; each file's result is reported through ``done`` when known."""
    decoding: deque = deque()
    writing: deque = deque()
    submitted = 0

    def finish_write() -> None:
        i, future = writing.popleft()
        try:
            future.result()
        except Exception as e:
            fail(i, e)
        done(i)

    for i in range(len(files)):
        while submitted < len(files) and len(decoding) < ahead:
            decoding.append(decoders.submit(_decode, str(files[submitted])))
            submitted += 1
        try:
            frame = _frame(decoding.popleft().result())
            result = pipe(frame, **call)
            payload = _payload(result.raw, frame, kind)
        except Exception as e:
            fail(i, e)
            done(i)
            continue
        while len(writing) >= ahead:
            finish_write()
        writing.append((i, writers.submit(_write, str(outputs[i]), kind, payload, overwrite)))
    while writing:
        finish_write()


# ------------------------------------------------------------------ worker side
def _worker_init() -> None:
    torch.set_num_threads(1)  # never enter a (forked) OpenMP pool; workers run one file at a time


def _decode(path: str) -> dict:
    """rawpy decode in a worker: the RawFrame's fields, the pixels as numpy."""
    frame = read_raw(path)
    return _fields(frame, frame.cfa.numpy())


def _fields(frame: RawFrame, cfa: np.ndarray) -> dict:
    """A RawFrame as picklable fields, with ``cfa`` (numpy uint16) as its pixels."""
    return {**{f.name: getattr(frame, f.name) for f in dataclasses.fields(frame)}, "cfa": cfa}


def _frame(fields: dict) -> RawFrame:
    return RawFrame(**{**fields, "cfa": torch.from_numpy(fields["cfa"])})


def _payload(raw: torch.Tensor, frame: RawFrame, kind: str):
    """What a writer needs, made on the pipeline's device: the sRGB image, or the DNG's
    mosaic with the frame's metadata (its pixels replaced by the enhanced mosaic)."""
    if kind == "dng":
        return _fields(frame, mosaic_dn(raw, frame).cpu().numpy())
    return srgb_image(raw, frame, srgb_dtype(kind)).cpu().numpy()


def _write(path: str, kind: str, payload, overwrite: bool) -> str:
    if kind == "dng":
        frame = _frame(payload)
        write_frame_dng(path, frame, cfa=frame.cfa, overwrite=overwrite)
    else:
        write_srgb(path, np.asarray(payload), kind, overwrite=overwrite)
    return path
