"""Noise calibration of a new camera (issue 7): bias and flat frames -> camera profile.

What to capture, at each of several ISOs (at least 2; 4 or more spanning the camera's
range give better fits), all raw, same camera, full raw size:

- **bias frames**: lens capped, shortest exposure; at least 2 (8 or more is better);
- **flat frames**: a uniform, steady light (e.g. a diffuser over the lens facing an evenly
  lit wall) at at least 3 brightness levels from dark to about 70% of the range, with at
  least 2 frames per level (pairs at the same exposure and light), never saturated.

Method: ``engine.calibration.stats`` measures, per ISO, the dark level and colour bias, the
gain K (photon transfer of flat pairs), the row noise sigma_r and the read noise (sigma_g;
Tukey-lambda shape lam and scale sigma_TL by probability-plot correlation); its docstring
gives the details.

Across ISOs: ``K = a + b * ISO`` (least squares, relative weights) gives Kmin = K(100) and
Kmax = K(6400) (SPEC §2; K proportional to ISO when the line's K(100) is not positive);
``log sigma = slope * log K + bias`` (natural logs, measured K) for g_scale (sigma_g),
G_scale (sigma_TL) and R_scale (sigma_r), ``sigma`` = the residual standard deviation
(0 with 2 ISOs); ``G_shape`` = the lambdas, by ISO.

Needs scipy at run time (``scipy.stats``, used by ``engine.calibration.stats``; imported when
calibrating, so ``import engine.calibration`` works without it). Inputs (capture folders,
file lists, {ISO: frames}): ``engine.calibration.inputs``. Plots
(``engine.calibration.plots``): PIL only. The ``calibrate`` subcommand:
``engine.calibration.cli`` (``add_calibrate_command``, the ``calibrate`` command).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np

from kernels.numbers import integer
from kernels.profiles import ISO_MAX_REF, ISO_MIN_REF, CameraProfile, load_profile

from ..io.atomic import atomic_path, refuse_existing
from ..io.paths import check_not_protected, file_identity
from ..io.raw import RawFrame
from .inputs import RAW_EXTENSIONS, find_frames, iso_from_path, raw_files, work_items
from .stats import PPCC_SAMPLES, CalibrationError, IsoCalibration, _bias_stats, _calibrate_iso, _loglin

__all__ = ["calibrate", "find_frames", "raw_files", "CalibrationResult", "IsoCalibration",
           "CalibrationError", "RAW_EXTENSIONS"]

MIN_BIAS_FRAMES = 2
MIN_FLATS_PER_LEVEL = 2
MIN_FLAT_LEVELS = 3
MIN_ISOS = 2
SATURATION_MARGIN = 0.02  # a pixel within 2% of (white - black) of the white level is saturated
MAX_SATURATED = 1e-3  # a flat with more saturated pixels than this fraction is refused
MAX_BIAS_SIGNAL = 0.02  # a "bias" frame brighter than 2% of (white - black) above black is refused
LEVEL_TOLERANCE = 0.10  # flats within 10% brightness (and 1 DN) are one level


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationResult:
    """The calibrated profile, the per-ISO measurements and what was written."""

    profile: CameraProfile
    isos: tuple
    K_line: tuple  # (a, b): K = a + b * ISO
    make: str | None
    model: str | None
    frame_size: tuple  # (H, W)
    warnings: tuple = ()
    profile_path: Path | None = None
    report_path: Path | None = None
    plot_paths: dict = dataclasses.field(default_factory=dict)

    def report(self) -> str:
        """A short text report: per-ISO measurements, the fits, warnings."""
        p = self.profile
        n_bias = sum(i.n_bias for i in self.isos)
        n_pairs = sum(i.n_pairs for i in self.isos)
        lines = [f"Noise calibration of {p.name}",
                 f"camera: {self.make or '?'} {self.model or '?'}; frames {self.frame_size[1]}x{self.frame_size[0]}; "
                 f"{len(self.isos)} ISOs, {n_bias} bias frames, {n_pairs} flat pairs", "",
                 f"{'ISO':>7} {'K DN/e-':>9} {'readvar':>9} {'sigma_g':>8} {'sigma_TL':>8} {'lambda':>7} "
                 f"{'PPCC r':>8} {'sigma_r':>8} {'levels':>6} {'pairs':>5} {'bias':>4}"]
        for i in self.isos:
            lines.append(f"{i.iso:7g} {i.K:9.4f} {i.read_variance:9.3f} {i.sigma_g:8.4f} {i.sigma_TL:8.4f} "
                         f"{i.lam:7.3f} {i.ppcc:8.5f} {i.sigma_r:8.4f} {i.n_levels:6d} {i.n_pairs:5d} {i.n_bias:4d}")
        lines.append("(readvar: photon-transfer intercept, a cross-check of sigma_g^2 + 1/12; sigma_g excludes the "
                     "1/12 DN^2 of quantisation)")
        a, b = self.K_line
        lines += ["", f"gain: K = {a:.6g} + {b:.6g} * ISO  ->  Kmin (ISO 100) = {p.Kmin:.5g}, "
                      f"Kmax (ISO 6400) = {p.Kmax:.5g}",
                  "log(sigma) = slope * log(K) + bias + sigma * N(0, 1)  (natural logs, DN):"]
        for key, what in (("g_scale", "sigma_g"), ("G_scale", "sigma_TL"), ("R_scale", "sigma_r")):
            f = getattr(p, key)
            lines.append(f"  {key} ({what}): slope {f.slope:.5f}, bias {f.bias:.5f}, sigma {f.sigma:.5f}")
        lines.append("G_shape (lambda by ISO): " + ", ".join(f"{v:.4f}" for v in p.G_shape))
        if self.warnings:
            lines += ["", "warnings:"] + [f"  - {w}" for w in self.warnings]
        written = [("profile", self.profile_path), ("report", self.report_path)] + list(self.plot_paths.items())
        written = [(k, v) for k, v in written if v is not None]
        if written:
            lines += ["", "written:"] + [f"  {k}: {v}" for k, v in written]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- calibrate


def calibrate(bias, flats, *, out=None, camera_name=None, plots=None, report=None,
              ppcc_samples: int = PPCC_SAMPLES, seed: int = 0, progress=None,
              overwrite: bool = False) -> CalibrationResult:
    """Calibrate a camera's noise profile (SPEC §2-3) from bias and flat frames.

    Args:
        bias: bias frames: paths (any raw rawpy reads; a folder stands for the raw files
            under it) or ``RawFrame``s, as a sequence
            (ISO from each file's metadata, else from an ``ISO<n>`` folder or file name) or
            a mapping ``{iso: [frames]}``.
        flats: flat frames, the same way. Levels are found by exposure time and brightness
            (within 10%); a nested sequence ``[[f1, f2], [f3, f4], ...]`` gives them
            explicitly.
        out: where to write the profile JSON (``{name: profile}``, the shipped format,
            loadable by ``kernels.load_profile`` and usable as ``camera=`` / ``--camera``);
            None: not written.
        camera_name: the profile's name (default: make and model of the frames).
        plots: folder for the diagnostic PNGs (photon_transfer.png, tukey_lambda.png,
            noise_fits.png); None: none.
        report: text report path; None: ``<out stem>_report.txt`` beside ``out`` (if given);
            False: none.
        ppcc_samples: bias pixels per ISO used for the Tukey-lambda fit.
        seed: seed of the pixel subsampling (the calibration is deterministic).
        progress: callable(str) told about each step (e.g. print), or None.
        overwrite: replace an existing profile, report or plot; default: refuse them
            (``FileExistsError``) before any frame is read.

    Raises:
        CalibrationError (a ValueError) for frames that cannot calibrate, saying what to
        capture; the errors of ``engine.read_raw`` for unreadable files.
    """
    say = progress or (lambda msg: None)
    report = _report_path(out, report)
    try:
        items = work_items(bias, "bias") + work_items(flats, "flat")
    except CalibrationError:  # a missing input: refused below, after the outputs (no frame is read either way)
        items = None
    # An output that is an input frame first, whatever ``overwrite`` (told "already exists,
    # pass overwrite=True", a user would replace a bias raw); checked again at each write.
    inputs = [] if items is None else _input_files(items)
    for path in _outputs(out, plots, report):
        check_not_protected(path, inputs, "input frame")
    if not overwrite:  # before minutes of reading frames
        for path in _outputs(out, plots, report):
            refuse_existing(path, "pass overwrite=True (--overwrite) to replace it")
    ppcc_samples = integer("ppcc_samples", ppcc_samples, low=1000)
    rng = np.random.default_rng(seed)
    if items is None:
        items = work_items(bias, "bias") + work_items(flats, "flat")
    seen = {}
    for it in items:
        key = id(it.ref) if isinstance(it.ref, RawFrame) else os.path.realpath(it.ref)
        if key in seen:
            name = it.ref.source if isinstance(it.ref, RawFrame) else os.fspath(it.ref)
            raise CalibrationError(f"{name} is given twice (as {seen[key]} and as {it.kind} frame): every bias and "
                                   "flat frame must be a separate exposure")
        seen[key] = it.kind
    warnings: list = []
    first, camera = None, {}
    for n, it in enumerate(items):  # pass 1: metadata checks, bias statistics, flat brightness
        f = it.read()
        it.source = f.source
        if n % 10 == 0:
            say(f"reading {it.kind} frames ({n + 1}/{len(items)})")
        first = _check_same_camera(f, first, camera)
        iso = f.iso if f.iso is not None else (iso_from_path(f.source) if not isinstance(it.ref, RawFrame) else None)
        if it.iso is not None and f.iso is not None and abs(f.iso - it.iso) > 0.5:
            raise CalibrationError(f"{f.source}: the file says ISO {f.iso:g} but is listed under ISO {it.iso:g}")
        it.iso = it.iso if it.iso is not None else iso
        if it.iso is None:
            raise CalibrationError(f"{f.source}: missing ISO: the file carries none; give the frames as "
                                   "{iso: [files]} or put them in a folder named ISO<n> (e.g. bias/ISO800/)")
        it.iso = float(round(it.iso, 3))
        it.exposure = f.exposure_time
        black = np.asarray(f.black_level)
        if it.kind == "bias":
            it.stats = _bias_stats(f, ppcc_samples, rng)
            it.stats["black"] = black
            lit = float(np.mean(it.stats["offsets"] - black) / (f.white_level - black.mean()))
            if lit > MAX_BIAS_SIGNAL:
                raise CalibrationError(f"{f.source}: not a bias frame: its mean is {100 * lit:.2g}% of the range above "
                                       "the black level; capture bias frames with the lens capped at the shortest "
                                       "exposure (flats go with the flats)")
        else:
            cfa = f.cfa.detach().cpu().numpy()
            sat = float(np.mean(cfa >= f.white_level - SATURATION_MARGIN * (f.white_level - black.max())))
            if sat > MAX_SATURATED:
                raise CalibrationError(
                    f"{f.source}: saturated flat: {100 * sat:.3g}% of its pixels are at the white level "
                    f"({f.white_level:g} DN) at ISO {it.iso:g}; capture this level with a shorter exposure or "
                    "dimmer light (keep flats below about 70% of the range)")
            h, w = cfa.shape[0] // 2 * 2, cfa.shape[1] // 2 * 2
            it.mean = float(cfa[:h, :w].mean() - black.mean())
        del f

    by_iso = _group_by_iso(items)
    measured = []
    for iso, (bias_items, levels) in sorted(by_iso.items()):
        say(f"ISO {iso:g}: {len(bias_items)} bias frames, {len(levels)} flat levels")
        measured.append(_calibrate_iso(iso, bias_items, levels, ppcc_samples, rng, warnings))

    K_iso = np.array([m.K for m in measured])
    iso_arr = np.array([m.iso for m in measured])
    b, a = np.polyfit(iso_arr, K_iso, 1, w=1 / K_iso)
    if b <= 0:
        raise CalibrationError("the gain K does not grow with ISO (" + ", ".join(
            f"ISO {m.iso:g}: K {m.K:.4g}" for m in measured) + "); check the files' ISO metadata and that every "
            "ISO's flats were captured at that ISO")
    if a + b * ISO_MIN_REF <= 0:
        b = float(np.sum(iso_arr / K_iso) / np.sum((iso_arr / K_iso) ** 2))  # K = b * ISO, relative errors
        a = 0.0
        warnings.append("K(ISO) = a + b ISO gave K <= 0 at ISO 100: fitted K proportional to ISO instead")
    name = camera_name or _default_name(camera.get("make"), camera.get("model"), out)
    profile = CameraProfile(
        name=name, Kmin=float(a + b * ISO_MIN_REF), Kmax=float(a + b * ISO_MAX_REF),
        G_shape=tuple(m.lam for m in measured),
        g_scale=_loglin(K_iso, [m.sigma_g for m in measured]),
        G_scale=_loglin(K_iso, [m.sigma_TL for m in measured]),
        R_scale=_loglin(K_iso, [m.sigma_r for m in measured]),
        color_bias=tuple(m.color_bias for m in measured))
    result = CalibrationResult(profile, tuple(measured), (float(a), float(b)), camera.get("make"),
                               camera.get("model"), first.shape, tuple(warnings))
    return _write(result, out, plots, report, say, overwrite, inputs)


def _input_files(items) -> list:
    """The files of the input frames, as they are now (paths, or a RawFrame's source file)."""
    files = []
    for it in items:
        if not isinstance(it.ref, RawFrame):
            files.append(file_identity(it.ref))
        elif it.ref.source_file is not None:
            files.append(it.ref.source_file)
    return files


def _check_same_camera(f: RawFrame, first, camera: dict):
    if first is None:
        first = f
    elif f.shape != first.shape:
        raise CalibrationError(f"frames differ in size: {first.source} is {first.shape[1]}x{first.shape[0]}, "
                               f"{f.source} is {f.shape[1]}x{f.shape[0]}; capture every frame at the camera's full "
                               "raw size (no crop or sensor-window mode)")
    elif f.pattern != first.pattern:
        raise CalibrationError(f"frames differ in CFA pattern: {first.source} is {first.pattern}, {f.source} is "
                               f"{f.pattern}; calibrate one camera at a time")
    for key in ("make", "model"):
        value = getattr(f, key)
        if value is None:
            continue
        if key not in camera:
            camera[key], camera[key + "_source"] = value, f.source
        elif re.sub(r"\W", "", value).upper() != re.sub(r"\W", "", camera[key]).upper():
            raise CalibrationError(f"frames come from different cameras: {camera[key + '_source']} has {key} "
                                   f"{camera[key]!r}, {f.source} has {value!r}; calibrate one camera at a time "
                                   "(all bias and flat frames from the same body)")
    return first


def _group_by_iso(items) -> dict:
    """{iso: (bias items, [flat levels: lists of items])}, with the counts checked."""
    isos = sorted({it.iso for it in items})
    out = {}
    for iso in isos:
        bias = [it for it in items if it.iso == iso and it.kind == "bias"]
        flats = [it for it in items if it.iso == iso and it.kind == "flat"]
        if not flats:
            raise CalibrationError(f"ISO {iso:g} has bias frames but no flats: capture flats at >= "
                                   f"{MIN_FLAT_LEVELS} brightness levels (>= {MIN_FLATS_PER_LEVEL} frames each) "
                                   f"at ISO {iso:g}, or drop its bias frames")
        if len(bias) < MIN_BIAS_FRAMES:
            raise CalibrationError(f"too few bias frames at ISO {iso:g}: {len(bias)} (need >= {MIN_BIAS_FRAMES}; "
                                   "8 or more is better): capture them with the lens capped at the shortest exposure")
        levels = _flat_levels(iso, flats)
        if len(levels) < MIN_FLAT_LEVELS:
            raise CalibrationError(
                f"too few flat levels at ISO {iso:g}: {len(levels)} brightness level(s) (" + ", ".join(
                    f"{np.mean([i.mean for i in lv]):.0f} DN" for lv in levels) + f"); need >= {MIN_FLAT_LEVELS} "
                f"levels from dark to ~70% of the range, >= {MIN_FLATS_PER_LEVEL} frames each")
        out[iso] = (bias, levels)
    if len(out) < MIN_ISOS:
        raise CalibrationError(f"frames at {len(out)} ISO ({', '.join(f'{i:g}' for i in out)}) only: need bias "
                               f"and flat frames at >= {MIN_ISOS} ISOs (4 or more spanning the camera's range is "
                               "better) to fit the noise against the gain")
    return out


def _flat_levels(iso, flats) -> list:
    """Flats of one ISO grouped into levels (explicit, or by exposure time then brightness)."""
    groups: dict = {}
    for it in flats:
        key = ("level", it.level) if it.level is not None else ("exposure", None if it.exposure is None
                                                                 else f"{it.exposure:.4g}")
        groups.setdefault(key, []).append(it)
    levels = []
    for key, group in groups.items():
        group.sort(key=lambda i: i.mean)
        if key[0] == "level":
            lo, hi = group[0].mean, group[-1].mean
            if hi > lo * (1 + LEVEL_TOLERANCE) + 1.0:
                raise CalibrationError(f"flats of one level at ISO {iso:g} differ in brightness ({lo:.1f} DN in "
                                       f"{group[0].source}, {hi:.1f} DN in {group[-1].source}): a level needs "
                                       "frames at the same exposure and light")
            levels.append(group)
            continue
        current = [group[0]]
        for it in group[1:]:
            if it.mean > current[0].mean * (1 + LEVEL_TOLERANCE) + 1.0:
                levels.append(current)
                current = []
            current.append(it)
        levels.append(current)
    for lv in levels:
        if len(lv) < MIN_FLATS_PER_LEVEL:
            exp = f", exposure {lv[0].exposure:.4g} s" if lv[0].exposure else ""
            raise CalibrationError(
                f"too few flats at one level at ISO {iso:g}: {lv[0].source} ({lv[0].mean:.1f} DN above black{exp}) "
                f"has no partner: capture >= {MIN_FLATS_PER_LEVEL} flats at every level (same exposure and light)")
    return sorted(levels, key=lambda lv: lv[0].mean)


def _default_name(make, model, out) -> str:
    if model:
        text = model if make and model.upper().startswith(make.upper()) else f"{make or ''} {model}"
        name = re.sub(r"[^0-9A-Za-z]+", "", text)
        if name:
            return name
    return Path(out).stem if out is not None else "Camera"


def _report_path(out, report):
    """The report's path: given, else ``<out stem>_report.txt`` beside ``out``; None: none."""
    if report is None and out is not None:
        return Path(out).with_name(Path(out).stem + "_report.txt")
    return Path(report) if report else None


def _outputs(out, plots, report) -> list[Path]:
    """Every file ``calibrate`` will write."""
    from .plots import PLOT_FILES

    files = [Path(p) for p in (out, report) if p is not None]
    return files + ([Path(plots) / name for name in PLOT_FILES] if plots is not None else [])


def _write(result: CalibrationResult, out, plots, report, say, overwrite, inputs=()) -> CalibrationResult:
    updates = {}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out, overwrite=overwrite, protect=inputs) as tmp:
            tmp.write_text(json.dumps({result.profile.name: result.profile.to_dict()}, indent=1) + "\n")
        load_profile(out)  # what was written loads back
        updates["profile_path"] = out
        say(f"profile written to {out}")
    if plots is not None:
        from .plots import write_plots

        updates["plot_paths"] = write_plots(result, plots, overwrite, protect=inputs)
        say(f"plots written to {plots}")
    if report:
        updates["report_path"] = report
    result = dataclasses.replace(result, **updates)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(report, overwrite=overwrite, protect=inputs) as tmp:
            tmp.write_text(result.report())
    return result
