"""The darktable plug-in (integrations/darktable/exposure_diffusion.lua) driven in a real darktable.

darktable (the GUI program, not darktable-cli: the plug-in is a lighttable module) starts
under Xvfb with a throw-away config folder and library. The plug-in is installed there as
a user would install it (``lua/exposure_diffusion.lua`` and ``require "exposure_diffusion"``
in ``luarc``); its preference names the ``exposure-diffusion`` command. ``--luacmd`` runs
the Lua code below once the GUI is up: it imports a small dark raw (a 256 x 384 Bayer DNG of
the bench's scene), gives it tags, a rating and colour labels, selects it, and presses the
module's button (its ``clicked_callback``) twice: first with a ratio the command refuses,
then with ratio 100 and 1 step. It writes what darktable's own Lua API then reports to a
JSON file and quits darktable through its "global/quit" action (darktable 4.2's Lua API 9
has no ``darktable.control.quit``; the action is what Ctrl+Q runs).

Checked afterwards, from the JSON and independently from darktable's SQLite library:
the refused run imported nothing and its error reached darktable's log (``-d lua``); the
good run imported ``dark_enhanced.dng`` beside the source, grouped with it (same group id),
with the source's tags, rating and colour labels; the file is a DNG that our reader opens
at the source's size, about 100 times brighter than the source above black; no working
files are left behind.

``.ci/run`` installs darktable, Xvfb and xauth (Debian packages darktable, xvfb, xauth);
where darktable or xvfb-run is absent the test skips, saying so.
"""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "integrations" / "darktable" / "exposure_diffusion.lua"
DARKTABLE, XVFB_RUN = shutil.which("darktable"), shutil.which("xvfb-run")
TIMEOUT_S = 170

pytestmark = [
    pytest.mark.skipif(DARKTABLE is None, reason="darktable is not installed (apt-get install darktable; "
                                                 ".ci/run installs it)"),
    pytest.mark.skipif(XVFB_RUN is None, reason="xvfb-run is not installed (apt-get install xvfb xauth; "
                                                ".ci/run installs them)"),
]

USER_TAGS = ["trip|night market", "ExposureDiffusion test"]

