"""Noise calibration of a new camera: bias and flat frames -> camera profile.

``fit`` (the API: ``calibrate``), ``stats`` (per-ISO measurements), ``inputs`` (capture
folders, file lists), ``plots`` (diagnostic charts), ``cli`` (the ``calibrate`` command).
"""
from .fit import (
           RAW_EXTENSIONS,
           CalibrationError,
           CalibrationResult,
           IsoCalibration,
           calibrate,
           find_frames,
           raw_files,
)

__all__ = ["calibrate", "find_frames", "raw_files", "CalibrationResult", "IsoCalibration",
           "CalibrationError", "RAW_EXTENSIONS"]
