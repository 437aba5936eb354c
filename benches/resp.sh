#!/usr/bin/env bash
# benches/resp.sh: issue 12's benchmarks. kv's RESP door beside redis-server, and the
# text door before and after the RESP change, each pair alternating within one run.
#
#   benches/resp.sh KV [BEFORE]
#   e.g. benches/resp.sh target/release/kv /work/target-pre-resp/release/kv
#
# KV is the kv binary to measure (its `kv bench` is also the load generator); BEFORE,
# if given, is a kv binary from before the RESP change, for the text-door before/after.
# Builds nothing. Starts, on free loopback ports, `KV serve --port 0 --resp-port 0` and
# `redis-server --save '' --appendonly no`, then:
#   1. redis-benchmark -t set,get -n N -r N -c CLIENTS at -P 1 and -P 16 against each,
#      alternating kv/Redis, RUNS times; SET and GET are run separately so each has its
#      own server CPU figure;
#   2. `kv bench --proto redis` at CELLS against each, with SET/GET and with --hash
#      (HSET/HGET on 16 buckets), alternating, RUNS times;
#   3. with BEFORE: benches/ab.sh before=BEFORE after=KV at CELLS (`kv bench`, text).
# Prints markdown tables: medians of requests/s, the median of the per-run kv/Redis
# ratios, server CPU µs per request (utime+stime from /proc/PID/stat, before and
# after each run, divided by the requests of the run) and, for redis-benchmark, the
# load generator's own CPU µs per request: at -P 1 it saturates a core, so what it
# spends per request against each server bounds that server's figure.
#
# Every measurement holds `flock $LOCK` (default /tmp/bench.lock) so that benchmark
# runs of different people on a shared machine do not overlap; the lock is released
# between runs.
#
# Knobs (environment): RUNS=3 N=100000 CLIENTS=50 PIPES="1 16" CELLS="8x1 64x16"
#   DURATION=5 WARMUP=1 KEYS=100000 VALUE_SIZE=32 LOCK=/tmp/bench.lock
#   REDIS_SERVER=redis-server REDIS_BENCHMARK=redis-benchmark OUT=target/resp-bench
#   PARTS="redis-benchmark kv-bench text" (which of 1-3 to run)
# Not part of CI; installs nothing; stops every server it started.
set -euo pipefail

