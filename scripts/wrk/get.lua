-- scripts/wrk/get.lua: GETs for wrk, as kv-bench's `get` makes them.
--   wrk -s scripts/wrk/get.lua URL
-- GET /key/<one of 10,000 keys of 16 B, drawn uniformly>; prefill the keys first (kvd answers
-- 404 for an absent key, which wrk counts as an error). The trivial server answers any GET.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

common.install(function(key)
  return wrk.format("GET", "/key/" .. key)
end)
