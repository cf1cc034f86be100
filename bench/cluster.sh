#!/usr/bin/env bash
# Fan-out through a Redis broker: starts a redis-server (its own port, no persistence) and
# Herald backends (`herald serve --no-edge`, fresh data directories, one HS256 secret), runs
# one herald-bench scenario over gRPC against them, stops everything it started (also when a
# step fails or the script is interrupted) and prints one summary line.
#
#   bench/cluster.sh two        --subscribers 10000 --rate 100 --duration 10 --warmup 3
#   bench/cluster.sh one-redis  --subscribers 10000 --rate 100 --duration 10 --warmup 3
#   bench/cluster.sh one-memory --subscribers 10000 --saturate --max-lag 100 --duration 10 --warmup 3
#
# Layouts:
#   two         backend A and backend B on one Redis; subscribers on A, publishers on B, so
#               every event crosses Redis (PUBLISH by B's script, pub/sub message to A).
#   one-redis   backend A alone on Redis; subscribers and publishers on A.
#   one-memory  backend A alone with the in-memory broker (no Redis), as in "Fan-out over gRPC".
#
# Every other option is passed to herald-bench as is. The bench reports the CPU of backend A
# (--server-pid), of backend B and Redis (--watch-pid) and its own, over the measured window;
# this script adds Redis's counters (INFO stats and commandstats) from before to after the
# run, per acknowledged publish, and Redis CPU per 100,000 deliveries/s.
#
# Needs release binaries (cargo build --release -p herald-cli -p herald-bench), redis-server
# and redis-cli (Redis 7), curl and jq. Everything listens on 127.0.0.1 only. Environment:
# REDIS_PORT (6391), GRPC_A / GRPC_B (127.0.0.1:50071 / :50072), METRICS_A / METRICS_B
# (127.0.0.1:19471 / :19472), RUN_TIMEOUT (seconds, 120), THREADS_AT (seconds after the
# bench starts at which per-thread CPU of every process is sampled for 5 s; unset: not
# sampled), OUT (results directory, default a fresh temp dir), HERALD, BENCH (binaries).
set -euo pipefail

usage() {
    echo "usage: $0 two|one-redis|one-memory [herald-bench options…]" >&2
    exit 2
}
[[ $# -ge 1 ]] || usage
layout=$1
shift
case $layout in
two | one-redis | one-memory) ;;
*) usage ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
herald=${HERALD:-$root/target/release/herald}
bench=${BENCH:-$root/target/release/herald-bench}
redis_port=${REDIS_PORT:-6391}
grpc_a=${GRPC_A:-127.0.0.1:50071}
grpc_b=${GRPC_B:-127.0.0.1:50072}
metrics_a=${METRICS_A:-127.0.0.1:19471}
metrics_b=${METRICS_B:-127.0.0.1:19472}
run_timeout=${RUN_TIMEOUT:-120}
out=${OUT:-$(mktemp -d /tmp/herald-cluster.XXXXXX)}
mkdir -p "$out"
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
redis_url="redis://127.0.0.1:$redis_port"

# Everything started, in start order; stopped in reverse order.
pids=()
dirs=()
cleanup() {
    local status=$?
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        wait "${pids[i]}" 2>/dev/null || true
    done
    for dir in "${dirs[@]}"; do
        rm -rf "$dir"
    done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_until() { # WHAT COMMAND…: up to 10 s
    local what=$1
    shift
    for _ in $(seq 100); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$what did not come up; see $out" >&2
    return 1
}

grpc_open() { # HOST:PORT
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}

redis_pid=
if [[ $layout != one-memory ]]; then
    redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
        --daemonize no --logfile "$out/redis.log" &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_until "redis-server on port $redis_port" redis-cli -p "$redis_port" ping
fi

start_backend() { # NAME GRPC_ADDR METRICS_ADDR; sets backend_pid
    local data
    data=$(mktemp -d /tmp/herald-cluster-data.XXXXXX)
    dirs+=("$data")
    local broker=()
    [[ $layout == one-memory ]] || broker=(--broker "$redis_url")
    HERALD_LOG=${HERALD_LOG:-warn} "$herald" serve --no-edge --data-dir "$data" \
        --grpc-addr "$2" --metrics-addr "$3" --hs256-secret "$secret" "${broker[@]}" \
        >"$out/$1.log" 2>&1 &
    backend_pid=$!
    pids+=("$backend_pid")
    wait_until "backend $1 (/metrics on $3)" curl -fs -o /dev/null "http://$3/metrics"
    wait_until "backend $1 (gRPC on $2)" grpc_open "$2"
}

start_backend a "$grpc_a" "$metrics_a"
pid_a=$backend_pid
pid_b=
if [[ $layout == two ]]; then
    start_backend b "$grpc_b" "$metrics_b"
    pid_b=$backend_pid
fi

args=(--secret "$secret" --server "http://$grpc_a" --server-pid "$pid_a")
[[ -z $pid_b ]] || args+=(--publish-server "http://$grpc_b" --watch-pid "backend-b=$pid_b")
[[ -z $redis_pid ]] || args+=(--watch-pid "redis=$redis_pid")

redis_info() { # FILE: INFO stats and commandstats as key=value lines
    [[ -n $redis_pid ]] || return 0
    redis-cli -p "$redis_port" info stats | tr -d '\r' | grep -E '^[a-z_]+:[0-9]+$' |
        sed 's/:/=/' >"$1"
    redis-cli -p "$redis_port" info commandstats | tr -d '\r' |
        sed -nE 's/^cmdstat_([a-z|]+):calls=([0-9]+).*/cmd_\1=\2/p' | tr '|' '_' >>"$1"
}

# Per-thread CPU over 5 s: `process thread percent` lines (utime+stime from
# /proc/PID/task/TID/stat, clock ticks of 1/CLK_TCK s).
thread_cpu() { # NAME=PID…
    local hz
    hz=$(getconf CLK_TCK)
    snap() {
        local spec name pid
        for spec in "$@"; do
            name=${spec%%=*} pid=${spec##*=}
            for stat in /proc/"$pid"/task/*/stat; do
                # The thread name is in parentheses and may hold spaces: cut after ") ".
                { read -r line <"$stat" && echo "$name ${stat//\//_} $line"; } 2>/dev/null || true
            done
        done | awk '{ n = $0; sub(/^[^(]*\(/, "", n); comm = n; sub(/\).*/, "", comm);
                      rest = n; sub(/^.*\) /, "", rest); split(rest, f, " ");
                      gsub(/ /, "_", comm); print $1, $2, comm, f[12] + f[13] }'
    }
    snap "$@" >"$out/threads.0"
    sleep 5
    snap "$@" >"$out/threads.1"
    awk -v hz="$hz" 'NR == FNR { before[$2] = $4; next }
        ($2 in before) { pct = ($4 - before[$2]) * 100 / hz / 5; if (pct >= 1) printf "%s %s %.1f%%\n", $1, $3, pct }' \
        "$out/threads.0" "$out/threads.1" | sort -k1,1 -k3,3nr >"$out/threads.txt"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg); rustc processes: $(pgrep -c rustc || true)" |
    tee "$out/load.txt"