if (($# < 1 || $# > 2)); then
    echo "usage: benches/resp.sh KV [BEFORE]" >&2
    exit 2
fi
KV=$(realpath "$1")
BEFORE=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
. benches/lib.sh

RUNS=${RUNS:-3}
N=${N:-100000}
CLIENTS=${CLIENTS:-50}
PIPES=${PIPES:-"1 16"}
CELLS=${CELLS:-"8x1 64x16"}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-32}
LOCK=${LOCK:-/tmp/bench.lock}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_BENCHMARK=${REDIS_BENCHMARK:-redis-benchmark}
OUT=$(realpath -m "${OUT:-target/resp-bench}")
PARTS=${PARTS:-"redis-benchmark kv-bench text"}
mkdir -p "$OUT"
RAW="$OUT/resp-$(date +%Y%m%d-%H%M%S).jsonl"

for tool in "$KV" "$REDIS_SERVER" "$REDIS_BENCHMARK" flock; do
    command -v "$tool" >/dev/null || { echo "resp.sh: $tool not found" >&2; exit 1; }
done

STARTED=()
cleanup() {
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "resp.sh: $*" >&2; }
TICKS=$(getconf CLK_TCK)
# µs of server CPU per request: ticks, the share of the run that was measured, requests.
cpu_us() {
    awk -v t="$1" -v hz="$TICKS" -v share="$2" -v n="$3" \
        'BEGIN { if (n > 0) printf "%.2f", (t / hz) * share / n * 1e6; else print "nan" }'
}
# Runs a command, then prints "child_ticks N": the CPU ticks (user + system) it used,
# from the cutime and cstime its parent shell recorded when it was waited for.
with_child_ticks() {
    # shellcheck disable=SC2016
    bash -c '"$@"; awk "{ print \"child_ticks\", \$16 + \$17 }" /proc/$$/stat' with_child_ticks "$@"
}
# Its own ratio, to three decimals (overrides benches/lib.sh's).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.3f", a / b; else print "nan" }'; }

# The lock is taken on fd 9 and held for one measurement: CPU before, the load, CPU after.
exec 9>>"$LOCK"
lock() { flock 9; }
unlock() { flock -u 9; }

# kv: the text door and the RESP door, on the same workers.
KV_LOG="$OUT/kv.log"
"$KV" serve --bind 127.0.0.1 --port 0 --resp-port 0 2>"$KV_LOG" &
KV_PID=$!
STARTED+=("$KV_PID")
deadline=$((SECONDS + 10))
until grep -q "RESP door listening on" "$KV_LOG"; do
    ((SECONDS < deadline)) || { log "kv did not start: $(cat "$KV_LOG")"; exit 1; }
    sleep 0.05
done
KV_TEXT=$(grep -o 'kv listening on [0-9.:]*' "$KV_LOG" | head -1 | awk '{ print $4 }')
KV_RESP=$(grep -o 'RESP door listening on [0-9.:]*' "$KV_LOG" | head -1 | awk '{ print $5 }')

REDIS_PORT=$(free_port)
"$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
    >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
STARTED+=("$REDIS_PID")
deadline=$((SECONDS + 10))
until grep -q "Ready to accept connections" "$OUT/redis.log"; do
    ((SECONDS < deadline)) || { log "redis-server did not start: $(cat "$OUT/redis.log")"; exit 1; }
    sleep 0.05
done

declare -A ADDR PID
ADDR[kv]=$KV_RESP
ADDR[redis]=127.0.0.1:$REDIS_PORT
PID[kv]=$KV_PID
PID[redis]=$REDIS_PID
SERVERS=(kv redis)

echo "# The RESP door beside Redis: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kv: $KV (worktree at $(git rev-parse --short HEAD 2>/dev/null || echo "?")), text door $KV_TEXT, RESP door $KV_RESP; $("$REDIS_SERVER" --version | cut -d' ' -f1-3)"
echo

# Prints one row: label, kv ops, redis ops, ratios, kv cpu, redis cpu (space-separated lists).
row() {
    echo "| $1 | $(median <<<"$2") | $(median <<<"$3") | $(median <<<"$4") | $(median <<<"$5") | $(median <<<"$6") |"
}
HEADER="| load | kv req/s | Redis req/s | kv/Redis (median of runs) | kv CPU µs/req | Redis CPU µs/req |
|---|---:|---:|---:|---:|---:|"

if [[ " $PARTS " == *" redis-benchmark "* ]]; then
    declare -A RB_OPS RB_CPU RB_RATIO RB_CLIENT
    for pipe in $PIPES; do
        for ((run = 1; run <= RUNS; run++)); do
            for test in set get; do
                declare -A this=()
                for name in "${SERVERS[@]}"; do
                    lock
                    before=$(cpu_ticks "${PID[$name]}")
                    output=$(with_child_ticks "$REDIS_BENCHMARK" -h 127.0.0.1 -p "${ADDR[$name]##*:}" -t "$test" \
                        -n "$N" -r "$N" -c "$CLIENTS" -P "$pipe" --csv 2>>"$OUT/redis-benchmark.err")
                    after=$(cpu_ticks "${PID[$name]}")
                    unlock
                    csv=$(grep -v '^child_ticks ' <<<"$output" | tail -1)
                    client_ticks=$(sed -n 's/^child_ticks //p' <<<"$output")
                    rps=$(awk -F'","' '{ print $2 }' <<<"$csv")
                    cpu=$(cpu_us $((after - before)) 1 "$N")
                    client_cpu=$(cpu_us "$client_ticks" 1 "$N")
                    this[$name]=$rps
                    RB_OPS[$name,$test,$pipe]+=" $rps"
                    RB_CPU[$name,$test,$pipe]+=" $cpu"
                    RB_CLIENT[$name,$test,$pipe]+=" $client_cpu"
                    echo "{\"part\":\"redis-benchmark\",\"server\":\"$name\",\"test\":\"$test\",\"pipeline\":$pipe,\"run\":$run,\"rps\":$rps,\"cpu_ticks\":$((after - before)),\"client_ticks\":$client_ticks,\"requests\":$N}" >>"$RAW"
                    log "redis-benchmark -t $test -P $pipe run $run $name: $rps req/s, $cpu CPU us/req, client $client_cpu"
                done
                RB_RATIO[$test,$pipe]+=" $(ratio "${this[kv]}" "${this[redis]}")"
            done
        done
    done
    echo "## redis-benchmark -t set,get -n $N -r $N -c $CLIENTS (SET and GET run separately)"
    echo
    echo "${HEADER%%$'\n'*} redis-benchmark CPU µs/req against kv | against Redis |"
    echo "${HEADER#*$'\n'}---:|---:|"
    for pipe in $PIPES; do
        for test in set get; do
            echo "$(row "${test^^} -P $pipe" "${RB_OPS[kv,$test,$pipe]}" "${RB_OPS[redis,$test,$pipe]}" \
                "${RB_RATIO[$test,$pipe]}" "${RB_CPU[kv,$test,$pipe]}" "${RB_CPU[redis,$test,$pipe]}")" \
                "$(median <<<"${RB_CLIENT[kv,$test,$pipe]}") | $(median <<<"${RB_CLIENT[redis,$test,$pipe]}") |"
        done
    done
    echo "(median of $RUNS runs, kv and Redis alternating; redis-benchmark's own CPU is its user+system"
    echo "time as its parent saw it on exit; raw: $RAW)"
    echo
fi

if [[ " $PARTS " == *" kv-bench "* ]]; then
    MODES=("strings" "hash")
    mode_flags() { [[ $1 == hash ]] && echo "--hash" || true; }
    # Every key written once in each mode, so GETs find values.
    for name in "${SERVERS[@]}"; do
        for mode in "${MODES[@]}"; do
            # shellcheck disable=SC2046
            "$KV" bench --addr "${ADDR[$name]}" --proto redis $(mode_flags "$mode") --fill --keys "$KEYS" \
                --value-size "$VALUE_SIZE" --conns 4 --pipeline 16 --duration 60 >/dev/null
        done
    done
    declare -A KB_OPS KB_CPU KB_RATIO KB_P99
    share=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { print d / (d + w) }')
    for cell in $CELLS; do
        conns=${cell%x*}
        pipeline=${cell#*x}
        for ((run = 1; run <= RUNS; run++)); do
            for mode in "${MODES[@]}"; do
                declare -A this=()
                for name in "${SERVERS[@]}"; do
                    lock
                    before=$(cpu_ticks "${PID[$name]}")
                    # shellcheck disable=SC2046
                    json=$("$KV" bench --addr "${ADDR[$name]}" --proto redis $(mode_flags "$mode") \
                        --conns "$conns" --pipeline "$pipeline" --duration "$DURATION" --warmup "$WARMUP" \
                        --keys "$KEYS" --value-size "$VALUE_SIZE" --json 2>>"$OUT/kv-bench.err") ||
                        log "kv bench against $name ($mode) reported errors: see $OUT/kv-bench.err"
                    after=$(cpu_ticks "${PID[$name]}")
                    unlock
                    ops=$(field "$json" ops_per_sec)
                    cpu=$(cpu_us $((after - before)) "$share" "$(field "$json" ops)")
                    this[$name]=$ops
                    KB_OPS[$name,$mode,$cell]+=" $ops"
                    KB_CPU[$name,$mode,$cell]+=" $cpu"
                    echo "{\"part\":\"kv-bench\",\"server\":\"$name\",\"mode\":\"$mode\",\"cell\":\"$cell\",\"run\":$run,\"cpu_ticks\":$((after - before)),\"result\":$json}" >>"$RAW"
                    log "kv bench --proto redis $mode $cell run $run $name: $ops ops/s, p99 $(field "$json" p99_us) us, $cpu CPU us/req"
                done
                KB_RATIO[$mode,$cell]+=" $(ratio "${this[kv]}" "${this[redis]}")"
            done
        done
    done
    echo "## kv bench --proto redis [--hash] --conns C --pipeline P --duration $DURATION --warmup $WARMUP --keys $KEYS --value-size $VALUE_SIZE (50% GET)"
    echo
    echo "$HEADER"
    for cell in $CELLS; do
        for mode in "${MODES[@]}"; do
            label="$cell $([[ $mode == hash ]] && echo "HSET/HGET, 16 buckets" || echo "SET/GET")"
            row "$label" "${KB_OPS[kv,$mode,$cell]}" "${KB_OPS[redis,$mode,$cell]}" "${KB_RATIO[$mode,$cell]}" \
                "${KB_CPU[kv,$mode,$cell]}" "${KB_CPU[redis,$mode,$cell]}"
        done
    done
    echo "(median of $RUNS runs, kv and Redis alternating; CPU scaled to the measured share of each run; raw: $RAW)"
    echo
fi

# The servers of parts 1-2 are not needed for part 3; stop them so they cost nothing.
cleanup
STARTED=()

if [[ " $PARTS " == *" text "* && -n $BEFORE ]]; then
    echo "## The text door before and after: benches/ab.sh before=BEFORE after=KV, CELLS=\"$CELLS\""
    echo
    # ab.sh alternates the binaries within each cell; it is one measurement, so it
    # holds the lock throughout.
    lock
    CELLS=$CELLS RUNS=$RUNS DURATION=$DURATION WARMUP=$WARMUP KEYS=$KEYS VALUE_SIZE=$VALUE_SIZE \
        BENCH=$KV OUT="$OUT/ab" benches/ab.sh before="$BEFORE" after="$KV"
    unlock
    echo
fi
