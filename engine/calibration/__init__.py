"""Noise calibration of a new camera: bias and flat frames -> camera profile.

``fit`` (the API: ``calibrate``), ``stats`` (per-ISO measurements), ``inputs`` (capture
folders, file lists), ``plots`` (diagnostic charts), ``cli`` (the ``calibrate`` command).
"""
# Imported on first use (PEP 562): ``engine.cli`` registers the ``calibrate`` command from
# ``engine.calibration.cli`` without importing the fit (numpy, scipy, torch) for ``--help``.
from ..lazy import lazy_names

_LAZY = {name: ".fit" for name in ("RAW_EXTENSIONS", "CalibrationError", "CalibrationResult", "IsoCalibration",
                                   "calibrate", "find_frames", "raw_files")}

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())

__all__ = ["calibrate", "find_frames", "raw_files", "CalibrationResult", "IsoCalibration",
           "CalibrationError", "RAW_EXTENSIONS"]
