-- scripts/wrk/put.lua: kvd PUTs for wrk, as kv-bench's `put` makes them.
--   wrk -s scripts/wrk/put.lua URL
-- PUT /key/<one of 10,000 keys of 16 B, drawn uniformly> with the body {"value":"<100 B>"}
-- (the key's name repeated to 100 bytes).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

common.install(function(key)
  local body = '{"value":"' .. common.value_of(key, 100) .. '"}'
  return wrk.format("PUT", "/key/" .. key, { ["Content-Type"] = "application/json" }, body)
end)
