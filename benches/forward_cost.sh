#!/usr/bin/env bash
# benches/forward_cost.sh: what forwarding costs (issue 15). Two kv nodes as separate
# processes form a two-node cluster; `kv bench` loads node A with buckets A owns (local)
# and with buckets B owns (each request forwarded by A to B and the reply relayed).
# Reports throughput, forwarded/local, and server CPU microseconds and context
# switches per request, for each node, from the processes' own counters.
#
#   benches/forward_cost.sh KV_BINARY
#   e.g. RUNS=3 benches/forward_cost.sh /work/target-fwd/release/kv
#
# KV_BINARY runs both nodes and is the load generator (`kv bench`). Builds nothing.
# The cluster file (written to OUT) gives node a the buckets whose names start with a-m
# and node b those with n-z, on two free ports of 127.0.0.1. The load picks its bucket
# names with `kv bench --bucket-prefix`: LOCAL_PREFIX (a0, a1, ... owned by a) or
# FORWARD_PREFIX (n0, n1, ... owned by b), always sent to node a. Before measuring,
# every key of both bucket sets is written once through node a (`kv bench --fill`).
#
# For each cell (connections x pipeline depth) and each run, local and forwarded take
# turns. Each turn is one `kv bench --warmup W --duration D`; while it runs the script
# reads both nodes' counters MARGIN seconds after the warm-up ends and MARGIN seconds
# before the run ends (the method of benches/cost.sh, so every connection thread is
# alive at both readings):
#   - CPU: utime + stime of the whole process (/proc/PID/stat fields 14-15), in ticks
#     of getconf CLK_TCK;
#   - context switches: voluntary + nonvoluntary of every thread
#     (/proc/PID/task/*/status); a thread gone before the second reading is counted as
#     "lost" (there should be none);
#   - requests in the window: kv bench's ops/s times the window's length.
# CPU/request is node a's, node b's and their sum; in the local turns node b is idle
# and its column shows what an idle peer costs. As a check that the load went where
# it was meant to, node a's STATS forwarded_total and node b's commands_total are read
# before and after each turn (outside the window) and logged with the raw results.
# Every figure is the median of RUNS runs; forwarded/local is the median of the
# per-run ratios (each run's local and forwarded turns are neighbours in time).
#
# Every measurement (the fill and each turn) holds `flock $LOCK` (default
# /tmp/bench.lock) so that benchmark runs of different people on a shared machine do
# not overlap; the lock is released between turns. So do not wrap the whole script in
# `flock` on the same file: it would wait for itself. LOCK= (empty) takes no lock.
#
# Knobs (environment):
#   CELLS="8x1 8x16" RUNS=3 DURATION=5 WARMUP=1 MARGIN=1 KEYS=100000 VALUE_SIZE=32
#   GET_RATIO=0.5 BUCKETS=16 WORKERS= (kv serve --workers; empty: kv's default)
#   LOCAL_PREFIX=a FORWARD_PREFIX=n LOCK=/tmp/bench.lock OUT=target/forward-cost
# Not part of CI; installs nothing; both nodes listen on 127.0.0.1 only and are
# stopped on exit.
set -euo pipefail

if (($# != 1)); then
    echo "usage: benches/forward_cost.sh KV_BINARY" >&2
    exit 2
fi
KV=$(realpath "$1")
cd "$(dirname "$0")/.."
. benches/lib.sh

CELLS=${CELLS:-"8x1 8x16"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
MARGIN=${MARGIN:-1}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-32}
GET_RATIO=${GET_RATIO:-0.5}
BUCKETS=${BUCKETS:-16}
WORKERS=${WORKERS:-}
LOCAL_PREFIX=${LOCAL_PREFIX:-a}
FORWARD_PREFIX=${FORWARD_PREFIX:-n}
LOCK=${LOCK-/tmp/bench.lock}
OUT=$(realpath -m "${OUT:-target/forward-cost}")
# Seconds a node has to start listening.
START_TIMEOUT=10

log() { echo "forward_cost: $*" >&2; }

for tool in "$KV" python3 flock; do
    command -v "$tool" >/dev/null || { log "$tool not found"; exit 1; }
done
# The cluster file's ranges: a-m for node a, n-z for node b.
case $LOCAL_PREFIX in [a-m]*) ;; *) log "LOCAL_PREFIX must start with a-m (node a's)"; exit 2 ;; esac
case $FORWARD_PREFIX in [n-z]*) ;; *) log "FORWARD_PREFIX must start with n-z (node b's)"; exit 2 ;; esac
((MARGIN * 2 < DURATION)) || { log "DURATION must be more than 2 x MARGIN"; exit 2; }

mkdir -p "$OUT"
RAW="$OUT/forward-cost-$(date +%Y%m%d-%H%M%S).jsonl"

