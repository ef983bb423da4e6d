--[[
  exposure_diffusion.lua: enhance dark raw photos with ExposureDiffusion from darktable's lighttable.

  A lighttable module ("exposure diffusion", right panel) with the exposure ratio, the
  number of steps and the model. Its "enhance selected" button runs

      exposure-diffusion enhance IMAGE --ratio R --steps S [--checkpoint MODEL] --format dng ...

  on each selected image, one after the other, while darktable stays usable (the command
  runs through darktable.control.execute, which lets darktable go on; a progress bar with a
  cancel button shows in the lower left). Each result, a linear DNG, is written beside its
  source (or into the chosen folder) as NAME_enhanced.dng, imported, grouped with its
  source, and given the source's tags, rating and colour labels. A failure is shown on
  screen and written to darktable's log with the command's last output lines; the other
  images go on.

  Requirements: darktable 4.2 or newer (Lua API 9), and the exposure-diffusion command
  (pip install of this repository). Its path is a preference (preferences > lua options).

  Install: copy this file to ~/.config/darktable/lua/ (or lua/contrib/ of darktable's
  lua-scripts) and add the line   require "exposure_diffusion"   to ~/.config/darktable/luarc,
  or start it from the script manager. The documentation's user guide, "darktable", says more.

  Other Lua code (the repository's test, another script) can run the same action as the
  button: require("exposure_diffusion").enhance(images[, settings]).

]]

local dt = require "darktable"

local MODULE = "exposure_diffusion"
local MIN_API = 9

local M = {}          -- what require returns: the action and the widgets
M.widgets = {}

local function _(text)
  return dt.gettext.gettext(text)
end

if dt.configuration.api_version_major < MIN_API then
  dt.print_error(MODULE .. ": needs darktable's Lua API " .. MIN_API .. " (darktable 4.2) or newer, this is "
    .. dt.configuration.api_version_string)
  return M
end

-- ---------------------------------------------------------------- preferences

dt.preferences.register(MODULE, "executable", "string",
  _("exposure diffusion: command"),
  _("the exposure-diffusion program: a full path, or a name found on PATH"),
  "exposure-diffusion")
dt.preferences.register(MODULE, "extra_options", "string",
  _("exposure diffusion: more options"),
  _("added to every enhance command as typed, e.g. --device cuda:1 or --seed 0"),
  "")

-- The module's own fields are remembered between sessions (not shown in preferences).
local function remembered(key, default)
  local value = dt.preferences.read(MODULE, key, "string")
  if value == nil or value == "" then return default end
  return value
end

local function remember(key, value)
  dt.preferences.write(MODULE, key, "string", value or "")
end

-- ---------------------------------------------------------------- helpers

-- One argument for /bin/sh, whatever it holds (spaces, quotes, $).
local function quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function last_lines(path, count)
  local f = io.open(path, "r")
  if not f then return "" end
  local lines = {}
  for line in f:lines() do
    if line:match("%S") then
      lines[#lines + 1] = line
      if #lines > count then table.remove(lines, 1) end
    end
  end
  f:close()
  return table.concat(lines, "\n")
end

local function trim(text)
  return (tostring(text or ""):gsub("^%s+", ""):gsub("%s+$", ""))
end

-- NAME.ext -> NAME_enhanced.dng in folder, NAME_enhanced-2.dng, ... when taken.
local function free_name(folder, filename)
  local stem = filename:gsub("%.[^.]*$", "")
  local candidate = folder .. "/" .. stem .. "_enhanced.dng"
  local n = 2
  while file_exists(candidate) do
    candidate = folder .. "/" .. stem .. "_enhanced-" .. n .. ".dng"
    n = n + 1
  end
  return candidate
end

local COLOR_LABELS = { "red", "yellow", "green", "blue", "purple" }

-- Tags, rating and colour labels of source onto image. darktable's own tags (darktable|...)
-- describe each file and are set by darktable itself.
local function copy_metadata(source, image)
  for _i, tag in ipairs(dt.tags.get_tags(source)) do
    if not tostring(tag.name):match("^darktable|") then
      dt.tags.attach(tag, image)
    end
  end
  image.rating = source.rating
  for _i, label in ipairs(COLOR_LABELS) do
    image[label] = source[label]
  end
end

-- ---------------------------------------------------------------- the action

-- What the module's fields say now.
local function current_settings()
  local w = M.widgets
  return {
    ratio = trim(w.ratio.text),
    steps = w.steps.value,
    model = trim(w.model.text),
    folder = trim(w.folder.text),
  }
end

-- The shell command that enhances one file into folder, its output going to log.
local function command_for(source_path, folder, log, settings)
  local executable = trim(dt.preferences.read(MODULE, "executable", "string"))
  if executable == "" then executable = "exposure-diffusion" end
  local parts = {
    quote(executable), "enhance", quote(source_path),
    "--ratio", quote(settings.ratio),
    "--steps", quote(settings.steps),
    "--format", "dng", "-o", quote(folder), "-q",
  }
  if settings.model ~= "" then
    parts[#parts + 1] = "--checkpoint"
    parts[#parts + 1] = quote(settings.model)
  end
  local extra = trim(dt.preferences.read(MODULE, "extra_options", "string"))
  if extra ~= "" then parts[#parts + 1] = extra end
  return "mkdir -p " .. quote(folder) .. " && " .. table.concat(parts, " ") .. " > " .. quote(log) .. " 2>&1"
end

local function fail(image_name, message)
  local text = MODULE .. ": " .. image_name .. ": " .. message
  dt.print_error(text)
  dt.print(_("exposure diffusion failed on ") .. image_name .. ": " .. message:gsub("\n", " | "))
end

-- Enhance one image; returns the imported result, or nil and the reason.
local function enhance_one(source, settings, run_id)
  local source_path = source.path .. "/" .. source.filename
  local folder = settings.folder ~= "" and settings.folder or source.path
  local work = folder .. "/.exposure-diffusion-" .. run_id
  local log = work .. ".log"
  local status = dt.control.execute(command_for(source_path, work, log, settings))
  local stem = source.filename:gsub("%.[^.]*$", "")
  local produced = work .. "/" .. stem .. ".dng"
  if status ~= 0 or not file_exists(produced) then
    local said = last_lines(log, 4)
    os.remove(produced)
    os.remove(work)
    os.remove(log)
    if said == "" then said = "the command failed (status " .. tostring(status) .. ") and said nothing" end
    return nil, said
  end
  local target = free_name(folder, source.filename)
  local moved, why = os.rename(produced, target)
  os.remove(work)
  if not moved then
    return nil, "could not move the result to " .. target .. ": " .. tostring(why)
  end
  os.remove(log)
  local image = dt.database.import(target)
  if not image then
    return nil, "darktable did not import " .. target
  end
  image:group_with(source)
  copy_metadata(source, image)
  return image
end

-- The action: enhance images (a list of darktable images; default: the ones darktable
-- acts on, i.e. the selection) with settings (default: the module's fields). Returns the
-- imported results and the number of failures.
function M.enhance(images, settings)
  images = images or dt.gui.action_images
  settings = settings or current_settings()
  local list = {}
  for _i, image in ipairs(images) do list[#list + 1] = image end
  if #list == 0 then
    dt.print(_("exposure diffusion: select the images to enhance first"))
    return {}, 0
  end
  if settings.ratio == "" then
    dt.print(_("exposure diffusion: give a ratio (a number such as 100, or auto)"))
    return {}, 0
  end
  settings.steps = tostring(settings.steps or "3")

  local cancelled = false
  local job = dt.gui.create_job(_("exposure diffusion"), true, function(_job) cancelled = true end)
  local results, failures = {}, 0
  local run_id = tostring(os.time()) .. "-" .. tostring(math.random(100000, 999999))
  for i, source in ipairs(list) do
    if cancelled or dt.control.ending then break end
    local image, why = enhance_one(source, settings, run_id .. "-" .. i)
    if image then
      results[#results + 1] = image
    else
      failures = failures + 1
      fail(source.filename, why)
    end
    job.percent = i / #list
  end
  if job.valid then job.valid = false end
  local summary = string.format(_("exposure diffusion: %d enhanced"), #results)
  if failures > 0 then summary = summary .. string.format(_(", %d failed (see the log)"), failures) end
  if cancelled then summary = summary .. _(", cancelled") end
  dt.print(summary)
  return results, failures
end

-- ---------------------------------------------------------------- the module

local w = M.widgets
w.ratio = dt.new_widget("entry") {
  text = remembered("ratio", "100"),
  placeholder = _("100, 300, ... or auto"),
  tooltip = _("how much brighter: the ratio of the exposure you want to the one you shot "
    .. "(e.g. 100 for 1/3000 s that should look like 1/30 s); auto lets the program estimate it "
    .. "where it can; whatever is typed here is passed on as --ratio"),
  editable = true,
}
local STEP_CHOICES = { "1", "2", "3", "4", "5", "auto" }
local initial_steps = 3
for i, value in ipairs(STEP_CHOICES) do
  if value == remembered("steps", "3") then initial_steps = i end
end
w.steps = dt.new_widget("combobox") {
  label = _("steps"),
  tooltip = _("network evaluations per image: more is slower; 3 is the default, 1 the one-shot "
    .. "estimate, auto picks per image from its noise"),
  selected = initial_steps,
  table.unpack(STEP_CHOICES),
}
w.model = dt.new_widget("entry") {
  text = remembered("model", ""),
  placeholder = _("the shipped model"),
  tooltip = _("a checkpoint file (.pt); empty: the model shipped with exposure-diffusion"),
  editable = true,
}
w.model_chooser = dt.new_widget("file_chooser_button") {
  title = _("choose a model checkpoint"),
  is_directory = false,
  changed_callback = function(self)
    if self.value and self.value ~= "" then w.model.text = self.value end
  end,
}
w.folder = dt.new_widget("entry") {
  text = remembered("folder", ""),
  placeholder = _("beside each image"),
  tooltip = _("where the enhanced DNGs go; empty: the folder of each source image"),
  editable = true,
}
w.button = dt.new_widget("button") {
  label = _("enhance selected"),
  tooltip = _("run exposure-diffusion on the selected images and import the results"),
  clicked_callback = function(_button)
    local settings = current_settings()
    remember("ratio", settings.ratio)
    remember("steps", settings.steps)
    remember("model", settings.model)
    remember("folder", settings.folder)
    M.enhance(nil, settings)
  end,
}

dt.register_lib(
  MODULE,
  _("exposure diffusion"),
  true,   -- expandable
  false,  -- resettable
  { [dt.gui.views.lighttable] = { "DT_UI_CONTAINER_PANEL_RIGHT_CENTER", 700 } },
  dt.new_widget("box") {
    orientation = "vertical",
    dt.new_widget("label") { label = _("ratio") },
    w.ratio,
    w.steps,
    dt.new_widget("label") { label = _("model") },
    w.model,
    w.model_chooser,
    dt.new_widget("label") { label = _("output folder") },
    w.folder,
    w.button,
  },
  nil,
  nil
)

-- For darktable's script manager: hide the module when the script is stopped.
M.destroy = function()
  dt.gui.libs[MODULE].visible = false
end

return M
