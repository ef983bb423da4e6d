"""The CPU backbone choice, run in a child process.

Choosing a CPU backbone builds every installed candidate (ONNX Runtime and OpenVINO sessions,
their int8 and bf16 variants, ``torch.compile``) to check and time them. In the caller's
process that costs memory it never gets back: measured on a 12 MP frame, the candidates'
libraries and buffers left the process at 0.63 GB instead of 0.36 GB after the choice, and
the frame then peaked at 1.86 GB instead of 1.43 GB. A runtime that crashes (a segfault in a
native library) would also take the caller's process down with it. So on a CPU the choice
runs in a child Python (``python -m engine.inference.choice_process``, not
``multiprocessing``: that would re-import the caller's script): it checks and times the
candidates exactly as ``backbone_choice.choose`` does in-process, writes the result to the
same disk cache and reports it; the caller then builds the chosen candidate alone. If the
child fails or ends without an answer, the caller goes on with ``"eager"`` and a
``BackboneFallbackWarning`` that says why (and remembers that, until the cache file is
deleted, so a crashing runtime is not started again in every process). A backbone the child
cannot have (a module class defined inside a function, which cannot be pickled, or in the
caller's own script, which another process cannot import) is chosen for in the caller's
process, as with ``Pipeline(..., isolate_choice=False)``.

Protocol: the parent writes a pickled payload (the backbone module, its config, the
candidate names, the timing crop and the loop's arguments) to a private temporary file,
starts the child with that path, and reads one JSON line from its stdout:
``{"choice": name, "timings": {...}, "warnings": [...]}``.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import warn_at_caller
from .backbone_choice import REFERENCE, BackboneFallbackWarning, ChoiceCache, choose_by_running

# The whole choice (building, checking and timing every candidate on the crop) takes 10-60 s
# on a 2-core CPU; a child that runs past this is stopped and the caller goes on with eager.
CHILD_TIMEOUT_S = 900


def choose_in_child(key: str, names: list[str], backbone: torch.nn.Module, config, crop: torch.Tensor,
                    loop_kwargs: dict, cache_path: Path | None,
                    timeout: float = CHILD_TIMEOUT_S) -> tuple[str, dict] | None:
    """The choice among CPU candidates ``names`` for ``key``, made in a child process.

    Args:
        key: the choice's cache key (``Pipeline._backbone_for``).
        names: candidate names (``engine.inference.cpu_backends.CPU_BACKENDS``), "eager" first.
        backbone: the float32 module every candidate is built from (pickled to the child).
        config: its ``BackboneConfig``.
        crop: the first network input of the timing crop, float32 ``[B, C, h, w]``.
        loop_kwargs: ``run_exposure_diffusion``'s keyword arguments besides the backbone and
            its input (ratio, K, rho as tensors, the loop options).
        cache_path: the choice cache file (``choice_cache_path()``), or None.

    Returns:
        ``(choice, timings in ms)`` as ``backbone_choice.choose`` returns them; the child's
        warnings (dropped candidates) are issued again here. None where the child cannot
        have the backbone (its class cannot be pickled, or cannot be imported in another
        process, e.g. one defined in the caller's script) or cannot be started (no Python
        executable, as in a frozen application): the caller then chooses in its own process.
    """
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the engine package
    job = {"key": key, "names": list(names), "backbone": backbone, "config": config, "crop": crop,
           "loop_kwargs": loop_kwargs, "cache_path": None if cache_path is None else str(cache_path),
           "threads": torch.get_num_threads()}
    try:  # pickle, not torch.save: that refuses torch.channels_last
        data = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - e.g. a module class defined inside a function: choose here
        return None
    with tempfile.TemporaryDirectory(prefix="exposure-diffusion-choice-") as folder:
        payload = Path(folder) / "payload.pickle"
        payload.write_bytes(data)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        try:
            done = subprocess.run([sys.executable, "-m", "engine.inference.choice_process", str(payload)],
                                  capture_output=True, text=True, timeout=timeout, env=env)
            reason = None if done.returncode == 0 else f"it ended with exit code {done.returncode}"
            stderr = done.stderr
        except subprocess.TimeoutExpired as e:
            reason, stderr, done = f"it ran past {timeout:g} s and was stopped", str(e.stderr or ""), None
        except OSError:  # no Python to start (an embedded interpreter, a frozen application): choose here
            return None
    answer = _answer(done.stdout) if done is not None and reason is None else None
    if answer is not None and "unloadable" in answer:
        return None  # the child cannot import the module's class (defined in the caller's script): choose here
    if answer is None or answer.get("choice") not in names:
        reason = reason or "it gave no answer"
        tail = stderr.strip().splitlines()[-1:] if stderr else []
        warn_at_caller(f"the CPU backbone choice (in a child process) failed: {reason}"
                       f"{' (' + tail[0][:300] + ')' if tail else ''}; going on with {REFERENCE!r} "
                       f"(remembered in {cache_path}; delete it to choose again)", BackboneFallbackWarning)
        ChoiceCache(cache_path).put(key, REFERENCE, {})
        return REFERENCE, {}
    for message in answer.get("warnings", []):
        warn_at_caller(message, BackboneFallbackWarning)
    return answer["choice"], answer.get("timings", {})


def _answer(stdout: str) -> dict | None:
    """The child's JSON answer: the last line of its output that parses as one."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _child(payload_path: str) -> dict:
    """Check and time the candidates as ``Pipeline._backbone_for`` does in-process
    (``backbone_choice.choose_by_running``)."""
    from .cpu_backends import build

    try:
        with open(payload_path, "rb") as f:
            job = pickle.load(f)  # our own file, written by the parent just now in a private folder
    except (ImportError, AttributeError) as e:  # a class the child cannot import (the caller's __main__)
        return {"unloadable": f"{type(e).__name__}: {e}"}
    torch.set_num_threads(job["threads"])
    backbone, config = job["backbone"], job["config"]
    built: dict[str, object] = {}

    def candidate(name):
        if name not in built:
            built[name] = backbone if name == REFERENCE else build(name, backbone, config)
        return built[name]

    cache_path = job["cache_path"]
    with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
        warnings.simplefilter("always", BackboneFallbackWarning)
        choice, timings = choose_by_running(job["key"], job["names"], candidate, job["crop"], job["loop_kwargs"],
                                            torch.device("cpu"),
                                            ChoiceCache(None if cache_path is None else Path(cache_path)))
    messages = [str(w.message) for w in caught if issubclass(w.category, BackboneFallbackWarning)]
    return {"choice": choice, "timings": timings, "warnings": messages}


if __name__ == "__main__":
    answer = _child(sys.argv[1])
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
