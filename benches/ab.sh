#!/usr/bin/env bash
# benches/ab.sh: before/after for kv itself. Runs the same `kv bench` cells against
# several kv server binaries, alternating between them within each cell, and prints
# the median ops/s, p99 and server CPU seconds per million requests of each.
#
#   benches/ab.sh NAME=PATH [NAME=PATH ...]
#   e.g. benches/ab.sh before=/tmp/kv-before after=target/release/kv
#
# Knobs (environment): CELLS="1x1 8x1 64x1 64x16" RUNS=3 DURATION=5 WARMUP=1
#   KEYS=100000 VALUE_SIZE=32 GET_RATIO=0.5 BENCH=target/release/kv (the load generator)
# Not part of CI; installs nothing; stops every server it started.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

CELLS=${CELLS:-"1x1 8x1 64x1 64x16"}
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-32}
GET_RATIO=${GET_RATIO:-0.5}
BENCH=${BENCH:-target/release/kv}
OUT=${OUT:-target/ab}
mkdir -p "$OUT"
RAW="$OUT/ab-$(date +%Y%m%d-%H%M%S).jsonl"

if (($# == 0)); then
    echo "usage: benches/ab.sh NAME=PATH [NAME=PATH ...]" >&2
    exit 2
fi
[[ -x $BENCH ]] || cargo build --release --quiet

STARTED=()
cleanup() {
    for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${STARTED[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TICKS=$(getconf CLK_TCK)

declare -A ADDR PID
NAMES=()
for spec in "$@"; do
    name=${spec%%=*}
    path=${spec#*=}
    NAMES+=("$name")
    log="$OUT/$name.log"
    : >"$log"
    "$path" serve --port 0 2>"$log" &
    PID[$name]=$!
    STARTED+=("$!")
    deadline=$((SECONDS + 10))
    until grep -q 'listening on' "$log"; do
        ((SECONDS < deadline)) || { echo "ab: $name did not start" >&2; exit 1; }
        sleep 0.05
    done
    ADDR[$name]=$(grep -o 'listening on [0-9.:]*' "$log" | head -1 | awk '{ print $3 }')
    "$BENCH" bench --addr "${ADDR[$name]}" --fill --keys "$KEYS" --value-size "$VALUE_SIZE" \
        --conns 4 --pipeline 16 --duration 60 >/dev/null
done

declare -A OPS P99 CPU
for cell in $CELLS; do
    conns=${cell%x*}
    pipeline=${cell#*x}
    for ((run = 1; run <= RUNS; run++)); do
        for name in "${NAMES[@]}"; do
            before=$(cpu_ticks "${PID[$name]}")
            json=$("$BENCH" bench --addr "${ADDR[$name]}" --conns "$conns" --pipeline "$pipeline" \
                --duration "$DURATION" --warmup "$WARMUP" --keys "$KEYS" --value-size "$VALUE_SIZE" \
                --get-ratio "$GET_RATIO" --json 2>>"$OUT/errors.log") || echo "ab: $name reported errors" >&2
            after=$(cpu_ticks "${PID[$name]}")
            echo "{\"name\":\"$name\",\"cell\":\"$cell\",\"run\":$run,\"cpu_ticks\":$((after - before)),\"result\":$json}" >>"$RAW"
            cpu=$(awk -v t=$((after - before)) -v hz="$TICKS" -v n="$(field "$json" ops)" -v d="$DURATION" -v w="$WARMUP" \
                'BEGIN { if (n > 0) printf "%.2f", (t / hz) * (d / (d + w)) / n * 1e6; else print "nan" }')
            OPS[$name,$cell]+=" $(field "$json" ops_per_sec)"
            P99[$name,$cell]+=" $(field "$json" p99_us)"
            CPU[$name,$cell]+=" $cpu"
            echo "ab: $cell run $run $name: $(field "$json" ops_per_sec) ops/s, p99 $(field "$json" p99_us) us, $cpu CPU s/1M" >&2
        done
    done
done

echo "| cell | $(printf '%s ops/s | ' "${NAMES[@]}")$(printf '%s p99 us | ' "${NAMES[@]}")$(printf '%s CPU s/1M | ' "${NAMES[@]}")"
echo "|---|$(for _ in "${NAMES[@]}" "${NAMES[@]}" "${NAMES[@]}"; do printf -- '---:|'; done)"
for cell in $CELLS; do
    row="| $cell |"
    for array in OPS P99 CPU; do
        declare -n values=$array
        for name in "${NAMES[@]}"; do
            row+=" $(median <<<"${values[$name,$cell]}") |"
        done
        unset -n values
    done
    echo "$row"
done
echo "(median of $RUNS; ${DURATION}s after ${WARMUP}s warm-up; raw: $RAW)"
