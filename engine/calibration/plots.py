"""Diagnostic PNGs of a noise calibration (``engine.calibration``), drawn with PIL.

Three figures in a folder: ``photon_transfer.png`` (per ISO: noise variance against
signal of the flat pairs, per plane, and the fitted line of slope K),
``tukey_lambda.png`` (per ISO: the Tukey-lambda probability plot of the bias residuals
with its fitted line; last panel: the probability-plot correlation against lambda) and
``noise_fits.png`` (K against ISO with the line giving Kmin/Kmax; sigma_g, sigma_TL and
sigma_r against K on log-log axes with the log-linear fits). Simple charts (axes, ticks,
points, lines, legend, PIL's default font): no plotting library needed.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kernels.profiles import ISO_MAX_REF, ISO_MIN_REF

from ..io.atomic import atomic_path

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PLANE_COLOURS = [(214, 39, 40), (44, 160, 44), (31, 119, 180), (23, 100, 40)]  # R, G1, B, G2
PLANE_NAMES = ("R", "G1", "B", "G2")
_BLACK, _GREY, _WHITE = (0, 0, 0), (215, 215, 215), (255, 255, 255)


def _font(size=12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list:
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    """Tick label: 4 significant digits, no exponent between 1e-3 and 1e6."""
    if abs(v) < 1e-12:
        return "0"
    v = float(f"{v:.4g}")
    return f"{v:.10g}" if 1e-3 <= abs(v) < 1e6 else f"{v:.4g}"


class Chart:
    """One panel: points and lines on linear or log axes (log axes drop values <= 0)."""

    def __init__(self, title, xlabel, ylabel, *, xlog=False, ylog=False, size=(560, 420)):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xlog, self.ylog, self.size = xlog, ylog, size
        self.series = []  # (kind, xs, ys, colour, label)

    def points(self, xs, ys, colour, label=None):
        self.series.append(("points", np.asarray(xs, float), np.asarray(ys, float), colour, label))
        return self

    def line(self, xs, ys, colour, label=None):
        self.series.append(("line", np.asarray(xs, float), np.asarray(ys, float), colour, label))
        return self

    def _t(self, v, log):
        v = np.asarray(v, float)
        if not log:
            return v
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)

    def draw(self) -> Image.Image:
        W, H = self.size
        left, right, top, bottom = 72, 16, 30, 46
        img = Image.new("RGB", self.size, _WHITE)
        d = ImageDraw.Draw(img)
        font, small = _font(13), _font(11)
        xs = np.concatenate([self._t(s[1], self.xlog) for s in self.series] or [np.zeros(1)])
        ys = np.concatenate([self._t(s[2], self.ylog) for s in self.series] or [np.zeros(1)])
        ok = np.isfinite(xs) & np.isfinite(ys)
        xs, ys = (xs[ok], ys[ok]) if ok.any() else (np.zeros(1), np.zeros(1))
        (x0, x1), (y0, y1) = self._limits(xs), self._limits(ys)
        pw, ph = W - left - right, H - top - bottom
        px = lambda v: left + (v - x0) / (x1 - x0) * pw  # noqa: E731
        py = lambda v: top + (y1 - v) / (y1 - y0) * ph  # noqa: E731
        for v, log, horizontal in [(t, self.xlog, False) for t in self._ticks(x0, x1, self.xlog)] + \
                                  [(t, self.ylog, True) for t in self._ticks(y0, y1, self.ylog)]:
            label = _fmt(10 ** v if log else v)
            if horizontal:
                y = py(v)
                d.line([(left, y), (W - right, y)], fill=_GREY)
                tw = d.textlength(label, font=small)
                d.text((left - 6 - tw, y - 6), label, fill=_BLACK, font=small)
            else:
                x = px(v)
                d.line([(x, top), (x, H - bottom)], fill=_GREY)
                tw = d.textlength(label, font=small)
                d.text((x - tw / 2, H - bottom + 4), label, fill=_BLACK, font=small)
        d.rectangle([left, top, W - right, H - bottom], outline=_BLACK)
        for kind, sx, sy, colour, _ in self.series:
            tx, ty = self._t(sx, self.xlog), self._t(sy, self.ylog)
            good = np.isfinite(tx) & np.isfinite(ty)
            pts = [(px(a), py(b)) for a, b in zip(tx[good], ty[good])]
            if kind == "line" and len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            elif kind == "points":
                for x, y in pts:
                    d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
        tw = d.textlength(self.title, font=font)
        d.text(((W - tw) / 2, 8), self.title, fill=_BLACK, font=font)
        tw = d.textlength(self.xlabel, font=font)
        d.text((left + (pw - tw) / 2, H - 22), self.xlabel, fill=_BLACK, font=font)
        ylab = Image.new("RGB", (int(d.textlength(self.ylabel, font=font)) + 4, 18), _WHITE)
        ImageDraw.Draw(ylab).text((2, 1), self.ylabel, fill=_BLACK, font=font)
        ylab = ylab.rotate(90, expand=True)
        img.paste(ylab, (4, int(top + (ph - ylab.height) / 2)))
        legend = [(c, lab) for _, _, _, c, lab in self.series if lab]
        for k, (colour, lab) in enumerate(legend):
            y = top + 8 + 16 * k
            d.rectangle([left + 8, y + 3, left + 18, y + 11], fill=colour)
            d.text((left + 24, y), lab, fill=_BLACK, font=small)
        return img

    @staticmethod
    def _limits(v):
        lo, hi = float(np.min(v)), float(np.max(v))
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(lo) * 0.1, 0.5)
        return lo - pad, hi + pad

    @staticmethod
    def _ticks(lo, hi, log):
        if not log:
            return _nice_ticks(lo, hi)
        decades = [float(k) for k in range(math.ceil(lo), math.floor(hi) + 1)]
        if len(decades) >= 2:
            return decades
        ticks = [math.log10(m) + k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if lo <= t <= hi]
        return ticks if len(ticks) >= 2 else _nice_ticks(lo, hi, 4)


def figure(charts, cols=2) -> Image.Image:
    """Charts in a grid, row by row."""
    imgs = [c.draw() for c in charts]
    w, h = imgs[0].size
    rows = math.ceil(len(imgs) / cols)
    out = Image.new("RGB", (w * min(cols, len(imgs)), h * rows), _WHITE)
    for k, im in enumerate(imgs):
        out.paste(im, ((k % cols) * w, (k // cols) * h))
    return out


# The files ``write_plots`` writes into its folder.
PLOT_FILES = ("photon_transfer.png", "tukey_lambda.png", "noise_fits.png")


def save_png(img: Image.Image, path, overwrite: bool = False, protect=()) -> Path:
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def photon_transfer_chart(m) -> Chart:
    p = m.ptc
    c = Chart(f"ISO {m.iso:g}: K = {m.K:.4g} DN/e-, read var {m.read_variance:.3g} DN^2",
              "signal above dark (DN)", "noise variance (DN^2)")
    for k in range(4):
        sel = p["plane"] == k
        c.points(p["signal"][sel], p["variance"][sel], PLANE_COLOURS[k], PLANE_NAMES[k])
    xs = np.linspace(0.0, float(p["signal"].max()), 50)
    return c.line(xs, p["c"] + p["K"] * xs, _BLACK, "fit")


def probability_chart(m) -> Chart:
    pp = m.probplot
    c = Chart(f"ISO {m.iso:g}: lambda {m.lam:.3f}, sigma_TL {m.sigma_TL:.3g} DN, r {m.ppcc:.5f}",
              f"Tukey-lambda({m.lam:.3f}) quantiles", "ordered bias residuals (DN)")
    c.points(pp["osm"], pp["osr"], PALETTE[0], "data")
    ends = np.array([pp["osm"].min(), pp["osm"].max()])
    return c.line(ends, pp["intercept"] + pp["slope"] * ends, PALETTE[3], "fit")


def ppcc_chart(isos) -> Chart:
    c = Chart("probability-plot correlation", "Tukey-lambda shape", "correlation r")
    for k, m in enumerate(isos):
        lams, r = m.ppcc_curve
        colour = PALETTE[k % len(PALETTE)]
        c.line(lams, r, colour, f"ISO {m.iso:g}: lambda {m.lam:.3f}")
        c.points([m.lam], [np.interp(m.lam, lams, r)], colour)
    return c


def gain_chart(result) -> Chart:
    a, b = result.K_line
    p = result.profile
    c = Chart(f"gain: Kmin {p.Kmin:.4g}, Kmax {p.Kmax:.4g} DN/e-", "ISO", "K (DN/e-)")
    c.points([m.iso for m in result.isos], [m.K for m in result.isos], PALETTE[0], "measured")
    c.line([ISO_MIN_REF, ISO_MAX_REF], [a + b * ISO_MIN_REF, a + b * ISO_MAX_REF], _BLACK, "K = a + b ISO")
    return c.points([ISO_MIN_REF, ISO_MAX_REF], [p.Kmin, p.Kmax], PALETTE[3], "Kmin, Kmax")


def scale_chart(result) -> Chart:
    c = Chart("log-linear fits of the noise scales", "K (DN/e-)", "sigma (DN)", xlog=True, ylog=True)
    K = np.array([m.K for m in result.isos])
    ks = np.exp(np.linspace(np.log(K.min()), np.log(K.max()), 20))
    for k, (key, attr) in enumerate((("g_scale", "sigma_g"), ("G_scale", "sigma_TL"), ("R_scale", "sigma_r"))):
        fit = getattr(result.profile, key)
        colour = PALETTE[k]
        c.points(K, [getattr(m, attr) for m in result.isos], colour, f"{attr} (slope {fit.slope:.3f})")
        c.line(ks, np.exp(fit.slope * np.log(ks) + fit.bias), colour)
    return c


def write_plots(result, folder, overwrite: bool = False, protect=()) -> dict:
    """Write the three PNGs (``PLOT_FILES``) into ``folder`` (created); {name: path}.
    Existing files raise ``FileExistsError`` unless ``overwrite``; none may be one of the
    ``protect`` files (the input frames: ``OutputPathError``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    isos = result.isos
    figures = {"photon_transfer": lambda: figure([photon_transfer_chart(m) for m in isos]),
               "tukey_lambda": lambda: figure([probability_chart(m) for m in isos] + [ppcc_chart(isos)]),
               "noise_fits": lambda: figure([gain_chart(result), scale_chart(result)])}
    return {name: save_png(draw(), folder / f"{name}.png", overwrite, protect) for name, draw in figures.items()}
