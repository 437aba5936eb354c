#!/usr/bin/env bash
# benches/compare.sh: kv beside Redis and memcached on this machine, same load, same run.
#
# Starts kv (release build), redis-server and memcached on free loopback ports
# (skipping, with a message, any that is not installed), then:
#   1. memory: on fresh servers, idle RSS and CPU, then RSS per key after filling
#      MEM_KEYS keys of VALUE_SIZE bytes (VmRSS from /proc/<pid>/status);
#   2. throughput: the same `kv bench` matrix (CONNS x PIPELINES) against each server
#      in turn, RUNS times, alternating servers within each cell, median reported;
# and prints tables with kv's ratio to each peer. Stops everything it started.
# Installs nothing; not part of CI. Needs: cargo, and optionally redis-server and
# memcached (Debian: apt-get install -y redis-server memcached).
#
# Knobs (environment):
#   DURATION=10 WARMUP=2     seconds per measured run / warm-up before it
#   RUNS=1                   runs per cell per server (3 for a median of three)
#   CONNS="1 8 64" PIPELINES="1 16" KEYS=100000 VALUE_SIZE=32 GET_RATIO=0.5
#   MEM_KEYS=1000000         keys for the memory figure (0 skips the memory part)
#   MATRIX=1                 0 skips the throughput matrix
#   FORWARD=1                0 skips forwarded vs local (two kv nodes in a cluster)
#   SERVERS="kv redis memcached"
#   KV_ARGS=""               extra flags for `kv serve`, e.g. "--workers 1"
#   OUT=target/compare       where raw results (one JSON line per run) are kept
# Quick check: DURATION=1 WARMUP=0.5 MEM_KEYS=100000 benches/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
RUNS=${RUNS:-1}
CONNS=${CONNS:-"1 8 64"}
PIPELINES=${PIPELINES:-"1 16"}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-32}
GET_RATIO=${GET_RATIO:-0.5}
MEM_KEYS=${MEM_KEYS:-1000000}
MATRIX=${MATRIX:-1}
FORWARD=${FORWARD:-1}
SERVERS=${SERVERS:-"kv redis memcached"}
KV_ARGS=${KV_ARGS:-}
OUT=${OUT:-target/compare}
# Wait at most this long for a server to accept connections.
START_TIMEOUT=10

log() { echo "compare: $*" >&2; }

cargo build --release --quiet
KV=target/release/kv
mkdir -p "$OUT"
RAW="$OUT/runs-$(date +%Y%m%d-%H%M%S).jsonl"
: > "$RAW"

# Pids of the servers this script started, stopped on any exit.
STARTED=()
cleanup() {
    for pid in "${STARTED[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM



wait_port() {
    local port=$1 pid=$2 deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "server (pid $pid) exited before listening on $port"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "server (pid $pid) not listening on $port after ${START_TIMEOUT}s"
            return 1
        fi
        sleep 0.05
    done
}

available() {
    case $1 in
        kv) return 0 ;;
        redis) command -v redis-server >/dev/null ;;
        memcached) command -v memcached >/dev/null ;;
    esac
}

ACTIVE=()
for server in $SERVERS; do
    if available "$server"; then
        ACTIVE+=("$server")
    else
        log "skipping $server: not installed (Debian: apt-get install -y ${server/redis/redis-server})"
    fi
done

# start_server NAME: starts it on a free port; sets PID and ADDR.
start_server() {
    local port
    port=$(free_port)
    case $1 in
        kv)
            # shellcheck disable=SC2086
            "$KV" serve --port "$port" $KV_ARGS 2>>"$OUT/kv.log" &
            ;;
        redis)
            redis-server --save '' --appendonly no --port "$port" --bind 127.0.0.1 \
                --logfile "" >>"$OUT/redis.log" 2>&1 &
            ;;
        memcached)
            # -m: room for MEM_KEYS without evictions (the default is 64 MiB);
            # -u: memcached refuses to run as root without it.
            memcached -p "$port" -U 0 -l 127.0.0.1 -m 4096 -u "$(id -un)" >>"$OUT/memcached.log" 2>&1 &
            ;;
    esac
    PID=$!
    STARTED+=("$PID")
    ADDR="127.0.0.1:$port"
    wait_port "$port" "$PID"
}

