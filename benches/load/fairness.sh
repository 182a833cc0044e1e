#!/usr/bin/env bash
# Fairness under abuse: a well-behaved tenant's throughput alone, while a flood hits
# another server on the same machine (control: the load generator's own cost), and
# while the flood hits tenantgate — a free-tier tenant far past its limit (429s)
# and clients with no credential (401s). On 127.0.0.1 only, bounded in time.
#
#   benches/load/fairness.sh [--dur S] [--rounds N] [--fairness on|off|both] [--tg BIN] [--json FILE]
#
#   --dur S       seconds per measurement (default 5)
#   --rounds N    rounds of the four measurements; each row keeps its best (default 3)
#   --fairness    run with [proxy.fairness] on (default), off, or both (the comparison)
#   --tg BIN      the tenantgate binary (default target/release/tenantgate, built if missing)
#   --json FILE   append one JSON line per row (benches/load/run.sh collects them)
#
# As an operator runs it: `tenantgate up` with its default worker threads, not
# pinned; the upstream one nginx worker; wrk for the well-behaved tenant with 1
# thread and 4 keep-alive connections, the flood with 1 thread and 64.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DUR=5 ROUNDS=3 MODES="on" TG="" JSON=""
while (($#)); do
    case "$1" in
        --dur) DUR="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --fairness)
            case "$2" in on) MODES="on" ;; off) MODES="off" ;; both) MODES="off on" ;;
                *) echo "--fairness takes on, off or both" >&2; exit 2 ;; esac
            shift ;;
        --tg) TG="$2"; shift ;;
        --json) JSON="$2"; shift ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$DUR" =~ ^[1-9][0-9]?$ ]] || { echo "--dur takes 1..99" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9]$ ]] || { echo "--rounds takes 1..9" >&2; exit 2; }

