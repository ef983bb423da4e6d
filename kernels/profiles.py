"""Camera noise profiles (SPEC §2-3) and per-sample ELD noise parameters.

The five calibrated profiles of ELD (Wei et al., CVPR 2020; ``Vandermode/ELD``,
``camera_params/release``) ship as package data in ``kernels/data/camera_params/
cameras.json`` (see SOURCE.md there). A profile gives the gain range (K at ISO 100 and
6400), the Tukey-lambda shapes seen in calibration, and log-linear fits
``log(scale) = slope * log(K) + bias + sigma * N(0, 1)`` for the Gaussian read noise
(``g_scale``), the Tukey-lambda scale (``G_scale``) and the row noise (``R_scale``).
User-calibrated profiles are JSON files in the same format (``CameraProfile.save``).

This module reads JSON only; the engine maps cameras/files to profiles.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
import tempfile
from functools import lru_cache
from importlib import resources
from typing import Sequence

import torch

from ._common import to_device
from .numbers import integer
from .noise_model import NoiseParams, parse_noise_model

ISO_MIN_REF = 100.0  # ISO of Kmin
ISO_MAX_REF = 6400.0  # ISO of Kmax
DEFAULT_K_RANGE = (0.1, 30.0)  # reference synthesis: log K ~ U(log 0.1, log 30)
DEFAULT_RATIO_RANGE = (100.0, 300.0)
CONTINUOUS_RATIO_RANGE = (20.0, 300.0)
_SCALE_KEYS = ("g_scale", "G_scale", "R_scale")
MAX_PROFILE_BYTES = 16 * 2**20  # the shipped cameras.json holds five cameras in ~30 KB
# A profile file nests 4 deep ({name: {"Profile-1": {"g_scale": {...}}}}); deeper JSON is not a
# profile, and 100,000 levels ended in a RecursionError traceback (issue 22, F). Checked on the
# text before parsing, so the parser's recursion never comes near its limit.
MAX_PROFILE_DEPTH = 16
# Digits of an integer in a profile: its values are floats (a K, a slope); a 5000-digit integer
# made Python's int() refuse with a message that did not name the file.
MAX_INTEGER_DIGITS = 100


@dataclasses.dataclass(frozen=True)
class ScaleFit:
    """``log(scale) = slope * log(K) + bias + sigma * N(0, 1)`` (natural logs, scale in DN)."""

    slope: float
    bias: float
    sigma: float

    def to_dict(self) -> dict:
        return {"slope": self.slope, "bias": self.bias, "sigma": self.sigma}


@dataclasses.dataclass(frozen=True)
class CameraProfile:
    """One camera's calibrated noise profile.

    Kmin, Kmax: gain K (DN per photo-electron) at ISO 100 and ISO 6400. G_shape:
    Tukey-lambda shapes (drawn uniformly). g_scale, G_scale, R_scale: log-linear fits of
    sigma_g, sigma_TL and sigma_r against K. color_bias: optional per-ISO black-level
    offsets (kept for round trips; unused by the synthesis).
    """

    name: str
    Kmin: float
    Kmax: float
    G_shape: tuple
    g_scale: ScaleFit
    G_scale: ScaleFit
    R_scale: ScaleFit
    color_bias: tuple | None = None

    def __post_init__(self):
        where = f"camera profile {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a camera profile needs a non-empty name")
        for key in ("Kmin", "Kmax"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{where}: {key} must be a finite number > 0, got {v!r}")
        if self.Kmax < self.Kmin:
            raise ValueError(f"{where}: Kmax ({self.Kmax}) must be >= Kmin ({self.Kmin})")
        if len(self.G_shape) == 0 or not all(math.isfinite(v) for v in self.G_shape):
            raise ValueError(f"{where}: G_shape must be a non-empty list of finite Tukey-lambda shapes")
        for key in _SCALE_KEYS:
            fit = getattr(self, key)
            if not all(math.isfinite(v) for v in (fit.slope, fit.bias, fit.sigma)) or fit.sigma < 0:
                raise ValueError(f"{where}: {key} needs finite slope/bias and sigma >= 0, got {fit}")

    def K_from_iso(self, iso):
        """Gain K at ``iso`` (a number or a tensor): ``Kmin + (ISO - 100) / 6300 * (Kmax - Kmin)``.

        Linear in ISO (SPEC §2), extrapolated outside [100, 6400]. Refuses ISO <= 0 and an
        ISO so low that the line gives K <= 0.
        """
        if isinstance(iso, torch.Tensor):
            if not (iso > 0).all():
                raise ValueError(f"ISO must be > 0, got {iso.tolist()}")
        elif isinstance(iso, bool) or not isinstance(iso, numbers.Real) or not math.isfinite(iso) or iso <= 0:
            raise ValueError(f"ISO must be a finite number > 0, got {iso!r}")
        K = self.Kmin + (iso - ISO_MIN_REF) / (ISO_MAX_REF - ISO_MIN_REF) * (self.Kmax - self.Kmin)
        if not bool((torch.as_tensor(K) > 0).all()):
            raise ValueError(f"ISO {iso} is below the range of {self.name}'s linear ISO->K map (K <= 0)")
        return K

    @classmethod
    def from_dict(cls, data: dict, name: str | None = None) -> "CameraProfile":
        """Build from the JSON object of one camera (keys Kmin, Kmax, G_shape, Profile-1).

        ``name`` defaults to ``data["name"]`` when the object carries one.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a camera profile must be a JSON object, got {type(data).__name__}")
        name = name if name is not None else data.get("name")
        if not name:
            raise ValueError("camera profile has no name: pass name= or add a 'name' key")
        try:
            fits = data["Profile-1"]
            scales = {k: ScaleFit(float(fits[k]["slope"]), float(fits[k]["bias"]), float(fits[k]["sigma"])) for k in _SCALE_KEYS}
            kmin, kmax, shapes = float(data["Kmin"]), float(data["Kmax"]), tuple(float(v) for v in data["G_shape"])
        except KeyError as e:
            raise ValueError(
                f"camera profile {name!r} lacks key {e.args[0]!r}; expected Kmin, Kmax, G_shape and "
                "Profile-1.{g_scale,G_scale,R_scale}.{slope,bias,sigma}"
            ) from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"camera profile {name!r} has a malformed value: {e}") from None
        color_bias = data.get("color_bias")
        if color_bias is not None:
            try:
                color_bias = tuple(tuple(float(v) for v in row) for row in color_bias)
            except (TypeError, ValueError):
                raise ValueError(f"camera profile {name!r} has a malformed color_bias (expected rows of numbers), "
                                 f"got {color_bias!r:.80}") from None
        return cls(name, kmin, kmax, shapes, scales["g_scale"], scales["G_scale"], scales["R_scale"], color_bias)

    def to_dict(self) -> dict:
        """The JSON object of this camera, in the shipped format (without the name)."""
        d = {
            "Kmin": self.Kmin,
            "Kmax": self.Kmax,
            "G_shape": list(self.G_shape),
            "Profile-1": {k: getattr(self, k).to_dict() for k in _SCALE_KEYS},
        }
        if self.color_bias is not None:
            d["color_bias"] = [list(row) for row in self.color_bias]
        return d

    def save(self, path) -> None:
        """Write ``{name: profile}`` as JSON (loadable with ``load_profile(path)``), atomically:
        a temporary file beside ``path``, fsync'ed, then renamed over it, so an interrupted
        save leaves the previous profile intact (``engine.io.atomic`` does the same for the
        engine's files; ``kernels`` may not import ``engine``)."""
        text = json.dumps({self.name: self.to_dict()}, indent=1)
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(os.path.basename(os.fspath(path)), folder), suffix=".tmp",
                                   dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600: a profile is meant to be shared
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _temporary_prefix(name: str, folder: str) -> str:
    """``.<name>.`` with ``name`` cut (at a character boundary) so that mkstemp's name (prefix,
    8 random characters, ".tmp") stays within the file system's limit on one name (255
    bytes): a legal profile name of 240 bytes or more must still save. (``engine.io.atomic``
    does the same for the engine's files; ``kernels`` may not import ``engine``.)"""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    room, kept, size = max(1, limit - 2 - 8 - 4), [], 0
    for ch in name:
        n = len(os.fsencode(ch))
        if size + n > room:
            break
        kept.append(ch)
        size += n
    return "." + "".join(kept) + "."


