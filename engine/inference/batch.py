"""Many raw files to enhanced files, with decoding and encoding off the device's path.

``enhance_files(pipe, files, outputs, ...)`` runs a ``Pipeline`` over a list of files.
Every mode walks the same steps in the same order, so the outputs are byte-identical
whatever the mode:

1. decode (rawpy) each file, in input order;
2. group consecutive decoded frames of one size and pattern, up to ``batch`` of them
   (a file that fails to decode is reported and left out; it does not end a group);
3. enhance each group in one ``pipe`` call (on CUDA: one graph replay for the group);
   render sRGB on the pipeline's device (the fused kernel), or, for JPEG on a CUDA
   device with torchvision, encode there too (nvJPEG, the group in one call);
4. encode (PNG / JPEG / TIFF) or build the DNG, and write atomically.

- ``workers=0``: all of it in this process, one group after the other.
- ``workers=N``: N decoder processes (at most one per file to enhance: a process
  beyond that would get no file, only its memory) read ahead (at most ``2N + batch`` files in flight,
  so a long list never piles up decoded frames in memory) and N writer processes encode
  and write, while this process runs the device. On CUDA the decoded frames are copied
  into pinned host memory, so the pipeline's host -> device copies are asynchronous, and
  the rendered images come back through pinned non-blocking copies that are handed to the
  writers only after the next group has been started.

A file that fails (decode, enhancement or write: a full disk, an unwritable folder, a name
taken meanwhile) is reported with its reason and the others still run; a failed group of
several frames is retried frame by frame, so one bad frame does not fail its neighbours.

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
import errno
import multiprocessing
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..io.dng import write_frame_dng
from ..io.encode import device_jpeg_available, encode_jpeg_on_device
from ..io.exif import Provenance, exif_tags, jpeg_with_exif, pillow_exif
from ..io.output import OutputOptions, mosaic_dn, output_options, srgb_image, write_bytes, write_srgb
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
    ratio: float | None = None  # the exposure ratio used (the one estimated with ratio="auto")


def worker_pool(workers: int, start_method: str | None = None) -> cf.ProcessPoolExecutor:
    """A pool of ``workers`` decoder or writer processes (see the module docstring).

    ``start_method``: "fork" (default where available), "spawn" or "forkserver".
    """
    if start_method is None:
        start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method),
                                  initializer=_worker_init)


class InlineExecutor(cf.Executor):
    """Runs each submitted call at once in this thread (``workers=0``)."""

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        future = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future, as a pool would
            if not isinstance(e, Exception):
                raise
            future.set_exception(e)
        return future


def enhance_files(pipe, files, outputs, *, fmt: "OutputOptions | str" = "png", workers: int = 0, batch: int = 1,
                  overwrite: bool = False, skip_existing: bool = False,
                  on_done: Callable[[FileResult], None] | None = None,
                  on_step: Callable[[int, int, int], None] | None = None,
                  pools: tuple[cf.Executor, cf.Executor] | None = None, start_method: str | None = None,
                  stats: dict | None = None, **call) -> list[FileResult]:
    """Enhance ``files`` into ``outputs`` (same length, one output path per file).

    Args:
        pipe: an ``engine.Pipeline``.
        fmt: an ``engine.io.output.OutputOptions`` or a format name: "png" (8-bit sRGB,
            fast compression), "jpeg", "tiff" (16-bit sRGB) or "dng" (linear mosaic).
        workers: 0 for everything in this process; N > 0 for N decoder and N writer
            processes, at most one of each per file to enhance.
        batch: at most this many consecutive same-size frames per ``pipe`` call (>= 1).
        overwrite: replace outputs that exist. Default: refuse them all before any work
            (``FileExistsError``); an output that appears during the run is never replaced
            (that file fails). ``engine.io.paths.plan_outputs`` also refuses, before any
            work, a file listed twice and an output that is one of the inputs.
        skip_existing: leave existing outputs alone and enhance only the other files
            (their results say ``skipped``).
        on_done: called with each file's ``FileResult`` as soon as it is known (progress).
        on_step: called as ``on_step(step, steps, frames)`` after each network evaluation
            ``step`` (1..steps) of a ``pipe`` call enhancing ``frames`` files at once: progress
            inside a file (a large frame takes tens of seconds per step on a CPU). Passed to
            ``pipe`` as ``progress=`` (``Pipeline.__call__``); None: not passed.
        pools: (decoders, writers) executors to use instead of starting ``workers`` of
            each (``worker_pool``; a service keeps its workers warm across calls; the caller
            shuts them down).
        start_method: how to start the workers ("fork" where available, else "spawn").
        stats: a dict to fill with where this process's time went (seconds):
            ``decode_wait_s`` (waiting for decoded frames), ``enhance_s`` (the pipeline
            and the rendering / device encoding), ``write_wait_s`` (waiting for writers),
            ``groups``; on CUDA also ``device_busy_s``: the device time from the start of
            each group's work to the end of its rendering (CUDA events), summed.
        call: keyword arguments of every ``pipe(...)`` call (ratio, steps, K, iso, seed, ...).

    Returns:
        One ``FileResult`` per file, in input order.
    """
    files, outputs = [Path(f) for f in files], [Path(o) for o in outputs]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    options = output_options(outputs[0] if outputs else "x.png", fmt)
    todo = plan_outputs(files, outputs, overwrite=overwrite, skip_existing=skip_existing)
    results = [FileResult(f, o, skipped=i not in todo) for i, (f, o) in enumerate(zip(files, outputs))]
    for r in results:
        if r.skipped and on_done is not None:
            on_done(r)
    run = _Run(pipe, [results[i] for i in todo], options, batch, overwrite, on_done, call,
               stats if stats is not None else {}, on_step)
    workers = min(workers, len(todo))  # with fork every process of a pool starts at once, busy or not
    if workers == 0 and pools is None:
        inline = InlineExecutor()
        run.go(inline, inline, ahead=batch)
    elif pools is not None:
        run.go(*pools, ahead=2 * max(workers, 1) + batch)
    else:
        with worker_pool(workers, start_method) as decoders, worker_pool(workers, start_method) as writers:
            run.go(decoders, writers, ahead=2 * workers + batch)
    return results


class _Run:
    """One ``enhance_files`` call: the steps of the module docstring over ``results``."""

    def __init__(self, pipe, results, options: OutputOptions, batch, overwrite, on_done, call, stats: dict,
                 on_step=None):
        self.pipe, self.results, self.options, self.batch = pipe, results, options, batch
        self.overwrite, self.on_done, self.call, self.on_step = overwrite, on_done, call, on_step
        self.stats = stats
        stats.update(decode_wait_s=0.0, enhance_s=0.0, write_wait_s=0.0, groups=0)
        self.spans: list = []  # (start, end) CUDA events of each group
        self.cuda = torch.device(pipe.device).type == "cuda"
        self.jpeg_on_device = (options.format == "jpeg" and options.jpeg_on_device is not False
                               and device_jpeg_available(pipe.device))
        if options.jpeg_on_device and not self.jpeg_on_device:
            raise ValueError("jpeg_on_device=True needs a CUDA pipeline and torchvision with encode_jpeg on CUDA")

    def fail(self, i: int, e: BaseException) -> None:
        self.results[i].error = describe_error(e, self.results[i].output)
        self.done(i)

    def done(self, i: int) -> None:
        if self.on_done is not None:
            self.on_done(self.results[i])

    def go(self, decoders: cf.Executor, writers: cf.Executor, ahead: int) -> None:
        n = len(self.results)
        decoding: deque = deque()
        writing: deque = deque()
        handed: list = []  # (i, payload still on its way to the host, event) of the last group
        group: list = []  # (i, RawFrame)
        submitted = 0

        def finish_write() -> None:
            i, future = writing.popleft()
            t0 = time.perf_counter()
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 - reported per file
                self.fail(i, e)
                return
            finally:
                self.stats["write_wait_s"] += time.perf_counter() - t0
            self.done(i)

        def hand_over() -> None:  # payloads of the previous group, once on the host
            for i, payload, event in handed:
                if event is not None:
                    event.synchronize()
                if payload[0] == "image":  # numpy crosses to a writer through its pipe; a torch
                    payload = ("image", payload[1].numpy(), payload[2])  # tensor would go through /dev/shm
                while len(writing) >= ahead:
                    finish_write()
                writing.append((i, writers.submit(_write, str(self.results[i].output), self.options, payload,
                                                  self.overwrite)))
            handed.clear()

        def flush() -> None:
            if group:
                t0 = time.perf_counter()
                start = _event(self.cuda)
                made = self.enhance(list(group))
                if start is not None:
                    self.spans.append((start, _event(True)))
                self.stats["enhance_s"] += time.perf_counter() - t0
                self.stats["groups"] += 1
                hand_over()
                handed.extend(made)
                group.clear()

        for i in range(n):
            while submitted < n and len(decoding) < ahead:
                decoding.append(decoders.submit(_decode, str(self.results[submitted].source)))
                submitted += 1
            t0 = time.perf_counter()
            try:
                frame = _frame(decoding.popleft().result(), pin=self.cuda)
            except Exception as e:  # noqa: BLE001 - a file that does not decode
                self.fail(i, e)
                continue
            finally:
                self.stats["decode_wait_s"] += time.perf_counter() - t0
            if group and (frame.shape != group[0][1].shape or frame.pattern != group[0][1].pattern):
                flush()
            group.append((i, frame))
            if len(group) >= self.batch:
                flush()
        flush()
        hand_over()
        while writing:
            finish_write()
        if self.spans:
            self.spans[-1][1].synchronize()
            self.stats["device_busy_s"] = sum(a.elapsed_time(b) for a, b in self.spans) / 1e3

    def enhance(self, group) -> list:
        """Enhance a group in one call; on failure, frame by frame (each error its own)."""
        call = self.call
        if self.on_step is not None:  # only then: a pipe-like callable need not take the keyword
            on_step, frames = self.on_step, len(group)
            call = {**call, "progress": lambda step, steps: on_step(step, steps, frames)}
        try:
            enhanced = self.pipe([f for _, f in group], **call)
            return self.payloads([i for i, _ in group], enhanced)
        except Exception as e:  # noqa: BLE001
            if len(group) == 1:
                self.fail(group[0][0], e)
                return []
        made = []
        for member in group:
            made += self.enhance([member])
        return made

    def payloads(self, indices, enhanced) -> list:
        """(i, what a writer needs, CUDA event or None) per frame, made on the device."""
        opts = self.options
        for i, e in zip(indices, enhanced):
            self.results[i].ratio = e.ratio
        if opts.format == "dng":
            return [(i, ("dng", _fields(e.frame, mosaic_dn(e.raw, e.frame).cpu().numpy()), _provenance(e)), None)
                    for i, e in zip(indices, enhanced)]
        images = [srgb_image(e.raw, e.frame, opts.sample_dtype) for e in enhanced]
        if self.jpeg_on_device:
            jpegs = encode_jpeg_on_device(images, opts.quality)
            return [(i, ("bytes", jpeg_with_exif(data, pillow_exif(exif_tags(e.frame, _provenance(e))))), None)
                    for i, e, data in zip(indices, enhanced, jpegs)]
        out = []
        for i, e, img in zip(indices, enhanced, images):
            host, event = _to_host(img)
            out.append((i, ("image", host, exif_tags(e.frame, _provenance(e))), event))
        return out


def describe_error(e: BaseException, output) -> str:
    """A one-line reason for a failed file; disk-full and permission errors say so plainly."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"{type(e).__name__}: could not write {output}: {e.strerror} (disk full, quota or file size "
                "limit); nothing was left under that name")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{type(e).__name__}: cannot write into {Path(output).parent} ({e.strerror})"
    return f"{type(e).__name__}: {e}"