# Runs inside darktable. %(...)s fields are filled in by the test.
DRIVE_LUA = r"""
local dt = require "darktable"
local report = { api = dt.configuration.api_version_string, version = dt.configuration.version }

local function json(value)
  local kind = type(value)
  if kind == "table" then
    local parts = {}
    if #value > 0 or next(value) == nil then
      for _i, item in ipairs(value) do parts[#parts + 1] = json(item) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    for key, item in pairs(value) do parts[#parts + 1] = json(tostring(key)) .. ":" .. json(item) end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif kind == "string" then
    return '"' .. value:gsub('[%%c"\\]', function(c) return string.format("\\u%%04x", c:byte()) end) .. '"'
  elseif kind == "number" or kind == "boolean" then
    return tostring(value)
  end
  return "null"
end

local function describe(image)
  local tags = {}
  for _i, tag in ipairs(dt.tags.get_tags(image)) do tags[#tags + 1] = tag.name end
  return { id = image.id, path = image.path, filename = image.filename, group_leader = image.group_leader.id,
           rating = image.rating, red = image.red, yellow = image.yellow, green = image.green,
           blue = image.blue, purple = image.purple, tags = tags }
end

local ok, err = pcall(function()
  local source = dt.database.import(%(source)s)
  for _i, name in ipairs(%(tags)s) do dt.tags.attach(dt.tags.create(name), source) end
  source.rating = 4
  source.red = true
  source.purple = true
  dt.gui.selection({ source })
  report.selected = #dt.gui.selection()

  local plugin = require "exposure_diffusion"
  report.module = dt.gui.libs.exposure_diffusion.name  -- the lighttable module is registered
  local button = plugin.widgets.button
  -- a ratio the command refuses: a failure, nothing imported
  plugin.widgets.ratio.text = "-5"
  button.clicked_callback(button)
  report.after_refused = #dt.database
  -- the real run
  plugin.widgets.ratio.text = "100"
  plugin.widgets.steps.selected = 1
  report.steps = plugin.widgets.steps.value
  button.clicked_callback(button)

  report.images = {}
  for _i, image in ipairs(dt.database) do report.images[#report.images + 1] = describe(image) end
end)
report.ok = ok
report.error = err and tostring(err) or ""
local out = io.open(%(result)s, "w")
out:write(json(report))
out:close()
-- darktable's API objects raise on a field they lack, hence pcall
local has_quit, quit = pcall(function() return dt.control.quit end)
if has_quit and quit then quit() else dt.gui.action("global/quit", 0, "", "", 1.0) end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def _executable(folder: Path) -> str:
    """The installed command, or a wrapper running this Python's package (a checkout without
    the console script)."""
    found = shutil.which("exposure-diffusion")
    if found:
        return found
    wrapper = folder / "exposure-diffusion"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m training \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from bench.scene import write_scene_dng

    work = tmp_path_factory.mktemp("darktable")
    config, photos, home = work / "config", work / "photos", work / "home"
    for folder in (config / "lua", photos, home):
        folder.mkdir(parents=True)
    shutil.copy(PLUGIN, config / "lua" / PLUGIN.name)
    (config / "luarc").write_text('require "exposure_diffusion"\n')
    source = write_scene_dng(photos / "dark.dng", 256, 384, ratio=100, iso=3200)
    result = work / "result.json"
    drive = work / "drive.lua"
    drive.write_text(DRIVE_LUA % {"source": _lua_string(str(source)), "result": _lua_string(str(result)),
                                  "tags": "{" + ", ".join(_lua_string(t) for t in USER_TAGS) + "}"})
    library = work / "library.db"
    cmd = [XVFB_RUN, "-a", "-s", "-screen 0 1280x800x24",
           DARKTABLE, "-d", "lua", "--configdir", str(config), "--library", str(library),
           "--cachedir", str(work / "cache"), "--conf", f"lua/exposure_diffusion/executable={_executable(work)}",
           "--luacmd", f"dofile({_lua_string(str(drive))})"]
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"darktable did not finish in {TIMEOUT_S} s; its output:\n{log[-4000:]}")
    assert result.is_file(), f"the Lua code wrote no result (exit {proc.returncode}); darktable said:\n{log[-4000:]}"
    report = json.loads(result.read_text())
    assert report["ok"], f"{report['error']}\n{log[-4000:]}"
    return {"report": report, "log": log, "library": library, "data": config / "data.db", "photos": photos,
            "source": source, "returncode": proc.returncode}


def test_darktable_shows_the_module_and_exits_cleanly(session):
    assert session["returncode"] == 0, session["log"][-4000:]
    assert session["report"]["module"] == "exposure diffusion"
    assert session["report"]["selected"] == 1
    assert int(session["report"]["api"].split(".")[0]) >= 9, session["report"]


def test_a_refused_run_imports_nothing_and_its_error_reaches_darktables_log(session):
    assert session["report"]["after_refused"] == 1
    lines = [line for line in session["log"].splitlines() if "exposure_diffusion: dark.dng:" in line]
    assert lines, session["log"][-4000:]
    assert "ratio" in session["log"].split("exposure_diffusion: dark.dng:", 1)[1][:2000]


def test_the_result_is_imported_grouped_with_its_source_with_its_tags_rating_and_labels(session):
    images = {image["filename"]: image for image in session["report"]["images"]}
    assert set(images) == {"dark.dng", "dark_enhanced.dng"}, images
    source, result = images["dark.dng"], images["dark_enhanced.dng"]
    assert result["path"] == source["path"] == str(session["photos"])
    assert result["group_leader"] == source["group_leader"] == source["id"]
    assert set(USER_TAGS) <= set(result["tags"]), result["tags"]
    assert result["rating"] == 4
    assert [result[c] for c in ("red", "yellow", "green", "blue", "purple")] == [True, False, False, False, True]
    assert session["report"]["steps"] == "1"


def test_darktables_library_on_disk_says_the_same(session):
    with sqlite3.connect(session["library"]) as db:
        rows = {name: (image_id, group_id, flags)
                for image_id, group_id, name, flags in db.execute("SELECT id, group_id, filename, flags FROM images")}
        labels = {image_id: sorted(c for (c,) in db.execute("SELECT color FROM color_labels WHERE imgid = ?", (image_id,)))
                  for image_id, _, _ in rows.values()}
        tagged = {image_id: {t for (t,) in db.execute("SELECT tagid FROM tagged_images WHERE imgid = ?", (image_id,))}
                  for image_id, _, _ in rows.values()}
    with sqlite3.connect(session["data"]) as db:
        tag_names = dict(db.execute("SELECT id, name FROM tags"))
    assert set(rows) == {"dark.dng", "dark_enhanced.dng"}
    src_id, src_group, _ = rows["dark.dng"]
    new_id, new_group, new_flags = rows["dark_enhanced.dng"]
    assert new_group == src_group == src_id
    assert new_flags & 0x7 == 4  # the rating lives in the low bits of flags
    assert labels[new_id] == [0, 4]  # red, purple
    assert set(USER_TAGS) <= {tag_names[t] for t in tagged[new_id]}


def test_the_enhanced_dng_is_a_brighter_raw_of_the_same_size_and_nothing_is_left_behind(session):
    from engine import read_raw

    photos = session["photos"]
    assert sorted(p.name for p in photos.iterdir() if not p.name.endswith(".xmp")) == ["dark.dng", "dark_enhanced.dng"]
    source, result = read_raw(str(session["source"])), read_raw(str(photos / "dark_enhanced.dng"))
    assert result.cfa.shape == source.cfa.shape == (256, 384)

    def above_black(frame):
        black = np.asarray(frame.black_level, dtype=np.float64).mean()
        return (np.asarray(frame.cfa, dtype=np.float64) - black).mean() / (frame.white_level - black)

    gain = above_black(result) / above_black(source)
    assert 50 < gain < 200, gain  # ratio 100 (the network's estimate is not an exact multiple)