# --------------------------------------------------------------------------- loading
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _json_depth(text: str) -> int:
    """How deep the arrays / objects of JSON ``text`` nest (brackets inside strings ignored),
    without parsing it: one regular-expression pass and a cumulative sum."""
    import numpy as np

    bare = _JSON_STRING.sub('""', text).encode("utf-8", "surrogatepass")
    codes = np.frombuffer(bare, dtype=np.uint8)
    step = np.isin(codes, (0x5B, 0x7B)).astype(np.int64) - np.isin(codes, (0x5D, 0x7D))
    return int(np.cumsum(step).max(initial=0))


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ValueError(f"an integer of {len(digits.lstrip('-'))} digits (at most {MAX_INTEGER_DIGITS}: a profile "
                         f"holds numbers such as 0.12 or 1.5e-3)")
    return int(digits)


def _profiles_from_json(data, source: str, default_name: str | None = None) -> dict:
    if isinstance(data, dict) and "Kmin" in data:  # one profile object
        return {p.name: p for p in [CameraProfile.from_dict(data, name=data.get("name") or default_name)]}
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return {n: CameraProfile.from_dict(v, name=n) for n, v in data.items()}
    raise ValueError(f"{source} holds neither a camera profile object nor a {{name: profile}} mapping")


@lru_cache(maxsize=1)
def _shipped() -> dict:
    text = resources.files("kernels").joinpath("data", "camera_params", "cameras.json").read_text()
    return _profiles_from_json(json.loads(text), "the shipped cameras.json")