def _event(cuda: bool):
    """A recorded CUDA event on the current stream (None off CUDA)."""
    if not cuda:
        return None
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _to_host(img: torch.Tensor):
    """``img`` on the host: a pinned non-blocking copy and its CUDA event on a GPU."""
    if img.device.type != "cuda":
        return img.cpu(), None
    host = torch.empty(img.shape, dtype=img.dtype, pin_memory=True)
    host.copy_(img, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _provenance(enhanced) -> Provenance:
    """What made this output: its own ratio and step count (with steps="auto" each frame's)."""
    return Provenance(enhanced.ratio, enhanced.steps)


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


def _frame(fields: dict, pin: bool = False) -> RawFrame:
    """The RawFrame of ``fields``; ``pin``: its pixels in pinned memory (asynchronous
    host -> device copies)."""
    cfa = fields["cfa"]
    cfa = cfa if isinstance(cfa, torch.Tensor) else torch.from_numpy(cfa)
    return RawFrame(**{**fields, "cfa": cfa.pin_memory() if pin else cfa})


def _write(path: str, options: OutputOptions, payload, overwrite: bool) -> str:
    kind = payload[0]
    if kind == "dng":
        frame = _frame(payload[1])
        write_frame_dng(path, frame, cfa=frame.cfa, provenance=payload[2], overwrite=overwrite)
    elif kind == "bytes":
        write_bytes(path, payload[1], overwrite=overwrite)
    else:
        img = payload[1]
        write_srgb(path, img.numpy() if isinstance(img, torch.Tensor) else np.asarray(img), options, payload[2],
                   overwrite=overwrite)
    return path
