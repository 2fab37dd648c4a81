-- scripts/wrk/etcd-put.lua: the same writes as put.lua, to etcd's v3 JSON gateway.
--   wrk -s scripts/wrk/etcd-put.lua http://<etcd leader's client URL>
-- POST /v3/kv/put with {"key":"<base64 of the key>","value":"<base64 of the value>"}: the same
-- 10,000 keys of 16 B and values of 100 B as put.lua.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(text)
  local out = {}
  for position = 1, #text, 3 do
    local a, b, c = string.byte(text, position, position + 2)
    local triple = a * 65536 + (b or 0) * 256 + (c or 0)
    local sextets = {
      math.floor(triple / 262144) % 64, math.floor(triple / 4096) % 64,
      math.floor(triple / 64) % 64, triple % 64,
    }
    local length = b == nil and 2 or (c == nil and 3 or 4)
    for index = 1, 4 do
      if index <= length then
        out[#out + 1] = string.sub(alphabet, sextets[index] + 1, sextets[index] + 1)
      else
        out[#out + 1] = "="
      end
    end
  end
  return table.concat(out)
end

common.install(function(key)
  local body = '{"key":"' .. base64(key) .. '","value":"' .. base64(common.value_of(key, 100)) .. '"}'
  return wrk.format("POST", "/v3/kv/put", { ["Content-Type"] = "application/json" }, body)
end)