def available_cameras() -> list:
    """Names of the shipped camera profiles, sorted."""
    return sorted(_shipped())


def load_profiles(path) -> dict:
    """All profiles of a JSON file (one object or a {name: profile} mapping), by name.

    Raises ValueError naming the file for anything that is not such a file: unreadable,
    not UTF-8 text, not JSON (e.g. ``/etc/passwd``), or JSON of another shape or with
    missing / malformed values.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"camera profile file {name}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ValueError(f"camera profile file {name}: not a text file (expected JSON in the shipped "
                         f"cameras.json format)") from None
    if len(text) > MAX_PROFILE_BYTES:
        raise ValueError(f"camera profile file {name}: larger than {MAX_PROFILE_BYTES // 2**20} MiB, not a profile")
    depth = _json_depth(text)
    if depth > MAX_PROFILE_DEPTH:
        raise ValueError(f"camera profile file {name}: JSON nested {depth} levels deep (at most {MAX_PROFILE_DEPTH}; "
                         f"a profile in the shipped cameras.json format nests 4)")
    try:
        data = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as e:
        raise ValueError(f"camera profile file {name}: not valid JSON ({e.msg} at line {e.lineno}, column "
                         f"{e.colno}); expected a profile in the shipped cameras.json format") from None
    except (ValueError, RecursionError) as e:  # _bounded_int; RecursionError cannot pass the depth check
        raise ValueError(f"camera profile file {name}: not a profile: {e}") from None
    stem = os.path.splitext(os.path.basename(name))[0]
    try:
        return _profiles_from_json(data, name, default_name=stem)
    except (ValueError, TypeError) as e:
        message = str(e)
        raise ValueError(message if name in message else f"camera profile file {name}: {message}") from None


def load_profile(name_or_path) -> CameraProfile:
    """A shipped camera by name (case-insensitive), or the one profile of a JSON file.

    A file may hold one profile object (named by its "name" key, else the file's stem)
    or a {name: profile} mapping with exactly one entry (use ``load_profiles`` for more).
    A ``CameraProfile`` is returned as is. Unknown names raise ValueError listing the
    shipped cameras.
    """
    if isinstance(name_or_path, CameraProfile):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"expected a camera name, a path or a CameraProfile, got {type(name_or_path).__name__}")
    key = os.fspath(name_or_path)
    by_lower = {n.lower(): p for n, p in _shipped().items()}
    if key.lower() in by_lower:
        return by_lower[key.lower()]
    if os.path.isfile(key):
        found = load_profiles(key)
        if len(found) != 1:
            raise ValueError(f"{key} holds {len(found)} profiles ({', '.join(found)}); use load_profiles() and pick one")
        return next(iter(found.values()))
    raise ValueError(f"unknown camera {key!r} (no such shipped camera or JSON file); available: {', '.join(available_cameras())}")


# --------------------------------------------------------------------------- sampling
def _check_range(name: str, value) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"{name} must satisfy 0 < low <= high (finite), got {value!r}")
    return lo, hi


def _resolve_cameras(cameras) -> list:
    if cameras is None:
        shipped = _shipped()
        return [shipped[n] for n in available_cameras()]
    if isinstance(cameras, (str, os.PathLike, CameraProfile)):
        cameras = [cameras]
    if not isinstance(cameras, Sequence) or len(cameras) == 0:
        raise ValueError(f"cameras must be None, a camera name/path/CameraProfile, or a non-empty list of them; got {cameras!r}")
    return [load_profile(c) for c in cameras]


def sample_noise_params(
    batch: int,
    cameras=None,
    *,
    model: str = "P+G+r+u",
    K_range=DEFAULT_K_RANGE,
    ratio_range=None,
    continuous: bool = False,
    generator: torch.Generator | None = None,
    device="cpu",
) -> NoiseParams:
    """Draw ELD noise parameters for each of ``batch`` samples (SPEC §3), vectorised.

    Per sample: a camera uniformly among ``cameras`` (None: all shipped; names, paths or
    CameraProfiles); ``log K ~ U(log lo, log hi)`` with ``K_range=(lo, hi)`` (default
    (0.1, 30) as in the reference code) or, with ``K_range="camera"``, that camera's
    (Kmin, Kmax); ``log sigma = slope log K + bias + sigma N(0, 1)`` for sigma_g
    (g_scale), sigma_TL (G_scale) and sigma_r (R_scale); ``lam`` uniform over the
    camera's G_shape list; ``ratio ~ U(100, 300)``, ``U(20, 300)`` if ``continuous``, or
    ``U(*ratio_range)`` when given. ``model`` is validated and recorded (all scales are
    drawn for any model). Draws come from ``generator`` (default: torch's global one,
    so ``torch.manual_seed`` repeats them) on its device, in a fixed order, then move to
    ``device``.

    Returns:
        NoiseParams with float32 [B] tensors and int64 camera_index on ``device``.
    """
    batch = integer("batch", batch, low=1)
    model = parse_noise_model(model).name
    profiles = _resolve_cameras(cameras)
    camera_k = isinstance(K_range, str)
    if camera_k and K_range != "camera":
        raise ValueError(f"K_range must be a pair (low, high) or 'camera', got {K_range!r}")
    if not camera_k:
        k_lo, k_hi = _check_range("K_range", K_range)
    if ratio_range is None:
        ratio_range = CONTINUOUS_RATIO_RANGE if continuous else DEFAULT_RATIO_RANGE
    r_lo, r_hi = _check_range("ratio_range", ratio_range)

    draw_dev = generator.device if generator is not None else torch.device("cpu")
    f64 = dict(dtype=torch.float64, device=draw_dev)
    # Per-camera tables: [Kmin, Kmax, g(slope, bias, sigma), G(...), R(...)], padded shape lists.
    table = torch.tensor(
        [[p.Kmin, p.Kmax] + [v for k in _SCALE_KEYS for v in (getattr(p, k).slope, getattr(p, k).bias, getattr(p, k).sigma)] for p in profiles],
        **f64,
    )
    n_shapes = torch.tensor([len(p.G_shape) for p in profiles], dtype=torch.int64, device=draw_dev)
    shapes = torch.zeros(len(profiles), int(n_shapes.max()), **f64)
    for i, p in enumerate(profiles):
        shapes[i, : len(p.G_shape)] = torch.tensor(p.G_shape, **f64)

    # Fixed draw order: camera, K, three normals, shape, ratio.
    cam = torch.randint(0, len(profiles), (batch,), generator=generator, device=draw_dev)
    u_k = torch.rand(batch, generator=generator, **f64)
    normals = torch.randn(3, batch, generator=generator, **f64)
    u_lam = torch.rand(batch, generator=generator, **f64)
    u_r = torch.rand(batch, generator=generator, **f64)

    t = table[cam]  # [B, 11]
    if camera_k:
        log_lo, log_hi = torch.log(t[:, 0]), torch.log(t[:, 1])
    else:
        log_lo = torch.full((batch,), math.log(k_lo), **f64)
        log_hi = torch.full((batch,), math.log(k_hi), **f64)
    log_K = log_lo + u_k * (log_hi - log_lo)
    sigmas = [torch.exp(t[:, 2 + 3 * j] * log_K + t[:, 3 + 3 * j] + t[:, 4 + 3 * j] * normals[j]) for j in range(3)]
    j = torch.minimum((u_lam * n_shapes[cam]).long(), n_shapes[cam] - 1)
    lam = shapes[cam, j]
    ratio = r_lo + u_r * (r_hi - r_lo)

    # one float32 block and one copy to the device (asynchronous from a CPU generator)
    block = torch.stack([torch.exp(log_K), ratio, sigmas[0], sigmas[1], lam, sigmas[2]]).to(torch.float32)
    K, ratio, sigma_g, sigma_TL, lam, sigma_r = to_device(block, device, non_blocking=True).unbind(0)
    return NoiseParams(
        K=K,
        ratio=ratio,
        sigma_g=sigma_g,
        sigma_TL=sigma_TL,
        lam=lam,
        sigma_r=sigma_r,
        camera_index=to_device(cam, device, non_blocking=True),
        cameras=tuple(p.name for p in profiles),
        model=model,
    )
