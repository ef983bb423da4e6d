"""The documentation: the site builds, covers the public API, and the repository stands alone.

- ``mkdocs build --strict`` of ``mkdocs.yml`` into a temporary folder: every page, link,
  anchor and snippet resolves, and mkdocstrings renders the docstrings without a warning;
  every public name of ``engine``, ``kernels`` and ``training`` (their ``__all__``) gets its
  own rendered entry (its anchor) in the API reference. Skips, saying so, where the ``docs``
  extra is not installed (``pip install -e ".[docs]"``; ``.ci/run`` installs it).
- Without mkdocs: the API pages name every public name; the README is short (<= 150 lines),
  holds the two fresh-machine commands verbatim, and its links and picture exist (the
  picture under 300 KB); no file of the repository names a path outside it; the picture's
  script (``docs/make_figures.py``) makes it here, and the enhanced panel is as bright as the
  plainly brightened one with less than 0.6 of its pixel-to-pixel noise.
"""
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels", "training")
COMMANDS = (
    "pip install torch==2.13.0 && pip install -e . && python bench/throughput.py",
    'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest',
)
DOCS_TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_tools() -> list[str]:
    missing = []
    for name in DOCS_TOOLS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is absent
            found = False
        if not found:
            missing.append(name)
    return missing


def _api_targets() -> dict[str, list[str]]:
    """``::: dotted.path`` lines of each API page."""
    return {pkg: re.findall(r"^::: ([\w.]+)\s*$", (ROOT / "docs" / "api" / f"{pkg}.md").read_text(), re.M)
            for pkg in PACKAGES}


def _public_names(pkg: str) -> list[str]:
    return list(importlib.import_module(pkg).__all__)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)} missing): "
                    'pip install -e ".[docs]" (.ci/run installs them)')
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


def test_the_site_builds_strictly_with_every_page(site):
    for page in ("index.html", "method/index.html", "architecture/index.html", "limits/index.html",
                 "performance/index.html", "model-card/index.html", "guide/enhancing/index.html",
                 "guide/darktable/index.html", "guide/cameras/index.html", "guide/training/index.html",
                 "guide/bench/index.html", "images/before_after.png"):
        assert (site / page).is_file(), page
    card = (site / "model-card" / "index.html").read_text()
    assert "Judged beside classical denoisers" in card  # the card itself, included from engine/data/README.md


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_public_name_is_rendered_in_the_api_reference(site, pkg):
    page = (site / "api" / pkg / "index.html").read_text()
    targets = {t.rsplit(".", 1)[-1]: t for t in _api_targets()[pkg]}
    for name in _public_names(pkg):
        assert f'id="{targets[name]}"' in page, f"{pkg}.{name} ({targets[name]}) has no entry on the page"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_public_name_has_an_api_entry(pkg):
    named = {t.rsplit(".", 1)[-1] for t in _api_targets()[pkg]}
    missing = [n for n in _public_names(pkg) if n not in named]
    assert not missing, f"add '::: <module>.<name>' lines to docs/api/{pkg}.md for: {missing}"


def test_readme_is_short_with_the_two_commands_and_links_that_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    lines = [line.strip() for line in readme.splitlines()]
    for command in COMMANDS:
        assert command in lines, command
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into the docs"
    for link in local:
        assert (ROOT / link).exists(), link
    picture = ROOT / "docs" / "images" / "before_after.png"
    assert f"]({picture.relative_to(ROOT)})" in readme
    assert picture.stat().st_size < 300 * 1024


# Paths that lead out of the repository: the shared folder beside checkouts, the machines'
# working folders, the design documents that live there.
OUTSIDE = re.compile(r"\.\./shared|(?<![\w.])/work/|\b(?:SPEC|DESIGN)\.md\b")


def test_no_file_names_a_path_outside_the_repository():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the repository's files")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    offenders = []
    for rel in filter(None, listed):
        path = ROOT / rel
        if path == Path(__file__).resolve() or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()[:120]}")
    assert not offenders, "files name paths outside the repository:\n" + "\n".join(offenders)


def test_the_readme_picture_is_made_by_its_script(tmp_path):
    """docs/make_figures.py on this machine (about ten seconds): three panels of the dark
    frame; as shot it is nearly black, brightened it is as bright as enhanced, and the
    enhancement removes most of the pixel-to-pixel noise of the plain brightening."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        figures = importlib.import_module("make_figures")
    finally:
        sys.path.remove(str(ROOT / "docs"))
    path = figures.before_after(tmp_path)
    assert path.stat().st_size < 300 * 1024
    sheet = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    top, left, h, w = figures.CROP
    gap = figures.GAP
    assert sheet.shape == (h + figures.LABEL_H, 3 * w + 2 * gap, 3)
    shot, bright, enhanced = (sheet[figures.LABEL_H:, i * (w + gap):i * (w + gap) + w] for i in range(3))
    roughness = [np.abs(np.diff(p, axis=1)).mean() for p in (shot, bright, enhanced)]
    assert shot.mean() < 15 and bright.mean() > 60
    assert abs(enhanced.mean() - bright.mean()) < 20, (enhanced.mean(), bright.mean())
    assert roughness[2] < 0.6 * roughness[1], roughness
