#!/usr/bin/env bash
# benches/cost.sh: what a request costs the server (issue 15): CPU microseconds and
# context switches per request, from the server process's own counters, for kv
# builds and Redis under the same closed-loop `kv bench` load, in one run.
#
#   benches/cost.sh [NAME=KV_BINARY ...] [redis]
#   default: kv=target/release/kv redis
#   e.g. benches/cost.sh before=/tmp/kv-before after=target/release/kv redis
#
# For each cell (connections x pipeline depth) and each run, the servers take turns
# (alternating within the cell). Each run is one `kv bench --warmup W --duration D`
# (`--proto redis` against Redis: the same load generator and the same load for
# both). While it runs, the script reads the server's counters twice, MARGIN seconds
# after the warm-up ends and MARGIN seconds before the run ends, so that every
# connection thread is alive at both readings:
#   - CPU: utime + stime of the whole process (/proc/PID/stat fields 14-15; these
#     include threads that have exited);
#   - context switches: voluntary + nonvoluntary of every thread
#     (/proc/PID/task/*/status), per thread, grouped by thread name (kv-conn,
#     kv-worker, redis-server, ...). A thread present at the first reading and gone at
#     the second would lose its counts: the script counts such threads and prints them
#     ("lost"); with the window inside the run there should be none. A thread born in
#     the window counts whole.
#   - requests in the window: kv bench's measured ops/s times the window's length
#     (the load is steady; kv bench's own request count covers its whole run).
# ops/s and p99 are kv bench's own, over its whole measured run. Every figure is the
# median of RUNS runs. Then, unless IDLE=0, on fresh servers: CPU ticks over
# IDLE_SECONDS with IDLE_CONNS idle connections open, and RSS per idle connection
# (benches/idle_connections.py with IDLE_RSS_CONNS connections).
#
# Knobs (environment):
#   CELLS="1x1 8x1 64x1 1x16 8x16 64x16" RUNS=3 DURATION=6 WARMUP=1 MARGIN=1
#   KEYS=100000 VALUE_SIZE=32 GET_RATIO=0.5 BENCH=target/release/kv (load generator)
#   IDLE=1 IDLE_CONNS=100 IDLE_SECONDS=10 IDLE_RSS_CONNS=10000 OUT=target/cost
# On a shared machine wrap it: flock /tmp/bench.lock benches/cost.sh ...
# Not part of CI; installs nothing; every server listens on 127.0.0.1 and is stopped
# on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

CELLS=${CELLS:-"1x1 8x1 64x1 1x16 8x16 64x16"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-1}
MARGIN=${MARGIN:-1}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-32}
GET_RATIO=${GET_RATIO:-0.5}
BENCH=${BENCH:-target/release/kv}
IDLE=${IDLE:-1}
IDLE_CONNS=${IDLE_CONNS:-100}
IDLE_SECONDS=${IDLE_SECONDS:-10}
IDLE_RSS_CONNS=${IDLE_RSS_CONNS:-10000}
OUT=${OUT:-target/cost}
# Seconds a server has to start listening.
START_TIMEOUT=10

log() { echo "cost: $*" >&2; }