STARTED=()
cleanup() {
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The lock is taken on fd 9 and held for one measurement.
if [[ -n $LOCK ]]; then
    exec 9>>"$LOCK"
    lock() { flock 9; }
    unlock() { flock -u 9; }
else
    lock() { :; }
    unlock() { :; }
fi

# Two distinct free ports (benches/lib.sh's free_port: below the ephemeral range, where
# the kernel's picks for client sockets, this run's or anyone's, cannot take them).
free_ports() {
    local a b tries=0
    a=$(free_port)
    b=$(free_port)
    while [[ $b == "$a" ]] && ((tries++ < 100)); do b=$(free_port); done
    echo "$a $b"
}
TICKS=$(getconf CLK_TCK)
per_request() { awk -v x="$1" -v n="$2" -v scale="$3" -v fmt="$4" 'BEGIN { if (n > 0) printf fmt, x * scale / n; else print "nan" }'; }

# stat_of PORT NAME: the value of one STATS line of the node on PORT.
stat_of() {
    local line value=""
    exec 8<>"/dev/tcp/127.0.0.1/$1"
    printf 'STATS\r\n' >&8
    while IFS= read -r -t 5 line <&8; do
        line=${line%$'\r'}
        [[ $line == OK ]] && break
        [[ $line == "$2 "* ]] && value=${line#* }
    done
    exec 8<&-
    echo "${value:-nan}"
}

# switches PID: voluntary and nonvoluntary switches of every thread, one line per
# thread, "tid name voluntary nonvoluntary" (name without its -number).
snapshot() {
    cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^Name:/ { name = $2; sub(/-[0-9]+$/, "", name) }
        /^Pid:/ { tid = $2 } /^voluntary_ctxt_switches:/ { vol = $2 }
        /^nonvoluntary_ctxt_switches:/ { print tid, name, vol, $2 }'
}
# delta BEFORE AFTER: "switches lost by-thread", the switches of the window over every
# thread, the threads gone before the second reading, and per thread name
# "name:switches" (comma-separated).
delta() {
    awk 'NR == FNR { s[$1] = $3 + $4; next }
        { d = $3 + $4 - ($1 in s ? s[$1] : 0); total += d; kind[$2] += d; seen[$1] = 1 }
        END { lost = 0; for (t in s) if (!(t in seen)) lost++
              sep = ""; by = ""; for (k in kind) if (kind[k] > 0) { by = by sep k ":" kind[k]; sep = "," }
              print total + 0, lost, (by == "" ? "-" : by) }' "$1" "$2"
}

# start_node NAME PORT: starts node NAME of the cluster file; sets PID.
start_node() {
    local name=$1 port=$2 workers=()
    [[ -z $WORKERS ]] || workers=(--workers "$WORKERS")
    "$KV" serve --cluster "$CLUSTER" --node "$name" "${workers[@]}" --max-connections 20000 \
        2>>"$OUT/$name.log" &
    PID=$!
    STARTED+=("$PID")
    local deadline=$((SECONDS + START_TIMEOUT)) tries=0
    until port_open "$port"; do
        kill -0 "$PID" 2>/dev/null || { log "node $name exited before listening: $(tail -3 "$OUT/$name.log")"; exit 1; }
        ((SECONDS < deadline && ++tries < 400)) || { log "node $name not listening after ${START_TIMEOUT}s"; exit 1; }
        sleep 0.05
    done
}

# load PREFIX ARGS...: kv bench against node a on the buckets PREFIX0, PREFIX1, ...
load() {
    local prefix=$1
    shift
    "$KV" bench --addr "$ADDR_A" --proto kv --bucket-prefix "$prefix" --buckets "$BUCKETS" \
        --keys "$KEYS" --value-size "$VALUE_SIZE" --json "$@"
}

# measure PATH CONNS PIPELINE RUN: one turn, PATH being local or forwarded.
declare -A OPS P99 CPU_A CPU_B CPU_AB CS_A CS_B CS_AB BAD LOST RATIOS
measure() {
    local path=$1 conns=$2 pipeline=$3 run=$4 prefix=$LOCAL_PREFIX
    [[ $path == local ]] || prefix=$FORWARD_PREFIX
    local json_file="$OUT/run.json" t0 t1 t2 ca1 ca2 cb1 cb2 fwd1 fwd2 cmd1 cmd2
    lock
    fwd1=$(stat_of "$PORT_A" forwarded_total)
    cmd1=$(stat_of "$PORT_B" commands_total)
    load "$prefix" --conns "$conns" --pipeline "$pipeline" --duration "$DURATION" --warmup "$WARMUP" \
        --get-ratio "$GET_RATIO" >"$json_file" 2>>"$OUT/bench-errors.log" &
    local bench_pid=$!
    t0=$EPOCHREALTIME
    # Not waiting for a server: the counters are read at fixed points of a timed run.
    sleep "$(awk -v w="$WARMUP" -v m="$MARGIN" 'BEGIN { print w + m }')"
    ca1=$(cpu_ticks "$PID_A")
    cb1=$(cpu_ticks "$PID_B")
    snapshot "$PID_A" >"$OUT/a.before"
    snapshot "$PID_B" >"$OUT/b.before"
    t1=$EPOCHREALTIME
    sleep "$(awk -v d="$DURATION" -v m="$MARGIN" -v t0="$t0" -v t1="$t1" -v w="$WARMUP" \
        'BEGIN { s = t0 + w + d - m - t1; print (s > 0 ? s : 0) }')"
    ca2=$(cpu_ticks "$PID_A")
    cb2=$(cpu_ticks "$PID_B")
    snapshot "$PID_A" >"$OUT/a.after"
    snapshot "$PID_B" >"$OUT/b.after"
    t2=$EPOCHREALTIME
    wait "$bench_pid" || log "kv bench ($path) reported errors (see $OUT/bench-errors.log)"
    fwd2=$(stat_of "$PORT_A" forwarded_total)
    cmd2=$(stat_of "$PORT_B" commands_total)
    unlock

    local json ops window requests bad
    json=$(cat "$json_file")
    ops=$(field "$json" ops_per_sec)
    window=$(awk -v a="$t1" -v b="$t2" 'BEGIN { print b - a }')
    requests=$(awk -v o="${ops:-0}" -v w="$window" 'BEGIN { print o * w }')
    local errors mismatches
    errors=$(field "$json" errors)
    mismatches=$(field "$json" mismatches)
    bad=$((${errors:-1} + ${mismatches:-0}))
    local sa la bya sb lb byb
    read -r sa la bya < <(delta "$OUT/a.before" "$OUT/a.after")
    read -r sb lb byb < <(delta "$OUT/b.before" "$OUT/b.after")
    local ta=$((ca2 - ca1)) tb=$((cb2 - cb1)) us cpu_a cpu_b cpu_ab cs_a cs_b cs_ab
    us=$(awk -v hz="$TICKS" 'BEGIN { print 1e6 / hz }')
    cpu_a=$(per_request "$ta" "$requests" "$us" %.2f)
    cpu_b=$(per_request "$tb" "$requests" "$us" %.2f)
    cpu_ab=$(per_request $((ta + tb)) "$requests" "$us" %.2f)
    cs_a=$(per_request "$sa" "$requests" 1 %.3f)
    cs_b=$(per_request "$sb" "$requests" 1 %.3f)
    cs_ab=$(per_request $((sa + sb)) "$requests" 1 %.3f)

    local key="$path,$conns,$pipeline"
    OPS[$key]+=" ${ops:-nan}"
    P99[$key]+=" $(field "$json" p99_us)"
    CPU_A[$key]+=" $cpu_a"
    CPU_B[$key]+=" $cpu_b"
    CPU_AB[$key]+=" $cpu_ab"
    CS_A[$key]+=" $cs_a"
    CS_B[$key]+=" $cs_b"
    CS_AB[$key]+=" $cs_ab"
    BAD[$key]=$((${BAD[$key]:-0} + bad))
    LOST[$key]=$((${LOST[$key]:-0} + la + lb))
    THIS_OPS=${ops:-nan}
    local fwd cmd
    fwd=$(awk -v a="$fwd1" -v b="$fwd2" 'BEGIN { print b - a }')
    cmd=$(awk -v a="$cmd1" -v b="$cmd2" 'BEGIN { print b - a }')
    local line="{\"path\":\"$path\",\"cell\":\"${conns}x$pipeline\",\"run\":$run,\"window_s\":$window"
    line+=",\"ticks_a\":$ta,\"ticks_b\":$tb,\"switches_a\":$sa,\"switches_b\":$sb"
    line+=",\"threads_a\":\"$bya\",\"threads_b\":\"$byb\",\"lost_threads\":$((la + lb))"
    line+=",\"a_forwarded_total_delta\":$fwd,\"b_commands_total_delta\":$cmd,\"result\":${json:-null}}"
    echo "$line" >>"$RAW"
    log "${conns}x$pipeline run $run $path: ${ops:-?} ops/s, p99 $(field "$json" p99_us) us;" \
        "CPU us/req a $cpu_a b $cpu_b sum $cpu_ab; switches/req a $cs_a ($bya) b $cs_b ($byb);" \
        "a forwarded $fwd, b served $cmd; errors+mismatches $bad, lost threads $((la + lb))"
}

# ---------------------------------------------------------------------------------
read -r PORT_A PORT_B < <(free_ports)
ADDR_A=127.0.0.1:$PORT_A
CLUSTER="$OUT/cluster.conf"
cat >"$CLUSTER" <<EOF
# Written by benches/forward_cost.sh: node a owns buckets a-m, node b n-z.
a   127.0.0.1:$PORT_A   a-m
b   127.0.0.1:$PORT_B   n-z
EOF
: >"$OUT/a.log"
: >"$OUT/b.log"
start_node b "$PORT_B"
PID_B=$PID
start_node a "$PORT_A"
PID_A=$PID

echo "# Forwarded versus local, cost per request: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "kv: $KV (worktree at $(git rev-parse --short HEAD 2>/dev/null || echo "?")); node a on $ADDR_A owns a-m (pid $PID_A)," \
    "node b on 127.0.0.1:$PORT_B owns n-z (pid $PID_B); workers: ${WORKERS:-default (one per core)}"
echo "load, always to node a: $KV bench --conns C --pipeline P --duration $DURATION --warmup $WARMUP --keys $KEYS" \
    "--value-size $VALUE_SIZE --get-ratio $GET_RATIO --buckets $BUCKETS --bucket-prefix $LOCAL_PREFIX (local) or" \
    "$FORWARD_PREFIX (forwarded to b); counters over [warm-up + $MARGIN s, end - $MARGIN s]; median of $RUNS alternating runs"
echo

# Every key of both bucket sets written once, through node a, so GETs find values.
for prefix in "$LOCAL_PREFIX" "$FORWARD_PREFIX"; do
    lock
    json=$(load "$prefix" --fill --conns 4 --pipeline 16 --duration 120 2>>"$OUT/bench-errors.log")
    unlock
    log "buckets ${prefix}0..: $(field "$json" sets) keys written through node a, errors $(field "$json" errors)"
done

for cell in $CELLS; do
    conns=${cell%x*}
    pipeline=${cell#*x}
    for ((run = 1; run <= RUNS; run++)); do
        measure local "$conns" "$pipeline" "$run"
        local_ops=$THIS_OPS
        measure forwarded "$conns" "$pipeline" "$run"
        RATIOS[$cell]+=" $(ratio "$THIS_OPS" "$local_ops")"
    done
done
for pid in "$PID_A" "$PID_B"; do
    kill -0 "$pid" 2>/dev/null || { log "node with pid $pid died during the runs (see $OUT/a.log, $OUT/b.log)"; exit 1; }
done

echo "## Throughput (median of $RUNS; forwarded/local: median of the per-run ratios)"
echo
echo "| cell | local ops/s | forwarded ops/s | forwarded/local | local p99 us | forwarded p99 us | errors + mismatches (all runs) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for cell in $CELLS; do
    conns=${cell%x*}
    pipeline=${cell#*x}
    l="local,$conns,$pipeline"
    f="forwarded,$conns,$pipeline"
    echo "| $cell | $(median <<<"${OPS[$l]}") | $(median <<<"${OPS[$f]}") | $(median <<<"${RATIOS[$cell]}") |" \
        "$(median <<<"${P99[$l]}") | $(median <<<"${P99[$f]}") | $((BAD[$l] + BAD[$f])) |"
done
echo
echo "## Server CPU us per request (median of $RUNS)"
echo
echo "| cell | local: a | local: b (idle peer) | forwarded: a | forwarded: b | forwarded: a + b | forwarded a + b / local a |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for cell in $CELLS; do
    conns=${cell%x*}
    pipeline=${cell#*x}
    l="local,$conns,$pipeline"
    f="forwarded,$conns,$pipeline"
    echo "| $cell | $(median <<<"${CPU_A[$l]}") | $(median <<<"${CPU_B[$l]}") | $(median <<<"${CPU_A[$f]}") |" \
        "$(median <<<"${CPU_B[$f]}") | $(median <<<"${CPU_AB[$f]}") |" \
        "$(ratio "$(median <<<"${CPU_AB[$f]}")" "$(median <<<"${CPU_A[$l]}")") |"
done
echo
echo "## Context switches per request (median of $RUNS; every thread, voluntary + nonvoluntary)"
echo
echo "| cell | local: a | forwarded: a | forwarded: b | forwarded: a + b | threads lost (all runs) |"
echo "|---|---:|---:|---:|---:|---:|"
for cell in $CELLS; do
    conns=${cell%x*}
    pipeline=${cell#*x}
    l="local,$conns,$pipeline"
    f="forwarded,$conns,$pipeline"
    echo "| $cell | $(median <<<"${CS_A[$l]}") | $(median <<<"${CS_A[$f]}") | $(median <<<"${CS_B[$f]}") |" \
        "$(median <<<"${CS_AB[$f]}") | $((LOST[$l] + LOST[$f])) |"
done
echo
log "raw results: $RAW"