stop_server() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# CPU time (user + system) of a process in clock ticks.
TICKS=$(getconf CLK_TCK)


proto_of() { echo "$1"; }

# bench NAME ARGS...: runs kv bench against the server at ADDR; prints its JSON line.
bench() {
    local name=$1
    shift
    local json
    if ! json=$("$KV" bench --addr "$ADDR" --proto "$(proto_of "$name")" --json "$@" 2>>"$OUT/bench-errors.log"); then
        log "kv bench against $name reported errors or mismatches (see $OUT/bench-errors.log): $json"
    fi
    echo "$json"
}


echo "# kv beside Redis and memcached: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
echo "servers: ${ACTIVE[*]}"
for server in "${ACTIVE[@]}"; do
    case $server in
        kv) echo "  kv: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $KV_ARGS" ;;
        redis) echo "  $(redis-server --version)" ;;
        memcached) echo "  $(memcached -V)" ;;
    esac
done
echo

# ---------------------------------------------------------------------------------
# Memory and idle cost, on fresh servers.
declare -A IDLE_RSS IDLE_CPU PER_KEY FILLED
if ((MEM_KEYS > 0)); then
    for server in "${ACTIVE[@]}"; do
        start_server "$server"
        sleep 1
        IDLE_RSS[$server]=$(rss_kib "$PID")
        # Idle CPU: ticks used over 2 quiet seconds (0 means it sleeps when idle).
        before=$(cpu_ticks "$PID")
        sleep 2
        after=$(cpu_ticks "$PID")
        IDLE_CPU[$server]=$(awk -v t=$((after - before)) -v hz="$TICKS" 'BEGIN { printf "%.0f", 100 * t / hz / 2 }')
        rss_before=$(rss_kib "$PID")
        json=$(bench "$server" --fill --keys "$MEM_KEYS" --value-size "$VALUE_SIZE" --conns 4 --pipeline 16 \
            --buckets 16 --duration 300 --seed 7)
        echo "{\"phase\":\"fill\",\"server\":\"$server\",\"result\":$json}" >>"$RAW"
        sleep 1
        rss_after=$(rss_kib "$PID")
        FILLED[$server]=$(field "$json" sets)
        PER_KEY[$server]=$(awk -v a="$rss_after" -v b="$rss_before" -v n="${FILLED[$server]}" \
            'BEGIN { if (n > 0) printf "%.1f", (a - b) * 1024 / n; else print "nan" }')
        log "$server: idle RSS ${IDLE_RSS[$server]} KiB, idle CPU ${IDLE_CPU[$server]}%, ${PER_KEY[$server]} B/key over ${FILLED[$server]} keys"
        stop_server "$PID"
    done
    echo "## Memory ($MEM_KEYS keys of $VALUE_SIZE bytes; RSS after fill minus before, per key)"
    echo
    printf '| %-9s | %14s | %11s | %9s | %12s |\n' server "idle RSS (MiB)" "idle CPU %" "bytes/key" "kv / server"
    printf '|%s|%s|%s|%s|%s|\n' ----------- ---------------- ------------- ----------- --------------
    for server in "${ACTIVE[@]}"; do
        printf '| %-9s | %14s | %11s | %9s | %12s |\n' "$server" \
            "$(awk -v k="${IDLE_RSS[$server]}" 'BEGIN { printf "%.1f", k / 1024 }')" "${IDLE_CPU[$server]}" \
            "${PER_KEY[$server]}" "$(ratio "${PER_KEY[kv]:-nan}" "${PER_KEY[$server]}")"
    done
    echo
