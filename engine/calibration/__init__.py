"""Noise calibration of a new camera: bias and flat frames -> camera profile.

``fit`` (the API: ``calibrate``), ``stats`` (per-ISO measurements), ``inputs`` (capture
folders, file lists), ``plots`` (diagnostic charts), ``cli`` (the ``calibrate`` command).
"""
# Imported on first use (PEP 562): ``engine.cli`` registers the ``calibrate`` command from
# ``engine.calibration.cli`` without importing the fit (numpy, scipy, torch) for ``--help``.
_LAZY = {name: ".fit" for name in ("RAW_EXTENSIONS", "CalibrationError", "CalibrationResult", "IsoCalibration",
                                   "calibrate", "find_frames", "raw_files")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["calibrate", "find_frames", "raw_files", "CalibrationResult", "IsoCalibration",
           "CalibrationError", "RAW_EXTENSIONS"]
