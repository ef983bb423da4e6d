"""Names a package imports on first use (PEP 562), so that importing the package stays cheap.

The command line (``exposure-diffusion --help``, argument errors) imports ``engine``,
``engine.calibration`` and ``training`` but none of their torch-heavy modules; their public
names (``from engine import Pipeline``) resolve on first use instead. This module imports
nothing beyond the standard library.
"""
from __future__ import annotations

from importlib import import_module


def lazy_names(package: str, names: dict, namespace: dict):
    """A package's ``(__getattr__, __dir__)`` for ``names`` (``{name: ".module"}``, relative
    to ``package``): a name's module is imported at its first lookup and the value kept in
    ``namespace`` (the package's ``globals()``), so later lookups are plain attribute reads."""

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(names[name], package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
