"""Dead-leaves training scenes (the PyPI ``deadleaves`` package) finished like photographs.

Dead-leaves images (occluding shapes whose sizes follow a power law) share the scale
invariance and the occlusion edges of natural images and are a known stand-in for them in
denoiser training. The leaves come from the ``deadleaves`` package (an optional extra:
``pip install -e ".[deadleaves]"``; it needs Python >= 3.12, see ``import_deadleaves`` for
3.11); what this module adds is the photographic finish and the raw conversion:

1. **Bank** (:func:`render_bank`, slow, once): ``n`` leaf images ``[size, size, 3]`` uint8
   (display-referred RGB), leaves of one shape per image (circles, ellipses, rectangles or
   polygons), areas ~ power law from 20 px^2, ``k = 1.5 .. 1.9`` (natural size statistics;
   steeper laws give thousands of leaves and take the package minutes per image), colours in HSV
   with low saturation mostly (``S ~ Beta(1, 2.5)``) and ``V ~ Beta(2, 2)``, and a per-leaf
   Gaussian texture of random strength. Image ``i`` is a pure function of ``(seed, i)``
   (the package draws from torch's global generator, seeded per image). Saved as one
   ``.npy`` (``size^2 x 3`` bytes per image).
2. **Finish** (:func:`finish_scene`, per training sample, cheap): a random crop and dihedral
   turn, sRGB -> linear, a defocus / optics blur (sigma 0 .. 1.5 px), a smooth illumination
   field (a gradient times coarse shading, ~17x across a frame; the scene is the whole frame
   or, ``illumination="crop"``, a sensor-resolution crop of one), 0-3 saturated light
   sources (small Gaussian glows 4-40x white), then ``training.unprocess`` (camera matrix,
   white balance, exposure with a mean raw value log-uniform in [0.02, 0.35], clipping,
   RGGB mosaic).

:class:`DeadLeavesDataset` serves such scenes as the uint16 packed items of
``training.patches``; item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)`` and
the bank.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .options import ILLUMINATIONS
from .patches import DEFAULT_BLACK, DEFAULT_WHITE, seeded_item, to_dn, torch_generator
from .synthetic import srgb_to_linear
from .unprocess import gaussian_blur, linear_to_packed_raw, random_exposure_mean, random_wb

__all__ = ["import_deadleaves", "render_leaves", "render_bank", "finish_scene", "DeadLeavesDataset"]

_TAG_DEADLEAVES = 205
_SHAPES = ("circular", "ellipsoid", "rectangular", "polygon")


@contextlib.contextmanager
def _torchvision_stand_in():
    """While ``deadleaves`` is imported: where torchvision cannot be imported, a stand-in
    with its one function ``deadleaves`` takes (``pil_to_tensor``), removed afterwards so
    that the rest of the process sees torchvision as it is (absent or broken: e.g. the
    JPEG encoder's check, ``engine.io.encode.device_jpeg_available``)."""
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or not loadable beside this torch
        pass
    else:
        yield
        return
    names = [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]
    saved = {n: sys.modules.pop(n) for n in names}
    fn = types.ModuleType("torchvision.transforms.functional")
    fn.pil_to_tensor = lambda pic: torch.as_tensor(np.array(pic)).permute(2, 0, 1).contiguous()
    tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    tv.transforms, tr.functional = tr, fn
    stand_in = {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}
    sys.modules.update(stand_in)
    try:
        yield
    finally:
        for name in stand_in:
            if sys.modules.get(name) is stand_in[name]:
                del sys.modules[name]
        sys.modules.update(saved)


def import_deadleaves():
    """The ``deadleaves`` module, or ImportError saying how to get it.

    ``deadleaves`` 1.1 declares Python >= 3.12 and imports torchvision only for
    ``pil_to_tensor`` (image-sourced colours, unused here). On Python 3.11, or where PyPI's
    torchvision does not load beside the installed torch, install it alone with
    ``pip install --no-deps --ignore-requires-python --target DIR deadleaves``, its other
    imports normally (``pip install torchquad pandas matplotlib``), and set
    ``EXPOSURE_DIFFUSION_DEADLEAVES_PATH=DIR`` (as ``.ci/run`` does): that folder is then
    appended to ``sys.path`` and, if torchvision cannot be imported, its one function is
    provided in plain torch (HWC uint8 -> CHW tensor, what torchvision's does) while the
    package is imported.
    """
    extra = os.environ.get("EXPOSURE_DIFFUSION_DEADLEAVES_PATH")
    if extra and extra not in sys.path:
        sys.path.append(extra)
    try:
        with _torchvision_stand_in():
            import deadleaves
    except ImportError as e:
        raise ImportError("the dead-leaves scenes need the 'deadleaves' package (pip install -e \".[deadleaves]\" "
                          "on Python >= 3.12; on 3.11 see training.deadleaves_scenes.import_deadleaves)") from e
    return deadleaves


def render_leaves(seed: int, size: int = 256) -> np.ndarray:
    """One dead-leaves image: uint8 ``[size, size, 3]`` display-referred RGB, a pure
    function of ``seed`` (see the module docstring for the distributions)."""
    dl = import_deadleaves()
    rng = np.random.default_rng(seed)
    torch.manual_seed(int(rng.integers(0, 2**62)))
    shape = _SHAPES[int(rng.integers(0, len(_SHAPES)))]
    area_hi = float(size * size) * float(rng.uniform(0.05, 0.4))
    params = {"area": {"powerlaw": {"low": 20.0, "high": area_hi, "k": float(rng.uniform(1.5, 1.9))}}}
    if shape in ("ellipsoid", "rectangular"):
        params["aspect_ratio"] = {"uniform": {"low": 0.25, "high": 1.0}}
        params["orientation"] = {"uniform": {"low": 0.0, "high": math.pi}}
    elif shape == "polygon":
        params["n_vertices"] = {"poisson": {"rate": 4.0}}
    geometry = dl.LeafGeometryGenerator(shape, params, (size, size), device="cpu")
    table, seg = geometry.generate_segmentation()
    appearance = dl.LeafAppearanceSampler(table, device="cpu")
    appearance.sample_color({"H": {"uniform": {"low": 0.0, "high": 1.0}},
                             "S": {"beta": {"concentration1": 1.0, "concentration0": 2.5}},
                             "V": {"beta": {"concentration1": 2.0, "concentration0": 2.0}}})
    appearance.sample_texture({"gray": {"normal": {"loc": 0.0, "scale": {"uniform": {"low": 0.0, "high": 0.12}}}}})
    image = dl.ImageRenderer(appearance.leaf_table, seg, device="cpu").render_image()
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def image_seed(seed: int, tag: int, i: int) -> int:
    """The render seed of image ``i`` of a bank or set drawn from stream ``tag``."""
    return int(np.random.SeedSequence([seed, tag, i]).generate_state(1)[0])


def write_bank(path, render, n: int, size: int, seed: int, tag: int, name: str, progress: bool = False) -> Path:
    """Render ``n`` images ``render(image_seed(seed, tag, i), size)`` (uint8 ``[size, size, 3]``)
    into one uint8 ``[n, size, size, 3]`` ``.npy`` at ``path`` (written atomically); returns it.
    ``name`` labels the progress lines (every 25 images, with ``progress``)."""
    from engine.io.atomic import atomic_path

    path = Path(path)
    bank = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        bank[i] = render(image_seed(seed, tag, i), size)
        if progress and (i + 1) % 25 == 0:
            print(f"{name} bank: {i + 1}/{n}", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, bank)
    return path


def render_bank(path, n: int, size: int = 256, seed: int = 0, progress: bool = False) -> Path:
    """Render ``n`` images (:func:`render_leaves` with seeds from ``(seed, i)``) into one
    uint8 ``[n, size, size, 3]`` ``.npy`` at ``path`` (written atomically); returns it."""
    return write_bank(path, render_leaves, n, size, seed, _TAG_DEADLEAVES, "dead-leaves", progress)


# Widest frame a training scene may be a crop of, in sensor pixels (a 24 MP full-frame sensor, 6000 x 4000).
MAX_FRAME_WIDTH = 6000


def check_illumination(illumination: str) -> str:
    """``illumination`` if it is one of ``ILLUMINATIONS``, else a ValueError saying which are."""
    if illumination not in ILLUMINATIONS:
        raise ValueError(f"illumination must be one of {ILLUMINATIONS}, got {illumination!r}")
    return illumination


def _light_field(g: torch.Generator, side: int, illumination: str = "frame") -> torch.Tensor:
    """Smooth illumination ``[1, side, side]``: a log-linear gradient times coarse shading.

    The field is drawn over a whole frame: a gradient of up to e^1 per half frame along each
    axis times a 4 x 4 grid of log-normal shading (sd 0.5) interpolated bicubically (its
    brightest point ~17x its darkest, the median over frames; log sd 0.62 within a frame).
    ``illumination`` says what the ``side`` pixels are:

    - ``"frame"``: the whole frame (a downscaled picture); the field spans them all.
    - ``"crop"``: a crop at sensor resolution of a frame ``W`` pixels wide, ``side / W``
      log-uniform in ``[side / MAX_FRAME_WIDTH, 1]`` (from the whole frame to a 24 MP one),
      at a uniform place in it: the scene sees the part of the field it covers. Illumination
      varies over the frame, not over 200 pixels of it; a small crop is lit almost evenly
      (for 192-pixel scenes: log sd 0.20 within a scene, brightest / darkest 1.8, medians).

    ``"frame"`` draws from ``g`` exactly as before the option existed (three draws); ``"crop"``
    draws three more after them.
    """
    check_illumination(illumination)
    gy, gx = (2.0 * torch.rand(2, generator=g) - 1.0).tolist()
    knots = torch.randn(1, 1, 4, 4, generator=g) * 0.5
    if illumination == "frame":
        return _field_window(gy, gx, knots, side)
    u = torch.rand(3, generator=g).tolist()
    frac = math.exp(math.log(min(1.0, side / MAX_FRAME_WIDTH)) * u[0])
    return _field_window(gy, gx, knots, side, frac, u[1] * (1.0 - frac), u[2] * (1.0 - frac))


def _field_window(gy: float, gx: float, knots: torch.Tensor, side: int, frac: float = 1.0,
                  top: float = 0.0, left: float = 0.0) -> torch.Tensor:
    """The frame's illumination over a square window of it, ``[1, side, side]`` float32.

    Frame units: the frame is ``[0, 1]`` on each axis. ``gy``, ``gx``: half the log
    gradient (the log field changes by ``2 gy`` from the frame's top to its bottom);
    ``knots``: ``[1, 1, 4, 4]`` log shading; the window is ``frac`` of the frame wide with its
    top-left corner at ``(top, left)``, sampled at ``side`` pixel centres.
    """
    c = (torch.arange(side, dtype=torch.float32) + 0.5) / side  # pixel centres in window units
    if frac == 1.0 and top == 0.0 and left == 0.0:
        # the whole frame, as every model before the crop option was trained (kept bit for bit)
        coarse = torch.nn.functional.interpolate(knots, size=(side, side), mode="bicubic", align_corners=False)[0]
        cy = cx = c - 0.5
    else:
        cy, cx = top + frac * c - 0.5, left + frac * c - 0.5  # frame units, centred
        # grid_sample's normalised coordinates are 2 x centred frame units; bicubic with border
        # padding samples the knots as interpolate(..., align_corners=False) does
        grid = torch.stack(torch.broadcast_tensors(2.0 * cx[None, :], 2.0 * cy[:, None]), dim=-1)[None]
        coarse = torch.nn.functional.grid_sample(knots, grid, mode="bicubic", padding_mode="border",
                                                 align_corners=False)[0]
    return torch.exp(gy * 2.0 * cy[:, None] + gx * 2.0 * cx[None, :] + coarse)


def _lights(g: torch.Generator, side: int) -> torch.Tensor:
    """0-3 saturated light sources: Gaussian glows ``[3, side, side]`` of 4-40x white."""
    out = torch.zeros(3, side, side)
    yy = torch.arange(side, dtype=torch.float32)[:, None]
    xx = torch.arange(side, dtype=torch.float32)[None, :]
    for _ in range(int(torch.randint(0, 4, (1,), generator=g))):
        cy, cx, r, level = torch.rand(4, generator=g).tolist()
        radius = 1.0 + 6.0 * r
        tint = torch.tensor([1.0, 0.85, 0.6]) if level < 0.5 else torch.tensor([0.8, 0.9, 1.0])
        glow = torch.exp(-((yy - cy * side) ** 2 + (xx - cx * side) ** 2) / (2 * radius * radius))
        out += tint.view(3, 1, 1) * glow * (4.0 * 10.0 ** level)
    return out


def finish_scene(rgb: torch.Tensor, g: torch.Generator, patch: int, illumination: str = "frame") -> torch.Tensor:
    """A bank image -> a packed raw scene, float32 ``[4, patch, patch]`` in [0, 1].

    ``rgb``: uint8 ``[S, S, 3]`` with ``S >= 2 * patch``; every random choice comes from
    ``g`` (see the module docstring); ``illumination``: ``"frame"`` or ``"crop"``, what the
    scene is of the frame its illumination field is drawn over (:func:`_light_field`).
    """
    side = 2 * patch
    S = rgb.shape[0]
    if S < side or rgb.shape[1] < side:
        raise ValueError(f"bank images of {tuple(rgb.shape[:2])} are smaller than 2 x patch = {side}")
    top, left = (int(torch.randint(0, n - side + 1, (1,), generator=g)) for n in rgb.shape[:2])
    # (a bank of side 2 x patch gives whole images; the turn, finish and exposure still vary)
    img = rgb[top : top + side, left : left + side].permute(2, 0, 1).to(torch.float32) / 255.0
    turn = int(torch.randint(0, 8, (1,), generator=g))
    img = torch.rot90(img, turn % 4, dims=(1, 2))
    if turn >= 4:
        img = img.flip(2)
    lin = srgb_to_linear(img)
    lin = gaussian_blur(lin, 1.5 * float(torch.rand(1, generator=g)) ** 2)
    lin = lin * _light_field(g, side, illumination) + _lights(g, side)
    return linear_to_packed_raw(lin, wb_gains=random_wb(g), mean=random_exposure_mean(g))


class DeadLeavesDataset(Dataset):
    """``size`` finished dead-leaves scenes per epoch from a bank (:func:`render_bank`).

    Args:
        bank: path of the bank ``.npy`` (memory-mapped) or a uint8 ``[n, S, S, 3]`` array.
        size: samples per epoch; patch: packed side (the bank's S must be >= 2 * patch).
        illumination: ``"frame"`` (default) or ``"crop"``, how the illumination field spans a
            scene (:func:`_light_field`).

    Item ``i`` (or ``(epoch, i)``): ``raw`` uint16 [4, patch, patch] DN (black 512, white
    16383), ``black``, ``white``, ``index``, ``source`` ("deadleaves").
    """

    def __init__(self, bank, size: int = 10000, *, patch: int = 128, seed: int = 0,
                 black: float = DEFAULT_BLACK, white: float = DEFAULT_WHITE, illumination: str = "frame"):
        self.illumination = check_illumination(illumination)  # refused here, not at the first sample
        self.bank = np.load(bank, mmap_mode="r") if isinstance(bank, (str, os.PathLike)) else np.asarray(bank)
        if self.bank.ndim != 4 or self.bank.shape[3] != 3 or self.bank.dtype != np.uint8 or len(self.bank) < 1:
            raise ValueError(f"bank must be uint8 [n >= 1, S, S, 3], got {self.bank.dtype} {self.bank.shape}")
        if min(self.bank.shape[1:3]) < 2 * patch:
            raise ValueError(f"bank images {self.bank.shape[1:3]} are smaller than 2 x patch = {2 * patch}")
        self.size, self.patch, self.seed, self.epoch = int(size), int(patch), int(seed), 0
        self.black, self.white = float(black), float(white)

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def sample(self, item: int, rng: np.random.Generator) -> dict:
        g = torch_generator(rng)
        k = int(rng.integers(0, len(self.bank)))
        x = finish_scene(torch.from_numpy(np.array(self.bank[k])), g, self.patch, self.illumination)
        return {"raw": to_dn(x, self.black, self.white), "black": torch.full((4,), self.black, dtype=torch.float32),
                "white": self.white, "index": item, "source": "deadleaves"}

    def __getitem__(self, index) -> dict:
        return seeded_item(self, index, _TAG_DEADLEAVES, len(self))
