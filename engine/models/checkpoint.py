"""Loading and saving backbone checkpoints, safely.

Two formats are read:

* **public** (official ExposureDiffusion / ELD code): ``{'netG': state_dict, 'epoch': int,
  'iterations': int, 'opt_g': optimizer state}`` (``opt_g`` optional). Also a bare state
  dict, a ``{'state_dict': ...}`` wrapper, and keys prefixed by ``module.`` (DataParallel)
  or ``_orig_mod.`` (torch.compile). The options are inferred from the tensor shapes:
  UNet if the keys are ``conv1_1 ... conv10_1`` (input width of ``conv1_1``, output width
  of ``conv10_1``), NAFNet if they are ``intro / encoders / downs / middle_blks / ups /
  decoders / ending`` (width and block counts from the keys). 8 input channels are
  ambiguous; they are read as ``with_photon=True`` unless ``expect`` says otherwise.
* **ours**: ``{'format': 'exposure-diffusion', 'version': 1, 'config': BackboneConfig.to_dict(),
  'state_dict': ..., 'meta': {...}}``: options explicit.

Loading never runs pickled code: ``torch.load(..., weights_only=True)`` only rebuilds
tensors and plain containers. Anything wrong (unreadable, truncated, unsafe, neither
format, missing / unexpected keys, shape mismatches, non-finite weights, options that
contradict ``expect``) raises ``CheckpointError`` naming the file and the problem.

Writes are atomic (``engine.io.atomic.atomic_path``): a temporary file in the target
directory, fsync'ed, then ``os.replace``; on any failure the temporary file is removed
and an existing target is left untouched. A full disk (or file-size limit) raises
``engine.io.atomic.DiskFullError`` ("disk full (or file size limit) writing X") instead of
torch's "[enforce fail at inline_container.cc]"; ``protect=`` names files the target may
not be (the checkpoint an export reads).
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Mapping

import torch
from torch import nn

from engine.io.atomic import atomic_path
from engine.models.backbones import MAX_NAFNET_LEVELS, BackboneConfig, _canonical_arch, _split_channels

__all__ = ["CheckpointError", "FORMAT_NAME", "FORMAT_VERSION", "export_public", "infer_config",
           "load_checkpoint", "read_weights_only", "save_checkpoint"]

FORMAT_NAME = "exposure-diffusion"
FORMAT_VERSION = 1

UNET_KEYS = tuple([f"conv{lvl}_{j}" for lvl in range(1, 10) for j in (1, 2)] +
                  [f"upv{lvl}" for lvl in range(6, 10)] + ["conv10_1"])
NAFNET_GROUPS = ("intro", "ending", "encoders", "downs", "middle_blks", "ups", "decoders")
_STRIP_PREFIXES = ("module.", "_orig_mod.")
_EXPECT_KEYS = {"arch", "in_channels", "out_channels", "with_photon", "concat_origin", "adaptive_head"}


class CheckpointError(ValueError):
    """A checkpoint could not be used. The message reads ``checkpoint <file>: <reason>``;
    ``source`` (the file, or a description of a file object) and ``reason`` are kept as
    attributes, as for the raw-input errors in ``engine.errors``."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = str(source)
        self.reason = reason
        super().__init__(f"checkpoint {self.source}: {reason}")

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.source, self.reason))


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    name = getattr(source, "name", None)
    return f"<{type(source).__name__}{' ' + str(name) if isinstance(name, str) else ''}>"


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------
def _read(source: str | os.PathLike | BinaryIO, where: str, map_location: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise CheckpointError(where, "no such file")
        if path.is_dir():
            raise CheckpointError(where, "is a directory, not a file")
        if path.stat().st_size == 0:
            raise CheckpointError(where, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Raw pickles of protocol > 2 trigger a warning before being refused anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        detail = detail.group(1).strip() if detail else text.splitlines()[0]
        unsafe = re.search(r"GLOBAL (\S+)", text)
        if unsafe:
            raise CheckpointError(where, f"refused, it references the Python object {unsafe.group(1)} "
                                         f"(loading it could execute arbitrary code); only weights-only "
                                         f"checkpoints (tensors and plain containers) are accepted") from None
        raise CheckpointError(where, f"not a readable weights-only PyTorch checkpoint "
                                     f"(corrupted, or a pickle the safe loader refuses): {detail}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError,
            ImportError, IndexError, MemoryError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else "unexpected end of data"
        raise CheckpointError(where, f"not a readable PyTorch checkpoint (truncated, "
                                     f"corrupted or not a checkpoint): {type(e).__name__}: {first}") from None


def read_weights_only(source: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """The object stored in a ``torch.save`` file, read with ``weights_only=True``; any
    problem (missing, empty, truncated, corrupt, unsafe) is a ``CheckpointError`` naming the
    file. Used for the trainer's ``last.pt`` too."""
    return _read(source, _describe(source), map_location)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and \
        all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _unwrap(obj: Any, where: str) -> tuple[str, dict[str, torch.Tensor], dict, dict]:
    """-> (format, state_dict, config dict or {}, meta)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(where, f"expected a dict, found a {type(obj).__name__}; "
                                     f"neither the public format {{'netG': state_dict, ...}} nor ours "
                                     f"{{'format': '{FORMAT_NAME}', ...}}")
    if obj.get("format") == FORMAT_NAME:
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(where, f"format version {version!r} is not supported "
                                         f"(this code reads version {FORMAT_VERSION})")
        for key in ("config", "state_dict"):
            if key not in obj:
                raise CheckpointError(where, f"'{FORMAT_NAME}' format but the '{key}' "
                                             f"entry is missing")
        if not _is_state_dict(obj["state_dict"]):
            raise CheckpointError(where, "'state_dict' is not a non-empty mapping of "
                                         "names to tensors")
        meta = obj.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise CheckpointError(where, f"'meta' must be a dict, got {type(meta).__name__}")
        return FORMAT_NAME, dict(obj["state_dict"]), obj["config"], dict(meta)
    if "netG" in obj:
        if not _is_state_dict(obj["netG"]):
            raise CheckpointError(where, "'netG' is not a non-empty mapping of names "
                                         "to tensors")
        meta = {k: obj[k] for k in ("epoch", "iterations") if k in obj}
        meta["has_optimizer_state"] = "opt_g" in obj
        return "public", dict(obj["netG"]), {}, meta
    if "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        return "state_dict", dict(obj["state_dict"]), {}, {}
    if _is_state_dict(obj):
        return "state_dict", dict(obj), {}, {}
    keys = sorted(map(str, obj.keys()))
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    raise CheckpointError(where, f"fits no known format (top-level keys: {shown or 'none'}); expected "
                                 f"the public {{'netG': state_dict, 'epoch', 'iterations'}}, ours "
                                 f"{{'format': '{FORMAT_NAME}', 'config', 'state_dict'}}, "
                                 f"or a bare state dict")


def _count_indices(keys: list[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _infer_nafnet_options(sd: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    keys = list(sd)
    n_enc = _count_indices(keys, r"encoders\.(\d+)\.")
    n_dec = _count_indices(keys, r"decoders\.(\d+)\.")
    n_downs = _count_indices(keys, r"downs\.(\d+)\.")
    n_ups = _count_indices(keys, r"ups\.(\d+)\.")
    levels = max([len(n_downs), len(n_ups)] + [i + 1 for i in n_enc + n_dec])
    if levels > MAX_NAFNET_LEVELS:  # before counting blocks level by level
        raise CheckpointError(where, f"NAFNet keys describe {levels} encoder / decoder levels, above the limit of "
                                     f"{MAX_NAFNET_LEVELS}")
    enc = tuple(len(_count_indices(keys, rf"encoders\.{i}\.(\d+)\.")) for i in range(levels))
    dec = tuple(len(_count_indices(keys, rf"decoders\.{i}\.(\d+)\.")) for i in range(levels))
    middle = len(_count_indices(keys, r"middle_blks\.(\d+)\."))
    if sd["intro.weight"].dim() != 4:
        raise CheckpointError(where, f"'intro.weight' has shape {tuple(sd['intro.weight'].shape)}, "
                                     f"expected a 4-d conv weight")
    return {"width": int(sd["intro.weight"].shape[0]), "enc_blocks": enc, "middle_blocks": middle,
            "dec_blocks": dec}


def _weight(sd: Mapping[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    t = sd.get(key)
    if t is None or t.dim() != 4:
        raise CheckpointError(where, f"'{key}' is missing or not a 4-d conv weight "
                                     f"(shape {None if t is None else tuple(t.shape)})")
    return t


def infer_config(state_dict: Mapping[str, torch.Tensor], *, with_photon: bool | None = None,
                 concat_origin: bool | None = None, where: str = "<state dict>") -> BackboneConfig:
    """Backbone options from a state dict's key names and tensor shapes.

    ``with_photon`` / ``concat_origin`` resolve the 8-channel ambiguity (default: photon).
    Raises ``CheckpointError`` for an unknown key layout or unsupported channel counts.
    """
    sd = _strip_prefixes(state_dict)
    roots = {k.split(".", 1)[0] for k in sd}
    if roots <= set(UNET_KEYS) and "conv1_1" in roots and "conv10_1" in roots:
        arch = "unet"
        cin = int(_weight(sd, "conv1_1.weight", where).shape[1])
        cout = int(_weight(sd, "conv10_1.weight", where).shape[0])
        options = {"widths": tuple(int(_weight(sd, f"conv{lvl}_1.weight", where).shape[0])
                                   for lvl in range(1, 6))}
    elif roots <= set(NAFNET_GROUPS) and "intro" in roots and "ending" in roots:
        arch = "nafnet"
        cin = int(_weight(sd, "intro.weight", where).shape[1])
        cout = int(_weight(sd, "ending.weight", where).shape[0])
        options = _infer_nafnet_options(sd, where)
    else:
        shown = ", ".join(sorted(roots)[:10]) + (", ..." if len(roots) > 10 else "")
        raise CheckpointError(where, f"unknown key layout (top-level modules: {shown}); expected the "
                                     f"SID UNet (conv1_1 ... conv10_1, upv6 ... upv9) or NAFNet (intro, "
                                     f"encoders, downs, middle_blks, ups, decoders, ending)")
    try:
        wp, co = _split_channels(cin, with_photon, concat_origin)
        return BackboneConfig(arch=arch, out_channels=cout, with_photon=wp, concat_origin=co, options=options)
    except ValueError as e:
        raise CheckpointError(where, f"{arch} with {cin} -> {cout} channels is not a "
                                     f"supported configuration: {e}") from None


def _check_expect(config: BackboneConfig, expect: Mapping[str, Any] | None, where: str) -> None:
    if not expect:
        return
    for key, wanted in expect.items():
        have = config.arch if key == "arch" else getattr(config, key)
        if key == "arch":
            wanted = _canonical_arch(wanted)
        if have != wanted:
            raise CheckpointError(where, f"has {key}={have!r}, but {key}={wanted!r} was expected")


def _check_dense(sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse tensors that claim more elements than the file stores: an expanded
    (zero-stride) or overlapping view is a few bytes on disk but would make the model
    built from its shape, and every pass over it, as large as its shape says."""
    for k, t in sd.items():
        if t.is_meta:
            raise CheckpointError(where, f"'{k}' is a meta tensor (a shape without data), not weights")
        stored = t.untyped_storage().nbytes()
        needed = t.numel() * t.element_size()
        if needed > stored or any(st == 0 for st, n in zip(t.stride(), t.shape) if n > 1):
            raise CheckpointError(where, f"'{k}' has shape {tuple(t.shape)} ({needed} bytes) but the file stores "
                                         f"{stored} bytes for it (an expanded or overlapping view, stride "
                                         f"{t.stride()}); weights must be stored densely")


def _check_fits(config: BackboneConfig, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Compare the stored tensors with the model ``config`` describes, built on the meta
    device (shapes only, no memory), before the real model is allocated."""
    with torch.device("meta"):
        own = config.build().state_dict()
    _report_mismatch(own, sd, where, {"unet": "UNet", "nafnet": "NAFNet"}[config.arch])


def _report_mismatch(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], where: str, name: str) -> None:
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = "; ..." if len(items) > 5 else ""
            problems.append(f"{label} ({len(items)}): " + "; ".join(items[:5]) + more)
    if problems:
        raise CheckpointError(where, f"weights do not fit the {name} "
                                     f"they describe: " + " | ".join(problems))


def _load_weights(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Strict load with a readable report of missing / unexpected / mis-shaped tensors."""
    _report_mismatch(model.state_dict(), sd, where, type(model).__name__)
    bad = [k for k, t in sd.items() if not t.is_floating_point()]
    if bad:
        raise CheckpointError(where, f"non-floating-point weights: {', '.join(bad[:5])}")
    nonfinite = [k for k, t in sd.items() if not bool(torch.isfinite(t).all())]
    if nonfinite:
        raise CheckpointError(where, f"non-finite values (NaN/inf) in {', '.join(nonfinite[:5])}")
    model.load_state_dict(sd, strict=True)


def load_checkpoint(source: str | os.PathLike | BinaryIO, *, map_location: Any = "cpu",
                    expect: Mapping[str, Any] | None = None) -> tuple[nn.Module, BackboneConfig, dict]:
    """Load a backbone from a public-format or our-format checkpoint.

    ``source``: a path or a binary file object. ``map_location`` as for ``torch.load``;
    when it names a device the model is moved there. ``expect``: options the caller
    requires, any of ``arch, in_channels, out_channels, with_photon, concat_origin,
    adaptive_head`` (e.g. ``{'in_channels': 12}``); ``with_photon`` / ``concat_origin``
    there also resolve an 8-channel public checkpoint.

    Returns ``(model, config, meta)``: the model in eval mode with float32 weights (the
    stored dtype is in ``meta['stored_dtype']``), its ``BackboneConfig``, and a dict with
    ``format`` ('public', 'exposure-diffusion' or 'state_dict') plus, for the public
    format, ``epoch``, ``iterations``, ``has_optimizer_state``; for ours the saved ``meta``.
    """
    where = _describe(source)
    if expect:
        unknown = set(expect) - _EXPECT_KEYS
        if unknown:
            raise ValueError(f"load_checkpoint(expect=...) got unknown option(s) {sorted(unknown)}; "
                             f"known: {sorted(_EXPECT_KEYS)}")
    obj = _read(source, where, map_location)
    fmt, sd, cfg_dict, meta = _unwrap(obj, where)
    sd = _strip_prefixes(sd)
    _check_dense(sd, where)
    if fmt == FORMAT_NAME:
        try:
            config = BackboneConfig.from_dict(dict(cfg_dict))
        except (ValueError, TypeError) as e:
            raise CheckpointError(where, f"invalid 'config': {e}") from None
    else:
        config = infer_config(sd, with_photon=(expect or {}).get("with_photon"),
                              concat_origin=(expect or {}).get("concat_origin"), where=where)
    _check_expect(config, expect, where)
    _check_fits(config, sd, where)  # shapes agree: the model is no larger than the stored tensors
    try:
        model = config.build()
    except (RuntimeError, MemoryError) as e:  # out of memory for a model the file really holds
        raise CheckpointError(where, f"the model could not be built: {type(e).__name__}: {e}") from None
    _load_weights(model, sd, where)
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in sd.values()})
    meta = {**meta, "format": fmt, "stored_dtype": dtypes[0] if len(dtypes) == 1 else dtypes}
    if isinstance(map_location, (str, torch.device)):
        model = model.to(map_location)
    return model.eval(), config, meta


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, path: str = "meta") -> None:
    """Only what ``weights_only`` loading accepts back, so we never write an unreadable file."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{path} has a key of type {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{path}[{k!r}]")
        return
    raise TypeError(f"{path} holds a {type(value).__name__}; checkpoints may only contain str, int, "
                    f"float, bool, None, tensors, and lists / tuples / dicts of them")


def _portable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # DataParallel / DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def _atomic_save(obj: Any, path: str | os.PathLike, overwrite: bool, protect=()) -> None:
    """``torch.save`` through ``engine.io.atomic.atomic_path``: a temporary file beside ``path``,
    fsync'ed, then renamed to it; removed on any failure (previous file untouched). An
    existing ``path`` raises ``FileExistsError`` unless ``overwrite``; ``path`` naming one of
    ``protect`` raises ``OutputPathError``; a full disk ``DiskFullError``."""
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(model: nn.Module, config: BackboneConfig, path: str | os.PathLike, *,
                    meta: Mapping[str, Any] | None = None, overwrite: bool = False, protect=()) -> None:
    """Write ``model`` in our format with its options explicit (atomic; an existing ``path``
    raises ``FileExistsError`` unless ``overwrite``; ``protect``: files ``path`` may not be,
    paths or ``engine.io.paths.FileIdentity``, ``OutputPathError`` whatever ``overwrite``).

    ``config`` must describe ``model`` (checked against the tensor shapes). ``meta``: any
    plain data (str/int/float/bool/None/tensors in lists/tuples/dicts), e.g. epoch, noise model.
    """
    if not isinstance(config, BackboneConfig):
        raise TypeError(f"config must be a BackboneConfig, got {type(config).__name__}")
    sd = _portable_state_dict(model)
    with torch.device("meta"):
        reference = config.build().state_dict()
    if set(reference) != set(sd) or any(reference[k].shape != sd[k].shape for k in sd):
        diff = sorted(set(reference) ^ set(sd))[:5] or \
            [f"{k} {tuple(sd[k].shape)} vs {tuple(reference[k].shape)}" for k in sd
             if reference[k].shape != sd[k].shape][:5]
        raise ValueError(f"config {config} does not describe this model (e.g. {diff})")
    meta = dict(meta or {})
    _check_plain(meta)
    _atomic_save({"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": config.to_dict(),
                  "state_dict": sd, "meta": meta}, path, overwrite, protect)


def export_public(model: nn.Module, path: str | os.PathLike, epoch: int = 0, iterations: int = 0, *,
                  overwrite: bool = False, protect=()) -> None:
    """Write ``model`` the way the public ExposureDiffusion / ELD code does:
    ``{'netG': state_dict, 'epoch': epoch, 'iterations': iterations}`` (no optimizer state).
    The options then live only in the tensor shapes (8 input channels read back as photon).
    An existing ``path`` raises ``FileExistsError`` unless ``overwrite``; ``protect`` as for
    ``save_checkpoint`` (the checkpoint the model was read from)."""
    _atomic_save({"netG": _portable_state_dict(model), "epoch": int(epoch),
                  "iterations": int(iterations)}, path, overwrite, protect)
