#!/usr/bin/env bash
# Runs one herald-bench scenario twice, on fresh servers, one after the other: against
# Herald's WebSocket edge (`herald serve`, --protocol ws) and against the Socket.IO 4 peer
# (bench/peers/socketio, --protocol socketio); then prints the two JSON results side by side
# with the ratio Herald / Socket.IO.
#
#   bench/compare.sh --subscribers 10000 --rate 100
#   bench/compare.sh --subscribers 10000 --topics 1000 --rate 5000
#   bench/compare.sh --subscribers 19000 --idle --duration 5
#
# Every option is passed to herald-bench as is. Needs release binaries
# (cargo build --release -p herald-cli -p herald-bench), node and
# `npm ci` in bench/peers/socketio. Everything listens on 127.0.0.1 only; each run is bounded
# by RUN_TIMEOUT seconds (default 60). Results stay in $OUT (default: a fresh temp dir).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
herald=${HERALD:-$root/target/release/herald}
bench=${BENCH:-$root/target/release/herald-bench}
sources=${SOURCES:-127.0.0.2-127.0.0.40}
run_timeout=${RUN_TIMEOUT:-60}
grpc_addr=${GRPC_ADDR:-127.0.0.1:50051}
http_addr=${HTTP_ADDR:-127.0.0.1:8080}
peer_port=${PEER_PORT:-3000}
out=${OUT:-$(mktemp -d /tmp/herald-compare.XXXXXX)}
mkdir -p "$out"

server_pid=
stop_server() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
trap stop_server EXIT

wait_http() { # URL
    for _ in $(seq 100); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

load() {
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg); rustc processes: $(pgrep -c rustc || true)"
}

# Herald: backend and edge in one process, fresh data directory.
data=$(mktemp -d /tmp/herald-compare-data.XXXXXX)
HERALD_LOG=${HERALD_LOG:-warn} "$herald" serve --data-dir "$data" \
    --grpc-addr "$grpc_addr" --http-addr "$http_addr" >"$out/herald.log" 2>&1 &
server_pid=$!
wait_http "http://$http_addr/healthz"
load | tee "$out/herald.load"
timeout "$run_timeout" "$bench" --protocol ws --data-dir "$data" --server "http://$grpc_addr" \
    --ws-url "ws://$http_addr/ws" --source-ips "$sources" --server-pid "$server_pid" "$@" \
    >"$out/herald.out" 2>"$out/herald.err" || echo "herald run failed: $?" >&2
stop_server
rm -rf "$data"
grep -v '^{' "$out/herald.out" || true

# Socket.IO.
node "$root/bench/peers/socketio/server.js" --port "$peer_port" >"$out/socketio.log" 2>&1 &
server_pid=$!
wait_http "http://127.0.0.1:$peer_port/stats"
load | tee "$out/socketio.load"
timeout "$run_timeout" "$bench" --protocol socketio \
    --ws-url "ws://127.0.0.1:$peer_port/socket.io/?EIO=4&transport=websocket" \
    --source-ips "$sources" --server-pid "$server_pid" "$@" \
    >"$out/socketio.out" 2>"$out/socketio.err" || echo "socket.io run failed: $?" >&2
stop_server
grep -v '^{' "$out/socketio.out" || true

# Side by side: the last line of each output is its JSON report.
jq -rn --slurpfile h <(tail -n1 "$out/herald.out") --slurpfile s <(tail -n1 "$out/socketio.out") '
  def ratio(a; b): if (a == null or b == null or b == 0) then "-" else ((a / b * 100 | round) / 100 | tostring) + "×" end;
  ["figure", "herald (ws)", "socket.io", "herald / socket.io"],
  (["deliveries_per_sec", "p50_ms", "p99_ms", "max_ms", "lost", "subscribes_per_sec", "kib_per_stream",
    "server_cpu_percent", "bench_cpu_percent"][] as $k
   | [$k, ($h[0][$k] | tostring), ($s[0][$k] | tostring), ratio($h[0][$k]; $s[0][$k])])
  | @tsv' | column -t -s $'\t' | tee "$out/summary.txt"
echo "results in $out"