fi

# ---------------------------------------------------------------------------------
# Throughput matrix.
declare -A OPS P99 CPU
declare -A SERVER_PID SERVER_ADDR
((MATRIX == 0)) && ACTIVE_MATRIX=() || ACTIVE_MATRIX=("${ACTIVE[@]}")
for server in "${ACTIVE_MATRIX[@]}"; do
    start_server "$server"
    SERVER_PID[$server]=$PID
    SERVER_ADDR[$server]=$ADDR
    # Every key exists before the first measured GET, for every server alike.
    json=$(bench "$server" --fill --keys "$KEYS" --value-size "$VALUE_SIZE" --conns 4 --pipeline 16 --duration 120)
    log "$server on $ADDR (pid $PID), $(field "$json" sets) keys written"
done

for conns in $CONNS; do
    for pipeline in $PIPELINES; do
        for ((run = 1; run <= RUNS; run++)); do
            for server in "${ACTIVE_MATRIX[@]}"; do
                PID=${SERVER_PID[$server]}
                ADDR=${SERVER_ADDR[$server]}
                before=$(cpu_ticks "$PID")
                json=$(bench "$server" --conns "$conns" --pipeline "$pipeline" --duration "$DURATION" \
                    --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" --get-ratio "$GET_RATIO")
                after=$(cpu_ticks "$PID")
                echo "{\"phase\":\"matrix\",\"server\":\"$server\",\"run\":$run,\"cpu_ticks\":$((after - before)),\"result\":$json}" >>"$RAW"
                ops=$(field "$json" ops_per_sec)
                total=$(field "$json" ops)
                # Server CPU seconds per million measured requests (warm-up CPU excluded
                # by scaling the whole run's ticks by the measured share of the time).
                cpu=$(awk -v t=$((after - before)) -v hz="$TICKS" -v n="$total" -v d="$DURATION" -v w="$WARMUP" \
                    'BEGIN { if (n > 0) printf "%.2f", (t / hz) * (d / (d + w)) / n * 1e6; else print "nan" }')
                key="$server,$conns,$pipeline"
                OPS[$key]="${OPS[$key]:-} ${ops:-nan}"
                P99[$key]="${P99[$key]:-} $(field "$json" p99_us)"
                CPU[$key]="${CPU[$key]:-} $cpu"
                log "${conns}x$pipeline run $run $server: ${ops:-?} ops/s, p99 $(field "$json" p99_us) us," \
                    "mismatches $(field "$json" mismatches), $cpu CPU s per 1M"
            done
        done
    done
done

peers=()
for server in "${ACTIVE[@]}"; do
    [[ $server == kv ]] || peers+=("$server")
done

table() {
    local title=$1 array=$2 higher=$3
    local -n values=$array
    echo "## $title (median of $RUNS; ${DURATION}s after ${WARMUP}s warm-up; $KEYS keys, $VALUE_SIZE-byte values, GET ratio $GET_RATIO)"
    echo
    local header="| conns x pipeline |" rule="|---|"
    for server in "${ACTIVE[@]}"; do
        header+=" $server |"
        rule+="---:|"
    done
    for peer in "${peers[@]}"; do
        header+=" kv / $peer |"
        rule+="---:|"
    done
    echo "$header"
    echo "$rule"
    for conns in $CONNS; do
        for pipeline in $PIPELINES; do
            local row="| ${conns} x ${pipeline} |"
            declare -A med=()
            for server in "${ACTIVE[@]}"; do
                med[$server]=$(median <<<"${values[$server,$conns,$pipeline]:-}")
                row+=" ${med[$server]} |"
            done
            for peer in "${peers[@]}"; do
                row+=" $(ratio "${med[kv]:-nan}" "${med[$peer]}") |"
            done
            echo "$row"
        done
    done
    echo
    [[ -n $higher ]] && echo "($higher)" && echo
}

if ((MATRIX != 0)); then
    table "Throughput, ops/s" OPS "ratio above 1: kv faster"
    table "p99 latency, microseconds" P99 "ratio below 1: kv's p99 lower"
    table "Server CPU seconds per million requests" CPU "ratio below 1: kv uses less CPU"
    for server in "${ACTIVE_MATRIX[@]}"; do
        stop_server "${SERVER_PID[$server]}"
    done
fi

# ---------------------------------------------------------------------------------
# Forwarded vs local: two kv nodes, foo owning buckets a-m and bar n-z. The same load
# goes to foo with buckets b0.. (foo's own) and with x0.. (every request forwarded to
# bar and the reply relayed), alternating.
if ((FORWARD != 0)); then
    foo_port=$(free_port)
    bar_port=$(free_port)
    while [[ $bar_port == "$foo_port" ]]; do bar_port=$(free_port); done
    cluster_file="$OUT/cluster.conf"
    printf 'foo 127.0.0.1:%s a-m\nbar 127.0.0.1:%s n-z\n' "$foo_port" "$bar_port" >"$cluster_file"
    # shellcheck disable=SC2086
    "$KV" serve --cluster "$cluster_file" --node foo $KV_ARGS 2>>"$OUT/kv-foo.log" &
    FOO_PID=$!
    STARTED+=("$FOO_PID")
    # shellcheck disable=SC2086
    "$KV" serve --cluster "$cluster_file" --node bar $KV_ARGS 2>>"$OUT/kv-bar.log" &
    BAR_PID=$!
    STARTED+=("$BAR_PID")
    wait_port "$foo_port" "$FOO_PID"
    wait_port "$bar_port" "$BAR_PID"
    ADDR="127.0.0.1:$foo_port"
    declare -A FWD
    for prefix in b x; do
        bench kv --fill --keys "$KEYS" --value-size "$VALUE_SIZE" --conns 4 --pipeline 16 --duration 120 \
            --bucket-prefix "$prefix" >/dev/null
    done
    for conns in $CONNS; do
        for pipeline in $PIPELINES; do
            for ((run = 1; run <= RUNS; run++)); do
                for path in local forwarded; do
                    prefix=b
                    [[ $path == forwarded ]] && prefix=x
                    json=$(bench kv --conns "$conns" --pipeline "$pipeline" --duration "$DURATION" \
                        --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" --get-ratio "$GET_RATIO" \
                        --bucket-prefix "$prefix")
                    echo "{\"phase\":\"forward\",\"path\":\"$path\",\"run\":$run,\"result\":$json}" >>"$RAW"
                    FWD[$path,$conns,$pipeline]+=" $(field "$json" ops_per_sec)"
                    FWD[p99$path,$conns,$pipeline]+=" $(field "$json" p99_us)"
                    log "forward ${conns}x$pipeline run $run $path: $(field "$json" ops_per_sec) ops/s," \
                        "mismatches $(field "$json" mismatches), errors $(field "$json" errors)"
                done
            done
        done
    done
    echo "## Forwarded vs local (kv cluster of two nodes on this machine; median of $RUNS; ${DURATION}s after ${WARMUP}s warm-up)"
    echo
    echo "| conns x pipeline | local ops/s | forwarded ops/s | forwarded / local | local p99 us | forwarded p99 us |"
    echo "|---|---:|---:|---:|---:|---:|"
    for conns in $CONNS; do
        for pipeline in $PIPELINES; do
            l=$(median <<<"${FWD[local,$conns,$pipeline]:-}")
            f=$(median <<<"${FWD[forwarded,$conns,$pipeline]:-}")
            echo "| $conns x $pipeline | $l | $f | $(ratio "$f" "$l") |" \
                "$(median <<<"${FWD[p99local,$conns,$pipeline]:-}") | $(median <<<"${FWD[p99forwarded,$conns,$pipeline]:-}") |"
        done
    done
    echo
fi
log "raw results: $RAW"
