-- scripts/wrk/common.lua: shared by the wrk scripts of scripts/bench-all (loaded with dofile).
--
-- install(make_request): defines wrk's init, request and done for a script whose requests
--   each name one of 10,000 keys of 16 B drawn uniformly: make_request(key) returns the whole
--   request text (wrk.format), made once per key at start so sending costs wrk nothing.
-- keys(count, size): kv-bench's key names, "key-" and the index zero-padded to `size` bytes
--   (key-000000000042 for size 16), so wrk and kv-bench write the same keys.
-- value_of(key, size): kv-bench's value of a key: its name repeated to `size` bytes.
-- done(summary, latency, requests): wrk's end-of-run hook; prints one line
--   `wrk-json {...}` with requests, the non-2xx/3xx answers, socket errors, the measured
--   seconds and latency percentiles in microseconds, for scripts/bench-report to read.
local common = {}
local key_count, key_size = 10000, 16

function common.keys(count, size)
  local names = {}
  local digits = size - 4
  for index = 0, count - 1 do
    names[index + 1] = string.format("key-%0" .. digits .. "d", index)
  end
  return names
end

function common.value_of(key, size)
  local repeated = string.rep(key, math.ceil(size / #key))
  return string.sub(repeated, 1, size)
end

function common.done(summary, latency, requests)
  local errors = summary.errors
  local fields = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"status_errors":%d', errors.status),
    string.format('"connect_errors":%d', errors.connect),
    string.format('"read_errors":%d', errors.read),
    string.format('"write_errors":%d', errors.write),
    string.format('"timeouts":%d', errors.timeout),
    string.format('"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}',
      latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max),
  }
  io.write("wrk-json {" .. table.concat(fields, ",") .. "}\n")
end

function common.install(make_request)
  local prepared = {}
  function init(arguments)
    for index, key in ipairs(common.keys(key_count, key_size)) do
      prepared[index] = make_request(key)
    end
  end
  function request()
    return prepared[math.random(key_count)]
  end
  done = common.done
end

return common
