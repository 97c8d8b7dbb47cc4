-- luacheck: house style (STYLE.md): no globals beyond Lua's minimal set
std = "min"
max_line_length = 120
files["spec"] = { std = "+busted" }
files["examples"] = { globals = { "arg" } }
files["bench"] = { globals = { "arg" } }
exclude_files = { "build/**" }
-- the 5.1/5.2+ shims read globals that exist on one version only
read_globals = { "unpack", "setfenv", "loadstring", "table.unpack", "table.pack", "math.type" }
