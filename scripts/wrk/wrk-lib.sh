# shellcheck shell=bash
# scripts/wrk/wrk-lib.sh: running wrk for the bench-* scripts. Source it after bench-lib.sh.
#
# bench_ensure_wrk: installs Debian's wrk with apt-get if it is missing; fails clearly if it
# cannot.
# bench_wrk OUT SCRIPT URL CONNECTIONS DURATION WARMUP [SERVER_DESCRIPTION]: one wrk run with a
# Lua script of scripts/wrk/ (its done() prints a `wrk-json {...}` line, which
# scripts/bench-report reads), after a warm-up run of WARMUP (skipped for 0s) whose output is
# dropped. OUT gets `# command: …`, `# server: …` and wrk's whole output; one line goes to the
# console. Threads: one per core, at most one per connection. Bounded by `timeout`.

bench_ensure_wrk() {
  if ! command -v wrk >/dev/null; then
    echo "installing wrk (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q >/dev/null || true
    timeout 600 apt-get install -y -q wrk >/dev/null || true
  fi
  if ! command -v wrk >/dev/null; then
    echo "wrk is missing and could not be installed (apt-get install wrk)" >&2
    return 1
  fi
}

bench_wrk() {
  local out=$1 script=$2 url=$3 connections=$4 duration=$5 warmup=$6 server=${7:-}
  local threads
  threads=$(nproc)
  if ((threads > connections)); then threads=$connections; fi
  local arguments=(-t "$threads" -c "$connections" --timeout 5s -s "$script")
  if [[ $warmup != 0s && $warmup != 0 ]]; then
    timeout 120 wrk "${arguments[@]}" -d "$warmup" "$url" >/dev/null
  fi
  {
    local warmup_text=""
    if [[ $warmup != 0s && $warmup != 0 ]]; then warmup_text=" (after the same for $warmup, not counted)"; fi
    echo "# command: wrk ${arguments[*]} -d $duration $url$warmup_text"
    echo "# server: $server"
    timeout 300 wrk "${arguments[@]}" -d "$duration" "$url"
  } >"$out"
  python3 - "$out" <<'PYTHON'
import json, sys
text = open(sys.argv[1]).read()
line = next(l for l in text.splitlines() if l.startswith("wrk-json "))
report = json.loads(line[len("wrk-json "):])
seconds = report["duration_us"] / 1e6
errors = report["status_errors"] + report["connect_errors"] + report["read_errors"] \
    + report["write_errors"] + report["timeouts"]
latency = report["latency_us"]
name = sys.argv[1].rsplit("/", 1)[-1]
print(f"{name:<34} {(report['requests'] - report['status_errors']) / seconds:>10.0f} ok/s  "
      f"p50 {latency['p50']:>6} us  p99 {latency['p99']:>6} us  errors {errors}")
PYTHON
}
