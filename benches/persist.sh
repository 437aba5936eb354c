#!/usr/bin/env bash
# benches/persist.sh: what persistence costs kv, beside kv in memory and Redis with an
# append-only file, on this machine, same load, same run.
#
# Three parts (PARTS="matrix load compact"):
#   matrix   kv in memory, kv --fsync everysec, kv --fsync always, Redis appendonly
#            with appendfsync everysec and always: each filled with KEYS keys, then
#            the same `kv bench` cells against each in turn, RUNS times, alternating
#            servers within each cell (the order rotates from run to run), medians.
#            Besides ops/s and p99: server CPU seconds per million requests (utime +
#            stime + cutime + cstime from /proc/<pid>/stat), context switches per request (summed over
#            the server's threads in /proc/<pid>/task/*/status, sampled inside the
#            measured window), and bytes the server sent to storage per request
#            (write_bytes in /proc/<pid>/io).
#   load     fills LOAD_KEYS keys into kv (--fsync everysec) and into Redis (appendonly,
#            everysec), stops both (SIGTERM), then restarts each LOAD_RUNS times,
#            alternating: wall time from exec until a request is answered (kv: STATS;
#            Redis: PING answers PONG, not LOADING), kv's own load_time_ms, and the
#            load time Redis logs ("DB loaded from append only file").
#   compact  two kv servers (--fsync everysec) with the same KEYS keys: one with
#            --compact-min-bytes COMPACT_MIN (so it compacts again and again during the
#            measured phase: its log passes twice its live data every few seconds), one
#            with 1 TiB (never compacts); COMPACT_CELLS, alternating, RUNS times: p99, and
#            VmRSS sampled every 20 ms during each run (peak of the compacting server vs
#            the median of the other), compactions counted from STATS.
# Every data directory is fresh, under TMPROOT (default /tmp, the same filesystem for
# kv and Redis), and removed at the end. Installs nothing; skips Redis, with a message,
# if redis-server or redis-cli is missing; stops every server it started; every client
# run and every wait is bounded in time. Not part of CI.
#
# Knobs (environment):
#   CELLS="8x1 64x1 64x16" RUNS=3 DURATION=5 WARMUP=1 KEYS=100000 VALUE_SIZE=32
#   GET_RATIO=0.5 LOAD_KEYS=1000000 LOAD_RUNS=3 COMPACT_CELLS="8x1 64x16"
#   COMPACT_DURATION=10 COMPACT_MIN=1048576 PARTS="matrix load compact"
#   SERVERS="kv-mem kv-everysec kv-always redis-everysec redis-always" (a kv name may end
#     in -wN for --workers N, e.g. kv-always-w1; the ratio table wants the five above)
#   KV=$CARGO_TARGET_DIR/release/kv (built if missing)  OUT=target/persist  TMPROOT=/tmp
# Quick check: DURATION=1 WARMUP=0.5 RUNS=1 LOAD_KEYS=100000 COMPACT_DURATION=3 benches/persist.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

CELLS=${CELLS:-"8x1 64x1 64x16"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-32}
GET_RATIO=${GET_RATIO:-0.5}
LOAD_KEYS=${LOAD_KEYS:-1000000}
LOAD_RUNS=${LOAD_RUNS:-3}
COMPACT_CELLS=${COMPACT_CELLS:-"8x1 64x16"}
COMPACT_DURATION=${COMPACT_DURATION:-10}
COMPACT_MIN=${COMPACT_MIN:-1048576}
NEVER_COMPACT=1099511627776
PARTS=${PARTS:-"matrix load compact"}
SERVERS=${SERVERS:-"kv-mem kv-everysec kv-always redis-everysec redis-always"}
OUT=${OUT:-target/persist}
TMPROOT=${TMPROOT:-/tmp}
KV=${KV:-${CARGO_TARGET_DIR:-target}/release/kv}
START_TIMEOUT=10
# A restart with LOAD_KEYS keys may take this long before it counts as failed.
LOAD_TIMEOUT=${LOAD_TIMEOUT:-120}

log() { echo "persist: $*" >&2; }

[[ -x $KV ]] || cargo build --release --quiet
mkdir -p "$OUT"
# Absolute: Redis opens its log file after changing to its data directory.
OUT=$(cd "$OUT" && pwd)
STAMP=$(date +%Y%m%d-%H%M%S)
RAW="$OUT/persist-$STAMP.jsonl"
: >"$RAW"
WORK=$(mktemp -d "$TMPROOT/kv-persist-bench.XXXXXX")