log() { printf '\033[1m[fairness %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for tool in wrk nginx curl python3; do
    command -v "$tool" >/dev/null || { log "missing $tool (benches/load/run.sh installs it)"; exit 1; }
done
if [ -z "$TG" ]; then
    TG="$ROOT/target/release/tenantgate"
    [ -x "$TG" ] || (cd "$ROOT" && cargo build --release 2>&1 | tail -n 2 >&2)
fi

PORT=18680 ADMIN_PORT=18681 DEMO_PORT=18682 METRICS_PORT=19680 NGINX_PORT=18690
U=http://127.0.0.1
TOKEN="tga_fair_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WORK="$(mktemp -d /tmp/tg-fair.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() {
    for _ in $(seq 300); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done
    return 1
}

mkdir -p "$WORK/nginx-body"
sed -e "s#@WORK@#$WORK#g; s#@UPSTREAM_PORT@#$NGINX_PORT#g" "$HERE/conf/nginx.conf" >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.log" 2>&1 &
PIDS+=("$!")
wait_http "$U:$NGINX_PORT/" || { log "nginx did not start"; exit 1; }

# wrk's requests per second, and its non-2xx count, from its summary.
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
wrk_non2xx() { awk '/Non-2xx or 3xx responses:/ {print $5}' "$1"; }

# measure ID FLOOD_URL FLOOD_HEADER: the well-behaved load for DUR s while the
# flood (if any) runs; appends "ID good_rps flood_rps flood_non2xx rss_kb".
measure() {
    local id="$1" flood_url="$2" flood_hdr="$3" fpid=""
    if [ -n "$flood_url" ]; then
        if [ -n "$flood_hdr" ]; then
            wrk -t1 -c64 -d"$((DUR + 2))s" --timeout 10s -H "$flood_hdr" "$flood_url" >"$WORK/flood.out" 2>&1 &
        else
            wrk -t1 -c64 -d"$((DUR + 2))s" --timeout 10s "$flood_url" >"$WORK/flood.out" 2>&1 &
        fi
        fpid=$!
        sleep 1
    fi
    wrk -t1 -c4 -d"${DUR}s" -H "X-API-Key: $GOOD_KEY" "$U:$PORT/api/v1/echo" >"$WORK/good.out" 2>&1
    local rss
    rss="$(awk '/VmRSS/ {print $2}' "/proc/$TGP/status")"
    local frps="" fnon=""
    if [ -n "$fpid" ]; then
        wait "$fpid" || true
        frps="$(wrk_rps "$WORK/flood.out")"
        fnon="$(wrk_non2xx "$WORK/flood.out")"
    fi
    local gnon
    gnon="$(wrk_non2xx "$WORK/good.out")"
    echo "$id $(wrk_rps "$WORK/good.out") ${frps:-0} ${fnon:-0} $rss ${gnon:-0}" >>"$WORK/rows.txt"
}

for MODE in $MODES; do
    rm -rf "$WORK/data" "$WORK"/tg.db*
    enabled=true
    [ "$MODE" = off ] && enabled=false
    cat >"$WORK/tenantgate.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$METRICS_PORT"

[proxy.fairness]
enabled = $enabled

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
bootstrap_token = "$TOKEN"

[upstream_demo]
listen = "127.0.0.1:$DEMO_PORT"

[store]
url = "sqlite://$WORK/tg.db"
data_dir = "$WORK/data"

[log]
level = "warn"

[[routes]]
prefix = "/api/v1/"
upstream = "127.0.0.1:$NGINX_PORT"
EOF
    "$TG" up --config "$WORK/tenantgate.toml" >"$WORK/tenantgate-$MODE.log" 2>&1 &
    TGP=$!
    PIDS+=("$TGP")
    wait_http "$U:$METRICS_PORT/health" && wait_http "$U:$ADMIN_PORT/health" ||
        { log "tenantgate did not start ($WORK/tenantgate-$MODE.log)"; exit 1; }
    key() { # TENANT TIER -> a member key
        curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
            -d "{\"id\":\"$1\",\"name\":\"$1\",\"tier\":\"$2\"}" "$U:$ADMIN_PORT/v1/tenants"
        curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
            -d '{"name":"load","role":"developer"}' "$U:$ADMIN_PORT/v1/tenants/$1/api-keys" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
    }
    GOOD_KEY="$(key good enterprise)"
    # Well-behaved: its limit is above what it sends (enterprise's default, 10000 a
    # minute, would make it a flooder too).
    curl -s -o /dev/null -X PUT -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        -d '{"max_requests": 1000000000, "window_seconds": 60}' "$U:$ADMIN_PORT/v1/tenants/good/rate-limit"
    NOISY_KEY="$(key noisy free)"
    # warm-up
    wrk -t1 -c4 -d1s -H "X-API-Key: $GOOD_KEY" "$U:$PORT/api/v1/echo" >/dev/null 2>&1
    : >"$WORK/rows.txt"
    for r in $(seq "$ROUNDS"); do
        log "fairness $MODE: round $r of $ROUNDS"
        measure alone "" ""
        measure control "$U:$NGINX_PORT/api/v1/echo" "X-API-Key: $NOISY_KEY"
        measure flood_429 "$U:$PORT/api/v1/echo" "X-API-Key: $NOISY_KEY"
        measure flood_401 "$U:$PORT/api/v1/echo" ""
    done
    curl -s "$U:$METRICS_PORT/metrics" | grep -E '^tenantgate_(fairness|proxy_tenant_refusals_shed)' >"$WORK/metrics-$MODE.txt" || true
    kill "$TGP" 2>/dev/null || true
    wait "$TGP" 2>/dev/null || true
    python3 - "$WORK/rows.txt" "$MODE" "$DUR" "$ROUNDS" "$WORK/metrics-$MODE.txt" "${JSON:-/dev/null}" <<'PY'
import json, sys
rows_file, mode, dur, rounds, metrics_file, json_out = sys.argv[1:]
best = {}
for line in open(rows_file):
    rid, good, flood, non2xx, rss, good_non2xx = line.split()
    r = dict(good_rps=float(good), flood_rps=float(flood), flood_non2xx=int(non2xx),
             rss_kb=int(rss), good_non2xx=int(good_non2xx))
    if rid not in best or r["good_rps"] > best[rid]["good_rps"]:
        best[rid] = r
control = best.get("control", {}).get("good_rps") or 0
alone = best.get("alone", {}).get("good_rps") or 0
out = open(json_out, "a")
for rid in ("alone", "control", "flood_429", "flood_401"):
    if rid not in best:
        continue
    r = best[rid]
    r.update(id=f"fair_{mode}_{rid}", fairness=mode, scenario=rid, duration_s=int(dur), rounds=int(rounds),
             vs_control=round(r["good_rps"] / control, 3) if control else None,
             vs_alone=round(r["good_rps"] / alone, 3) if alone else None)
    print(json.dumps(r), file=out)
    print(f"fairness {mode:3} {rid:9}: good {r['good_rps']:9,.0f} req/s"
          f" ({r['vs_control'] if r['vs_control'] is not None else '-'} x control),"
          f" flood {r['flood_rps']:9,.0f} req/s, proxy RSS {r['rss_kb'] / 1024:.1f} MB,"
          f" good non-2xx {r['good_non2xx']}", file=sys.stderr)
print(open(metrics_file).read().strip(), file=sys.stderr)
PY
done
