# shellcheck shell=bash
# shellcheck disable=SC2034 # BENCH_ADDRESS and BENCH_PID are outputs for the sourcing script.
# scripts/bench-lib.sh: helpers shared by the bench-* scripts. Source it; do not run it.
#
# Every process a script starts through these helpers is remembered in bench_pids and stopped
# by bench_cleanup, which the scripts call from an EXIT trap. Every wait here has a deadline.

bench_pids=()

# bench_stop PID: SIGTERM, up to 10 s to exit, then SIGKILL; always reaps.
bench_stop() {
  local pid=$1
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# bench_cleanup: stops every process started by this script, newest first.
bench_cleanup() {
  local index
  for ((index = ${#bench_pids[@]} - 1; index >= 0; index--)); do
    bench_stop "${bench_pids[index]}"
  done
  bench_pids=()
}

# bench_forget PID: removes PID from bench_pids after the caller stopped it itself.
bench_forget() {
  local pid=$1 kept=() candidate
  for candidate in "${bench_pids[@]}"; do
    [[ $candidate == "$pid" ]] || kept+=("$candidate")
  done
  bench_pids=("${kept[@]}")
}

# bench_free_port: prints a TCP port that was free on 127.0.0.1 a moment ago.
bench_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_start_listening SCRATCH_DIR NAME COMMAND...: starts COMMAND in the background with its
# stdout on a FIFO, waits up to 30 s for the first line, which must be "listening on ADDR",
# and sets BENCH_ADDRESS=ADDR and BENCH_PID. Later stdout goes to SCRATCH_DIR/NAME.stdout.
bench_start_listening() {
  local scratch_dir=$1 name=$2
  shift 2
  local fifo="$scratch_dir/$name.fifo" first_line=""
  rm -f "$fifo"
  mkfifo "$fifo"
  "$@" >"$fifo" 2>"$scratch_dir/$name.stderr" &
  BENCH_PID=$!
  bench_pids+=("$BENCH_PID")
  exec {bench_fifo_fd}<"$fifo"
  if ! read -r -t 30 -u "$bench_fifo_fd" first_line || [[ $first_line != "listening on "* ]]; then
    echo "$name did not print 'listening on ADDR' within 30 s (got: '$first_line')" >&2
    cat "$scratch_dir/$name.stderr" >&2 || true
    exec {bench_fifo_fd}<&-
    return 1
  fi
  BENCH_ADDRESS=${first_line#listening on }
  # Keep draining stdout so the server never blocks on a full pipe.
  cat <&"$bench_fifo_fd" >"$scratch_dir/$name.stdout" &
  bench_pids+=("$!")
  exec {bench_fifo_fd}<&-
}

# bench_kvd_supports_leader KVD_COMMAND...: true if `KVD_COMMAND leader --help` exits 0 and
# documents --listen and --data-dir (a stub binary that ignores its arguments does not count).
bench_kvd_supports_leader() {
  local help_text
  help_text=$(timeout 600 "$@" leader --help 2>&1) || return 1
  grep -q -- '--listen' <<<"$help_text" && grep -q -- '--data-dir' <<<"$help_text"
}

# bench_kvd_sync_policy_flag KVD_BINARY: prints "--sync-policy" if kvd leader takes that flag.
bench_kvd_sync_policy_flag() {
  if timeout 60 "$1" leader --help 2>&1 | grep -q -- '--sync-policy'; then
    echo "--sync-policy"
  fi
}

# bench_start_kvd_leader SCRATCH_DIR NAME KVD_BINARY SYNC_POLICY: starts a kvd leader on a free
# loopback port with a fresh data directory; sets BENCH_ADDRESS and BENCH_PID. The caller
# waits for it with kv-bench --wait-ready.
bench_start_kvd_leader() {
  local scratch_dir=$1 name=$2 kvd_binary=$3 sync_policy=$4
  local port data_dir="$scratch_dir/$name-data" policy_arguments=()
  port=$(bench_free_port)
  rm -rf "$data_dir"
  mkdir -p "$data_dir"
  if [[ -n $(bench_kvd_sync_policy_flag "$kvd_binary") ]]; then
    policy_arguments=(--sync-policy "$sync_policy")
  fi
  KVD_SYNC_POLICY=$sync_policy "$kvd_binary" leader --listen "127.0.0.1:$port" \
    --data-dir "$data_dir" "${policy_arguments[@]}" >"$scratch_dir/$name.log" 2>&1 &
  BENCH_PID=$!
  bench_pids+=("$BENCH_PID")
  BENCH_ADDRESS="127.0.0.1:$port"
}

# bench_fsync_stats URL OUT: the node's fdatasync count, time and batch size sum from /metrics,
# as one JSON object.
bench_fsync_stats() {
  curl -sS --max-time 5 "$1/metrics" | python3 -c '
import json, sys
values = {}
for line in sys.stdin:
    if line.startswith(("kvd_wal_fsyncs_total ", "kvd_wal_fsync_seconds_total ",
                        "kvd_wal_fsync_batch_records_sum ")):
        name, value = line.split()
        values[name] = float(value)
json.dump(values, sys.stdout)' >"$2"
}

# wait_writable URL: until a PUT to the node answers 200 (60 s): it has a leader and, with
# --write-quorum 2, its ISR. The probe key is outside the benchmarks' key space.
wait_writable() {
  local deadline=$((SECONDS + 60))
  until [[ $(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -X PUT \
    -H 'Content-Type: application/json' -d '{"value":"ready"}' "$1/key/bench-ready" \
    2>/dev/null) == 200 ]]; do
    if ((SECONDS > deadline)); then
      echo "bench: $1 did not accept a PUT within 60 s" >&2
      return 1
    fi
    sleep 0.1
  done
}