STARTED=()
cleanup() {
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

HAVE_REDIS=1
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    HAVE_REDIS=0
    log "skipping Redis: redis-server or redis-cli not installed (Debian: apt-get install -y redis-server)"
fi
ACTIVE=()
for s in $SERVERS; do
    if [[ $s == redis-* && $HAVE_REDIS == 0 ]]; then continue; fi
    ACTIVE+=("$s")
done


now_ms() { echo $(($(date +%s%N) / 1000000)); }
# CPU time of a process in clock ticks: utime + stime, plus the children it has reaped
# (cutime + cstime: Redis rewrites its AOF in a forked child; kv compacts in a thread).
cpu_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
write_bytes() { awk '/^write_bytes:/ { print $2 }' "/proc/$1/io"; }
# Context switches of every live thread: "voluntary involuntary".
ctxt() {
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^voluntary_ctxt_switches:/ { v += $2 } /^nonvoluntary_ctxt_switches:/ { n += $2 } END { print v + 0, n + 0 }'
}

# start NAME [DIR]: starts server NAME (a data directory DIR, fresh unless given);
# sets PID, ADDR, PORT, SLOG (its log).
declare -A DATA
start() {
    local name=$1 dir=${2:-}
    local kind=${name%%-*} mode=${name#*-} workers=()
    # A "-w<N>" suffix (kv only) runs it with --workers N: kv-always-w1 is one partition.
    if [[ $mode == *-w[0-9]* ]]; then
        workers=(--workers "${mode##*-w}")
        mode=${mode%-w*}
    fi
    [[ -n $dir ]] || dir=$(mktemp -d "$WORK/$name.XXXX")
    DATA[$name]=$dir
    SLOG="$OUT/$name.log"
    case $kind in
        kv)
            local args=()
            case $mode in
                mem) ;;
                everysec | always) args=(--data-dir "$dir/data" --fsync "$mode") ;;
                compact) args=(--data-dir "$dir/data" --compact-min-bytes "$COMPACT_MIN") ;;
                nocompact) args=(--data-dir "$dir/data" --compact-min-bytes "$NEVER_COMPACT") ;;
            esac
            : >"$SLOG"
            "$KV" serve --port 0 "${workers[@]}" "${args[@]}" 2>>"$SLOG" &
            PID=$!
            STARTED+=("$PID")
            local deadline=$((SECONDS + LOAD_TIMEOUT))
            until grep -q 'listening on' "$SLOG"; do
                kill -0 "$PID" 2>/dev/null || { log "$name exited at start: $(tail -3 "$SLOG")"; return 1; }
                ((SECONDS < deadline)) || { log "$name not listening after ${LOAD_TIMEOUT}s"; return 1; }
                sleep 0.005
            done
            ADDR=$(grep -o 'listening on [0-9.:]*' "$SLOG" | tail -1 | awk '{ print $3 }')
            PORT=${ADDR##*:}
            ;;
        redis)
            # A port picked free may be taken by someone else's test before Redis binds
            # it (the machine is shared): then try another, at most three times.
            local attempt
            for attempt in 1 2 3; do
                PORT=$(free_port)
                ADDR="127.0.0.1:$PORT"
                : >"$SLOG"
                redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly yes \
                    --appendfsync "$mode" --dir "$dir" --logfile "$SLOG" >>"$SLOG.stderr" 2>&1 &
                PID=$!
                STARTED+=("$PID")
                local deadline=$((SECONDS + LOAD_TIMEOUT)) up=1
                until [[ $(timeout 2 redis-cli -p "$PORT" PING 2>/dev/null) == PONG ]]; do
                    if ! kill -0 "$PID" 2>/dev/null; then
                        log "$name exited at start (attempt $attempt, port $PORT): $(tail -q -n 3 "$SLOG" "$SLOG.stderr")"
                        up=0
                        break
                    fi
                    ((SECONDS < deadline)) || { log "$name not answering PING after ${LOAD_TIMEOUT}s"; return 1; }
                    sleep 0.005
                done
                ((up)) && return 0
            done
            return 1
            ;;
    esac
}

