#!/usr/bin/env bash
# Instructions per request under callgrind: a cost measure that does not move with
# the machine's other load (wall-clock rows on a shared VM move 10-20 % between runs;
# these a few per cent, mostly the once-a-second work's share).
#
#   benches/load/callgrind.sh TG CONFIG PROXY_URL HEALTH_URL OUT_JSONL SCENARIO...
#
# SCENARIO is ID:PATH:FILE:MODE (MODE as in multi.lua: none, apikey, bearer). For each
# one: 3 s warm-ups until one has sent the whole credential list (no cache misses left
# to count), counters zeroed, 5 s of wrk (one thread, four connections: the proxy runs
# ~50x slower under valgrind), counters dumped; the JSON line written is
# {"id", "requests", "ir", "ir_per_req"}. Started by run.sh --callgrind on the store
# its main scenarios used; the proxy is pinned to $PROXY_CPU, wrk to $LOAD_CPU.
#
# Two things differ from a native run and are not what the proxy costs there: SHA-256
# runs in software (valgrind has no SHA-NI, ~3.5k instructions a 64-byte block instead
# of a few hundred cycles), and work done once per second (the usage flush) is spread
# over ~700 requests a second instead of tens of thousands.
set -euo pipefail

TG="$1" CONFIG="$2" PROXY_URL="$3" HEALTH_URL="$4" OUT="$5"
shift 5
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROXY_CPU="${PROXY_CPU:-0}" LOAD_CPU="${LOAD_CPU:-0}"
DIR="$(mktemp -d /tmp/tg-callgrind.XXXXXX)"

command -v valgrind >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}

taskset -c "$PROXY_CPU" valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
    --callgrind-out-file="$DIR/cg.%p.out" "$TG" proxy --config "$CONFIG" >"$DIR/proxy.log" 2>&1 &
VG=$!
trap 'kill "$VG" 2>/dev/null || true; wait "$VG" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -s -o /dev/null --max-time 2 "$HEALTH_URL" && break
    kill -0 "$VG" 2>/dev/null || { echo "callgrind: the proxy exited: $(tail -n 3 "$DIR/proxy.log")" >&2; exit 1; }
    sleep 0.2
done

wrk_requests() { # URL FILE MODE SECONDS LABEL
    taskset -c "$LOAD_CPU" wrk -t1 -c4 -d"$4s" --timeout 10s -s "$HERE/multi.lua" "$1" -- "$2" "$3" seq 1 "$5" |
        sed -n 's/^RESULT //p' | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])'
}

for sc in "$@"; do
    IFS=: read -r id path file mode <<<"$sc"
    # Warm up until one run has sent every credential of the list (each run starts
    # at its first line), so the measured run has no cache misses left: under
    # valgrind a first pass that loads every key can take longer than 3 s.
    creds="$(grep -c . "$file" || true)"
    for _ in 1 2 3 4 5; do
        sent="$(wrk_requests "$PROXY_URL$path" "$file" "$mode" 3 warm)"
        [ "$sent" -ge "$creds" ] && break
    done
    callgrind_control -z "$VG" >/dev/null 2>&1
    n="$(wrk_requests "$PROXY_URL$path" "$file" "$mode" 5 "$id")"
    callgrind_control -d "$id" "$VG" >/dev/null 2>&1
    dump=""
    for _ in $(seq 100); do
        dump="$(ls -t "$DIR"/cg.*.out.* 2>/dev/null | head -n 1 || true)"
        [ -n "$dump" ] && grep -q '^summary:' "$dump" && break
        sleep 0.1
    done
    ir="$(awk '/^summary:/ {print $2; exit}' "$dump")"
    rm -f "$dump"
    printf '{"id":"cg_%s","requests":%s,"ir":%s,"ir_per_req":%s}\n' "$id" "$n" "$ir" "$((ir / n))" >>"$OUT"
    echo "callgrind $id: $n requests, $((ir / n)) instructions a request" >&2
done