mkdir -p "$OUT"
RAW="$OUT/cost-$(date +%Y%m%d-%H%M%S).jsonl"
(($# > 0)) || set -- kv=target/release/kv redis
if [[ ! -x $BENCH ]] || [[ " $* " == *" kv=target/release/kv "* ]]; then
    cargo build --release --quiet
fi

STARTED=()
cleanup() {
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TICKS=$(getconf CLK_TCK)

# start_server NAME: starts it on a free loopback port; sets PID and ADDR.
declare -A BINARY
start_server() {
    local name=$1 port
    port=$(free_port)
    if [[ $name == redis ]]; then
        redis-server --save '' --appendonly no --port "$port" --bind 127.0.0.1 --logfile "" \
            --maxclients 20000 >>"$OUT/redis.log" 2>&1 &
    else
        "${BINARY[$name]}" serve --port "$port" --max-connections 20000 2>>"$OUT/$name.log" &
    fi
    PID=$!
    STARTED+=("$PID")
    ADDR="127.0.0.1:$port"
    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$port"; do
        kill -0 "$PID" 2>/dev/null || { log "$name exited before listening"; exit 1; }
        ((SECONDS < deadline)) || { log "$name not listening after ${START_TIMEOUT}s"; exit 1; }
        sleep 0.05
    done
}

stop_server() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

proto_of() { [[ $1 == redis ]] && echo redis || echo kv; }

# snapshot PID: one line per thread, "tid kind voluntary nonvoluntary", kind being the
# thread's name without a trailing -number (kv-conn-17 -> kv-conn). One cat and one awk,
# so that it is quick and each status file is read whole at once.
snapshot() {
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^Name:/ { name = $2; sub(/-[0-9]+$/, "", name) }
        /^Pid:/ { tid = $2 } /^voluntary_ctxt_switches:/ { vol = $2 }
        /^nonvoluntary_ctxt_switches:/ { print tid, name, vol, $2 }'
}

# switches BEFORE AFTER: per kind, "kind voluntary nonvoluntary" in the window, and a
# last line "lost N" for threads gone before the second reading.
switches() {
    awk 'NR == FNR { v[$1] = $3; n[$1] = $4; next }
        { kind[$2] = 1; dv[$2] += $3 - ($1 in v ? v[$1] : 0); dn[$2] += $4 - ($1 in n ? n[$1] : 0); seen[$1] = 1 }
        END { for (k in kind) print k, dv[k], dn[k]; lost = 0; for (t in v) if (!(t in seen)) lost++; print "lost", lost }' \
        "$1" "$2"
}

# measure NAME CONNS PIPELINE RUN: one run against the running server NAME.
declare -A OPS P99 CPU CS VOL KINDS LOST
measure() {
    local name=$1 conns=$2 pipeline=$3 run=$4 pid=${SERVER_PID[$1]} addr=${SERVER_ADDR[$1]}
    local json_file="$OUT/run.json" t0 t1 t2 c1 c2 before="$OUT/before.tasks" after="$OUT/after.tasks"
    "$BENCH" bench --addr "$addr" --proto "$(proto_of "$name")" --conns "$conns" --pipeline "$pipeline" \
        --duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" \
        --get-ratio "$GET_RATIO" --json >"$json_file" 2>>"$OUT/bench-errors.log" &
    local bench_pid=$!
    t0=$EPOCHREALTIME
    sleep "$(awk -v w="$WARMUP" -v m="$MARGIN" 'BEGIN { print w + m }')"
    c1=$(cpu_ticks "$pid")
    snapshot "$pid" >"$before"
    t1=$EPOCHREALTIME
    sleep "$(awk -v d="$DURATION" -v m="$MARGIN" -v t0="$t0" -v t1="$t1" -v w="$WARMUP" \
        'BEGIN { s = t0 + w + d - m - t1; print (s > 0 ? s : 0) }')"
    c2=$(cpu_ticks "$pid")
    snapshot "$pid" >"$after"
    t2=$EPOCHREALTIME
    wait "$bench_pid" || log "kv bench against $name reported errors (see $OUT/bench-errors.log)"
    local json ops window requests summary
    json=$(cat "$json_file")
    ops=$(field "$json" ops_per_sec)
    window=$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')
    requests=$(awk -v o="${ops:-0}" -v w="$window" 'BEGIN { print o * w }')
    summary=$(switches "$before" "$after")
    local cpu_us cs vol kinds lost
    cpu_us=$(awk -v t=$((c2 - c1)) -v hz="$TICKS" -v n="$requests" 'BEGIN { if (n > 0) printf "%.2f", t / hz / n * 1e6; else print "nan" }')
    read -r cs vol lost < <(awk -v n="$requests" '$1 == "lost" { lost = $2; next } { v += $2; a += $2 + $3 }
        END { if (n > 0) printf "%.3f %.3f %d\n", a / n, v / n, lost; else print "nan nan", lost }' <<<"$summary")
    kinds=$(awk -v n="$requests" '$1 != "lost" && n > 0 && ($2 + $3) / n >= 0.005 {
        printf "%s%s %.2f (%.2f vol.)", sep, $1, ($2 + $3) / n, $2 / n; sep = ", " }' \
        <<<"$(sort <<<"$summary")")
    local key="$name,$conns,$pipeline"
    OPS[$key]+=" ${ops:-nan}"
    P99[$key]+=" $(field "$json" p99_us)"
    CPU[$key]+=" $cpu_us"
    CS[$key]+=" $cs"
    VOL[$key]+=" $vol"
    KINDS[$key]+="$cs=$kinds;"
    LOST[$key]=$((${LOST[$key]:-0} + lost))
    echo "{\"server\":\"$name\",\"cell\":\"${conns}x$pipeline\",\"run\":$run,\"window_s\":$window,\"cpu_ticks\":$((c2 - c1)),\"switches\":\"$(tr '\n' ';' <<<"$summary")\",\"result\":$json}" >>"$RAW"
    log "${conns}x$pipeline run $run $name: ${ops:-?} ops/s, p99 $(field "$json" p99_us) us, $cpu_us CPU us/req," \
        "$cs switches/req ($vol voluntary; $kinds), lost threads $lost, mismatches $(field "$json" mismatches)"
}

# ---------------------------------------------------------------------------------
NAMES=()
for spec in "$@"; do
    if [[ $spec == redis ]]; then
        command -v redis-server >/dev/null || { log "redis-server not installed: skipped"; continue; }
        NAMES+=(redis)
    else
        BINARY[${spec%%=*}]=${spec#*=}
        NAMES+=("${spec%%=*}")
    fi
done

echo "# Cost per request: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
for name in "${NAMES[@]}"; do
    if [[ $name == redis ]]; then echo "  redis: $(redis-server --version)"; else echo "  $name: ${BINARY[$name]}"; fi
done
echo "load: $BENCH bench --conns C --pipeline P --duration $DURATION --warmup $WARMUP --keys $KEYS" \
    "--value-size $VALUE_SIZE --get-ratio $GET_RATIO (--proto redis for Redis); counters over" \
    "[warm-up + $MARGIN s, end - $MARGIN s]; median of $RUNS alternating runs"
echo

declare -A SERVER_PID SERVER_ADDR
for name in "${NAMES[@]}"; do
    start_server "$name"
    SERVER_PID[$name]=$PID
    SERVER_ADDR[$name]=$ADDR
    json=$("$BENCH" bench --addr "$ADDR" --proto "$(proto_of "$name")" --fill --keys "$KEYS" \
        --value-size "$VALUE_SIZE" --conns 4 --pipeline 16 --duration 120 --json 2>>"$OUT/bench-errors.log")
    log "$name on $ADDR (pid $PID), $(field "$json" sets) keys written"
done

for cell in $CELLS; do
    conns=${cell%x*}
    pipeline=${cell#*x}
    for ((run = 1; run <= RUNS; run++)); do
        for name in "${NAMES[@]}"; do
            measure "$name" "$conns" "$pipeline" "$run"
        done
    done
done
for name in "${NAMES[@]}"; do stop_server "${SERVER_PID[$name]}"; done

REF=${NAMES[-1]}
echo "## Per request (median of $RUNS; ratios: each server's median over $REF's)"
echo
echo "| cell | server | ops/s | p99 us | CPU us/request | context switches/request | of which voluntary | by thread (the median run) | ops/s / $REF | CPU / $REF | switches / $REF |"
echo "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"
for cell in $CELLS; do
    conns=${cell%x*}
    pipeline=${cell#*x}
    ref="$REF,$conns,$pipeline"
    for name in "${NAMES[@]}"; do
        key="$name,$conns,$pipeline"
        ops=$(median <<<"${OPS[$key]}")
        cpu=$(median <<<"${CPU[$key]}")
        cs=$(median <<<"${CS[$key]}")
        # The breakdown of the run whose switches/request are the median.
        kinds=${KINDS[$key]#*"$cs="}
        kinds=${kinds%%;*}
        lost=${LOST[$key]}
        ((lost == 0)) || kinds+=" ($lost threads lost)"
        echo "| $cell | $name | $ops | $(median <<<"${P99[$key]}") | $cpu | $cs | $(median <<<"${VOL[$key]}") | $kinds |" \
            "$(ratio "$ops" "$(median <<<"${OPS[$ref]}")") | $(ratio "$cpu" "$(median <<<"${CPU[$ref]}")") |" \
            "$(ratio "$cs" "$(median <<<"${CS[$ref]}")") |"
    done
done
echo

((IDLE != 0)) || { log "raw results: $RAW"; exit 0; }

# ---------------------------------------------------------------------------------
# Idle: CPU with IDLE_CONNS idle connections, then RSS per idle connection.
echo "## Idle"
echo
echo "| server | CPU ticks over ${IDLE_SECONDS} s, $IDLE_CONNS idle connections | threads | RSS per idle connection (KiB, $IDLE_RSS_CONNS connections) |"
echo "|---|---:|---:|---:|"
for name in "${NAMES[@]}"; do
    start_server "$name"
    fifo="$OUT/idle.ready"
    rm -f "$fifo"
    python3 -c '
import socket, sys, time
addr, n, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, port = addr.rsplit(":", 1)
conns = []
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    s.sendall(b"PING\r\n")
    s.recv(64)
    conns.append(s)
open(ready, "w").close()
time.sleep(3600)
' "$ADDR" "$IDLE_CONNS" "$fifo" &
    holder=$!
    STARTED+=("$holder")
    until [[ -e $fifo ]]; do sleep 0.1; done
    sleep 1
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$PID/status")
    before=$(cpu_ticks "$PID")
    sleep "$IDLE_SECONDS"
    after=$(cpu_ticks "$PID")
    stop_server "$holder"
    stop_server "$PID"
    if [[ $name == redis ]]; then
        rss=$(python3 benches/idle_connections.py --servers redis --connections "$IDLE_RSS_CONNS" | awk '$1 == "redis" { print $7 }')
    else
        rss=$(python3 benches/idle_connections.py --servers kv --kv-binary "${BINARY[$name]}" \
            --connections "$IDLE_RSS_CONNS" | awk '$1 == "kv" { print $7 }')
    fi
    echo "{\"server\":\"$name\",\"idle_ticks\":$((after - before)),\"idle_seconds\":$IDLE_SECONDS,\"idle_conns\":$IDLE_CONNS,\"rss_per_conn_kib\":${rss:-null}}" >>"$RAW"
    echo "| $name | $((after - before)) | $threads | ${rss:-?} |"
done
echo
log "raw results: $RAW"