stop() {
    kill "$1" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$1" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

proto_of() { [[ $1 == redis-* ]] && echo redis || echo kv; }

# bench NAME ADDR ARGS...: one bounded `kv bench` run; prints its JSON line.
bench() {
    local name=$1 addr=$2
    shift 2
    local json
    if ! json=$(timeout 600 "$KV" bench --addr "$addr" --proto "$(proto_of "$name")" --json "$@" \
        2>>"$OUT/bench-errors.log"); then
        log "kv bench against $name reported errors or failed (see $OUT/bench-errors.log): $json"
    fi
    echo "$json"
}

fill() {
    bench "$1" "$2" --fill --keys "$3" --value-size "$VALUE_SIZE" --conns 4 --pipeline 16 --duration 300 --seed 7
}

# kv_stat ADDR NAME: one figure from kv's STATS.
kv_stat() { timeout 5 "$KV" cli --addr "$1" STATS 2>/dev/null | awk -v n="$2" '$1 == n { print $2 }'; }

echo "# Persistence: kv beside kv in memory and Redis with an AOF: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)," \
    "load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "data directories: $TMPROOT ($(df -T "$TMPROOT" | awk 'NR == 2 { print $2 " on " $1 }'))"
echo "kv: $(git rev-parse --short HEAD 2>/dev/null || echo '?') ($KV)"
((HAVE_REDIS)) && echo "$(redis-server --version)"
echo

# ---------------------------------------------------------------------------------
if [[ " $PARTS " == *" matrix "* ]]; then
    declare -A SPID SADDR
    for s in "${ACTIVE[@]}"; do
        start "$s"
        SPID[$s]=$PID
        SADDR[$s]=$ADDR
        json=$(fill "$s" "$ADDR" "$KEYS")
        echo "{\"part\":\"matrix-fill\",\"server\":\"$s\",\"result\":$json}" >>"$RAW"
        log "$s on $ADDR (pid $PID): $(field "$json" sets) keys written"
    done
    declare -A OPS P99 CPU VCS ICS WB
    n=${#ACTIVE[@]}
    for cell in $CELLS; do
        conns=${cell%x*}
        pipeline=${cell#*x}
        for ((run = 1; run <= RUNS; run++)); do
            for ((i = 0; i < n; i++)); do
                s=${ACTIVE[$(((i + run - 1) % n))]}
                pid=${SPID[$s]}
                cpu0=$(cpu_ticks "$pid")
                wb0=$(write_bytes "$pid")
                tmp="$WORK/bench.json"
                bench "$s" "${SADDR[$s]}" --conns "$conns" --pipeline "$pipeline" --duration "$DURATION" \
                    --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" --get-ratio "$GET_RATIO" >"$tmp" &
                bpid=$!
                # Context switches inside the measured window, while every connection's
                # thread is alive: from 0.1 s after warm-up to 0.3 s before the end.
                sleep "$(awk -v w="$WARMUP" 'BEGIN { print w + 0.1 }')"
                read -r v0 i0 < <(ctxt "$pid")
                t0=$(now_ms)
                sleep "$(awk -v d="$DURATION" 'BEGIN { print (d > 0.6 ? d - 0.4 : d / 2) }')"
                read -r v1 i1 < <(ctxt "$pid")
                t1=$(now_ms)
                wait "$bpid" || true
                json=$(cat "$tmp")
                cpu1=$(cpu_ticks "$pid")
                wb1=$(write_bytes "$pid")
                extra=""
                if [[ $s == kv-everysec* || $s == kv-always* ]]; then
                    # Both counters are totals since the server started, not per run.
                    extra=",\"compactions\":$(kv_stat "${SADDR[$s]}" compactions),\"log_bytes\":$(kv_stat "${SADDR[$s]}" log_bytes)"
                elif [[ $s == redis-* ]]; then
                    extra=",\"aof_rewrites\":$(timeout 5 redis-cli -p "${SADDR[$s]##*:}" INFO persistence | tr -d '\r' | awk -F: '$1 == "aof_rewrites" { print $2 }' | grep . || echo null)"
                fi
                echo "{\"part\":\"matrix\",\"server\":\"$s\",\"cell\":\"$cell\",\"run\":$run,\"cpu_ticks\":$((cpu1 - cpu0)),\"write_bytes\":$((wb1 - wb0)),\"vol_ctxt\":$((v1 - v0)),\"invol_ctxt\":$((i1 - i0)),\"ctxt_window_ms\":$((t1 - t0))$extra,\"result\":$json}" >>"$RAW"
                total=$(field "$json" ops)
                ops=$(field "$json" ops_per_sec)
                cpu=$(awk -v t=$((cpu1 - cpu0)) -v hz="$TICKS" -v n="$total" -v d="$DURATION" -v w="$WARMUP" \
                    'BEGIN { if (n > 0) printf "%.2f", (t / hz) * (d / (d + w)) / n * 1e6; else print "nan" }')
                # Per request: switches in the window over the requests of the window.
                per() { awk -v x="$1" -v n="$total" -v d="$DURATION" -v ms=$((t1 - t0)) \
                    'BEGIN { r = n * (ms / 1000) / d; if (r > 0) printf "%.3f", x / r; else print "nan" }'; }
                vcs=$(per $((v1 - v0)))
                ics=$(per $((i1 - i0)))
                wb=$(awk -v b=$((wb1 - wb0)) -v n="$total" -v d="$DURATION" -v w="$WARMUP" \
                    'BEGIN { if (n > 0) printf "%.1f", b * (d / (d + w)) / n; else print "nan" }')
                key="$s,$cell"
                OPS[$key]+=" ${ops:-nan}"
                P99[$key]+=" $(field "$json" p99_us)"
                CPU[$key]+=" $cpu"
                VCS[$key]+=" $vcs"
                ICS[$key]+=" $ics"
                WB[$key]+=" $wb"
                log "$cell run $run $s: ${ops:-?} ops/s, p99 $(field "$json" p99_us) us, $cpu CPU s/1M," \
                    "$vcs vol + $ics invol ctxt/req, $wb disk B/req, mismatches $(field "$json" mismatches)$extra"
            done
        done
    done
    for s in "${ACTIVE[@]}"; do stop "${SPID[$s]}"; done

    table() {
        local title=$1 array=$2 note=$3
        local -n values=$array
        echo "### $title"
        echo
        local header="| cell |" rule="|---|"
        for s in "${ACTIVE[@]}"; do header+=" $s |"; rule+="---:|"; done
        echo "$header"
        echo "$rule"
        for cell in $CELLS; do
            local row="| $cell |"
            for s in "${ACTIVE[@]}"; do row+=" $(median <<<"${values[$s,$cell]:-}") |"; done
            echo "$row"
        done
        echo
        if [[ -n $note ]]; then echo "$note"; echo; fi
    }
    echo "## Throughput and cost per request (median of $RUNS; ${DURATION}s after ${WARMUP}s warm-up; $KEYS keys, $VALUE_SIZE-byte values, GET ratio $GET_RATIO)"
    echo
    table "ops/s" OPS ""
    table "p99 latency, microseconds" P99 ""
    table "server CPU seconds per million requests" CPU ""
    table "voluntary context switches per request (all server threads)" VCS ""
    table "involuntary context switches per request" ICS ""
    table "bytes written to storage per request (/proc/<pid>/io write_bytes)" WB ""

    # Ratios, each from the medians of this run.
    m() { median <<<"${OPS[$1,$2]:-}"; }
    mc() { median <<<"${CPU[$1,$2]:-}"; }
    echo "### Ratios (ops/s; CPU per request in brackets, below 1 means less CPU)"
    echo
    echo "| cell | everysec / mem | everysec / redis-everysec | always / redis-always | always / everysec |"
    echo "|---|---:|---:|---:|---:|"
    for cell in $CELLS; do
        echo "| $cell | $(ratio "$(m kv-everysec "$cell")" "$(m kv-mem "$cell")") ($(ratio "$(mc kv-everysec "$cell")" "$(mc kv-mem "$cell")"))" \
            "| $(ratio "$(m kv-everysec "$cell")" "$(m redis-everysec "$cell")") ($(ratio "$(mc kv-everysec "$cell")" "$(mc redis-everysec "$cell")"))" \
            "| $(ratio "$(m kv-always "$cell")" "$(m redis-always "$cell")") ($(ratio "$(mc kv-always "$cell")" "$(mc redis-always "$cell")"))" \
            "| $(ratio "$(m kv-always "$cell")" "$(m kv-everysec "$cell")") ($(ratio "$(mc kv-always "$cell")" "$(mc kv-everysec "$cell")")) |"
    done
    echo
fi

# ---------------------------------------------------------------------------------
if [[ " $PARTS " == *" load "* ]]; then
    LOADERS=(kv-everysec)
    ((HAVE_REDIS)) && LOADERS+=(redis-everysec)
    declare -A LDIR LSIZE LWALL LSELF LKEYS
    for s in "${LOADERS[@]}"; do
        start "$s"
        json=$(fill "$s" "$ADDR" "$LOAD_KEYS")
        echo "{\"part\":\"load-fill\",\"server\":\"$s\",\"result\":$json}" >>"$RAW"
        log "$s: $(field "$json" sets) keys written in $(field "$json" elapsed_s) s"
        LDIR[$s]=${DATA[$s]}
        stop "$PID"
        LSIZE[$s]=$(du -sb "${DATA[$s]}" | awk '{ print $1 }')
        log "$s data on disk: ${LSIZE[$s]} bytes: $(cd "${DATA[$s]}" && find . -type f -printf '%p %s; ' | sort)"
    done
    for ((run = 1; run <= LOAD_RUNS; run++)); do
        for s in "${LOADERS[@]}"; do
            t0=$(now_ms)
            if ! start "$s" "${LDIR[$s]}"; then
                log "restart of $s failed"
                continue
            fi
            t1=$(now_ms)
            if [[ $s == kv-* ]]; then
                # kv binds its port before loading; ready is the first answered request.
                deadline=$((SECONDS + LOAD_TIMEOUT))
                until self=$(kv_stat "$ADDR" load_time_ms) && [[ -n $self ]]; do
                    ((SECONDS < deadline)) || { log "$s gave no STATS after ${LOAD_TIMEOUT}s"; self=nan; break; }
                    sleep 0.005
                done
                t1=$(now_ms)
                # (Not STATS keys: it reads 0 after a restart until a worker is touched.)
                keys=$(sed -n 's/.*loaded \([0-9]*\) keys.*/\1/p' "$SLOG" | tail -1)
            else
                self=$(sed -n 's/.*DB loaded from append only file: \([0-9.]*\) seconds.*/\1/p' "$SLOG" | tail -1)
                self=$(awk -v s="${self:-nan}" 'BEGIN { if (s == "nan") print "nan"; else printf "%.0f", s * 1000 }')
                keys=$(timeout 5 redis-cli -p "$PORT" DBSIZE)
            fi
            wall=$((t1 - t0))
            echo "{\"part\":\"load\",\"server\":\"$s\",\"run\":$run,\"keys\":$keys,\"wall_ms\":$wall,\"self_ms\":$self,\"disk_bytes\":${LSIZE[$s]}}" >>"$RAW"
            LWALL[$s]+=" $wall"
            LSELF[$s]+=" $self"
            LKEYS[$s]=$keys
            log "restart $run $s: $keys keys, ready after $wall ms (own figure $self ms)"
            stop "$PID"
        done
    done
    echo "## Restart with $LOAD_KEYS keys of $VALUE_SIZE bytes (median of $LOAD_RUNS restarts, alternating)"
    echo
    echo "| server | data on disk (MB) | keys loaded | exec to first answer (ms) | server's own load time (ms) |"
    echo "|---|---:|---:|---:|---:|"
    for s in "${LOADERS[@]}"; do
        echo "| $s | $(awk -v b="${LSIZE[$s]}" 'BEGIN { printf "%.1f", b / 1e6 }') | ${LKEYS[$s]:-?}" \
            "| $(median <<<"${LWALL[$s]:-}") | $(median <<<"${LSELF[$s]:-}") |"
    done
    echo
    if ((HAVE_REDIS)); then
        echo "kv / Redis, exec to first answer: $(ratio "$(median <<<"${LWALL[kv-everysec]:-}")" "$(median <<<"${LWALL[redis-everysec]:-}")");" \
            "own load times: $(ratio "$(median <<<"${LSELF[kv-everysec]:-}")" "$(median <<<"${LSELF[redis-everysec]:-}")") (below 1: kv faster)"
        echo
    fi
fi

# ---------------------------------------------------------------------------------
if [[ " $PARTS " == *" compact "* ]]; then
    CSERVERS=(kv-compact kv-nocompact)
    declare -A CPID CADDR
    for s in "${CSERVERS[@]}"; do
        start "$s"
        CPID[$s]=$PID
        CADDR[$s]=$ADDR
        json=$(fill "$s" "$ADDR" "$KEYS")
        echo "{\"part\":\"compact-fill\",\"server\":\"$s\",\"result\":$json}" >>"$RAW"
        log "$s on $ADDR (pid $PID): $(field "$json" sets) keys written, RSS $(rss_kib "$PID") KiB"
    done
    declare -A CP99 CP999 COPS CPEAK CMED CCOMP
    for cell in $COMPACT_CELLS; do
        conns=${cell%x*}
        pipeline=${cell#*x}
        for ((run = 1; run <= RUNS; run++)); do
            for ((i = 0; i < 2; i++)); do
                s=${CSERVERS[$(((i + run - 1) % 2))]}
                pid=${CPID[$s]}
                c0=$(kv_stat "${CADDR[$s]}" compactions)
                tmp="$WORK/bench.json"
                bench "$s" "${CADDR[$s]}" --conns "$conns" --pipeline "$pipeline" --duration "$COMPACT_DURATION" \
                    --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" --get-ratio "$GET_RATIO" >"$tmp" &
                bpid=$!
                samples="$WORK/rss.txt"
                : >"$samples"
                while kill -0 "$bpid" 2>/dev/null; do
                    rss_kib "$pid" >>"$samples" 2>/dev/null || true
                    sleep 0.02
                done
                wait "$bpid" || true
                json=$(cat "$tmp")
                c1=$(kv_stat "${CADDR[$s]}" compactions)
                peak=$(sort -n "$samples" | tail -1)
                med=$(median <"$samples")
                echo "{\"part\":\"compact\",\"server\":\"$s\",\"cell\":\"$cell\",\"run\":$run,\"compactions\":$((c1 - c0)),\"rss_peak_kib\":$peak,\"rss_median_kib\":$med,\"rss_samples\":$(wc -l <"$samples"),\"hwm_kib\":$(hwm_kib "$pid"),\"result\":$json}" >>"$RAW"
                key="$s,$cell"
                CP99[$key]+=" $(field "$json" p99_us)"
                CP999[$key]+=" $(field "$json" p999_us)"
                COPS[$key]+=" $(field "$json" ops_per_sec)"
                CPEAK[$key]+=" $peak"
                CMED[$key]+=" $med"
                CCOMP[$key]+=" $((c1 - c0))"
                log "compact $cell run $run $s: $(field "$json" ops_per_sec) ops/s, p99 $(field "$json" p99_us) us," \
                    "max $(field "$json" max_us) us, $((c1 - c0)) compactions, RSS median $med peak $peak KiB"
            done
        done
    done
    for s in "${CSERVERS[@]}"; do
        log "$s: VmHWM $(hwm_kib "${CPID[$s]}") KiB, log_bytes $(kv_stat "${CADDR[$s]}" log_bytes)"
        stop "${CPID[$s]}"
    done
    echo "## During compaction ($KEYS keys; --compact-min-bytes $COMPACT_MIN vs $NEVER_COMPACT; median of $RUNS; ${COMPACT_DURATION}s after ${WARMUP}s warm-up)"
    echo
    echo "| cell | server | compactions per run | ops/s | p99 us | p99.9 us | RSS median (MiB) | RSS peak (MiB) |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
    for cell in $COMPACT_CELLS; do
        for s in "${CSERVERS[@]}"; do
            key="$s,$cell"
            echo "| $cell | $s | $(median <<<"${CCOMP[$key]}") | $(median <<<"${COPS[$key]}") | $(median <<<"${CP99[$key]}")" \
                "| $(median <<<"${CP999[$key]}") | $(mib "$(median <<<"${CMED[$key]}")") | $(mib "$(median <<<"${CPEAK[$key]}")") |"
        done
    done
    echo
    echo "| cell | p99 compacting / not | peak RSS compacting - median RSS not compacting (MiB) | peak - own median (MiB) |"
    echo "|---|---:|---:|---:|"
    for cell in $COMPACT_CELLS; do
        pc=$(median <<<"${CPEAK[kv-compact,$cell]}")
        echo "| $cell | $(ratio "$(median <<<"${CP99[kv-compact,$cell]}")" "$(median <<<"${CP99[kv-nocompact,$cell]}")")" \
            "| $(awk -v a="$pc" -v b="$(median <<<"${CMED[kv-nocompact,$cell]}")" 'BEGIN { printf "%.1f", (a - b) / 1024 }')" \
            "| $(awk -v a="$pc" -v b="$(median <<<"${CMED[kv-compact,$cell]}")" 'BEGIN { printf "%.1f", (a - b) / 1024 }') |"
    done
    echo
fi
log "raw results: $RAW"