redis_info "$out/redis.before"
timeout "$run_timeout" "$bench" "${args[@]}" "$@" >"$out/bench.out" 2>"$out/bench.err" &
bench_timeout_pid=$!
pids+=("$bench_timeout_pid")
if [[ -n ${THREADS_AT:-} ]]; then
    sleep "$THREADS_AT"
    bench_pid=$(pgrep -P "$bench_timeout_pid" | head -n1 || true)
    watch=("backend-a=$pid_a")
    [[ -z $pid_b ]] || watch+=("backend-b=$pid_b")
    [[ -z $redis_pid ]] || watch+=("redis=$redis_pid")
    [[ -z $bench_pid ]] || watch+=("bench=$bench_pid")
    thread_cpu "${watch[@]}"
fi
bench_status=0
wait "$bench_timeout_pid" || bench_status=$?
redis_info "$out/redis.after"
if [[ $bench_status -ne 0 ]]; then
    echo "herald-bench failed ($bench_status):" >&2
    tail -n 20 "$out/bench.err" >&2
    exit 1
fi
grep -v '^{' "$out/bench.out" || true
tail -n1 "$out/bench.out" >"$out/report.json"

# Redis's counters per acknowledged publish, over the whole run (opening, warm-up, window,
# drain); a publish is one script call (EVALSHA) that XADDs and PUBLISHes.
redis_json=null
if [[ -n $redis_pid ]]; then
    redis_json=$(awk -F= 'NR == FNR { before[$1] = $2; next } { printf "%s\"%s\":%d", sep, $1, $2 - before[$1]; sep = "," }
        BEGIN { printf "{" } END { print "}" }' "$out/redis.before" "$out/redis.after")
fi
echo "$redis_json" >"$out/redis.json"
jq -c --argjson redis "$redis_json" --arg layout "$layout" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" '
  def r(x): (x * 10 | round) / 10;
  . as $b
  | {layout: $layout, load_after: $load,
     deliveries_per_sec, publishes_per_sec, p50_ms, p99_ms, max_ms, lost, duplicated, reordered,
     drained, server_closes, cpu_backend_a: .server_cpu_percent,
     cpu_backend_b: .watched_cpu_percent["backend-b"], cpu_redis: .watched_cpu_percent.redis,
     cpu_bench: .bench_cpu_percent}
  + (if $redis == null then {} else
      {redis_cpu_per_100k_deliveries_per_sec:
         (if .deliveries_per_sec > 0 and $b.watched_cpu_percent.redis != null
          then r($b.watched_cpu_percent.redis / ($b.deliveries_per_sec / 100000)) else null end),
       redis_commands_per_publish: r($redis.total_commands_processed / ([$b.published, 1] | max)),
       redis_publish_calls_per_publish: r(($redis.cmd_publish // 0) / ([$b.published, 1] | max)),
       redis_pubsub_messages_per_sec_in_window:
         r(($redis.cmd_publish // 0) / ([$b.published, 1] | max) * $b.publishes_per_sec),
       redis_output_bytes_per_publish:
         r($redis.total_net_output_bytes / ([$b.published, 1] | max))}
    end)' "$out/report.json" | tee "$out/summary.json"
[[ ! -s $out/threads.txt ]] || { echo "per-thread CPU (5 s from THREADS_AT=$THREADS_AT):"; cat "$out/threads.txt"; }
echo "results in $out"
