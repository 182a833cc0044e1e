#!/usr/bin/env bash
# Smoke run of the container image: builds it from the Dockerfile, then
#   1. `tenantgate up` in one container (SQLite, read-only root filesystem):
#      admin API -> create tenant -> create API key -> request through the proxy ->
#      the demo upstream answers with the injected x-tenant-id (never the client's);
#   2. a fleet in containers (migrate, admin API, demo upstream, two proxies) on the
#      host's PostgreSQL (a database created for the run and dropped after) and Redis
#      (a key prefix of its own): the same flow through both proxies, a shared Redis rate
#      limit (429 with Retry-After), a revocation reaching both proxies, SIGTERM -> exit 0;
#   3. the Kubernetes sidecar example (deploy/kubernetes/sidecar/) with `podman kube play`
#      on the fleet's database: the application reachable on 127.0.0.1 only, requests
#      through the sidecar proxy. The manifest is played as written except: the local
#      image, one replica, host-network ports moved off the defaults (and the containers'
#      `ports:` lists dropped, which podman refuses on the host network), the local rate
#      limiter (the host's Redis is shared with others), and a Secret made for the run.
#
# Made for a machine without a container registry and with podman (Debian's podman, runc,
# debootstrap; run as root):
#   - base image: `debootstrap --variant=minbase bookworm` imported as localhost/debian:bookworm
#   - the Rust builder image is not available, so the image is built with
#     BINARY_SOURCE=prebuilt from a release binary built on this host (Debian bookworm,
#     the runtime image's glibc): TG_SMOKE_BINARY, else $CARGO_TARGET_DIR/release/tenantgate
#     or target/release/tenantgate, built with `nice -n 19 cargo build --release` if missing
#   - podman: vfs storage, runc, cgroupfs, no default ulimits (crun fails here on cgroups
#     and setrlimit), host networking with non-default ports (other tenantgates may run on
#     8080/8081/8082/9090)
# With a registry and docker, `docker compose up --build` runs the same services.
#
#   deploy/smoke.sh                 build the image, run both scenarios
#   deploy/smoke.sh --only-up       scenario 1 only (no PostgreSQL/Redis needed)
#   deploy/smoke.sh --keep          leave the containers (and the database) for a look
# Environment: TG_SMOKE_BINARY, TG_SMOKE_WORK (podman config and base rootfs; default
# ~/.cache/tenantgate-smoke), TG_SMOKE_PORT (first port, default 28080;
# the run uses it up to +1310), TG_SMOKE_PG
# (default postgres://postgres@127.0.0.1:5432), TG_SMOKE_REDIS (default redis://127.0.0.1:6379).
# Functions below run from trap and through `check`: shellcheck cannot see those calls.
# shellcheck disable=SC2317
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

only_up=0
keep=0
for arg in "$@"; do
  case $arg in
    --only-up) only_up=1 ;;
    --keep) keep=1 ;;
    -h | --help)
      sed -n '2,/^# Functions below/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

work=${TG_SMOKE_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantgate-smoke}
port=${TG_SMOKE_PORT:-28080}
pg_base=${TG_SMOKE_PG:-postgres://postgres@127.0.0.1:5432}
redis_url=${TG_SMOKE_REDIS:-redis://127.0.0.1:6379}
run_id=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
image=localhost/tenantgate:smoke
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

passed=0
failed=0
containers=()
volumes=()
database=""

say() { printf '[smoke %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
ok() {
  passed=$((passed + 1))
  printf '  ok    %s\n' "$*"
}
bad() {
  failed=$((failed + 1))
  printf '  FAIL  %s\n' "$*"
}
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

# --- podman on this machine ---------------------------------------------------------------

need() { command -v "$1" >/dev/null 2>&1; }
if ! need podman || ! need runc || ! need debootstrap; then
  say "installing podman, runc, debootstrap (apt)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
mkdir -p "$work"
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$work/containers.conf
pm() { podman --storage-driver vfs "$@"; }

kube=""
kube_down() {
  pm play kube --down "$kube/sidecar.yaml" >/dev/null 2>&1 || true
  pm secret rm tenantgate >/dev/null 2>&1 || true
  pm volume rm -f orders-tenantgate >/dev/null 2>&1 || true # the ConfigMap, as podman mounts it
}

cleanup() {
  local rc=$?
  if ((keep)); then
    say "--keep: containers ${containers[*]:-none}, database ${database:-none} left in place"
    return "$rc"
  fi
  if [[ -n ${kube:-} && -f $kube/sidecar.yaml ]]; then kube_down; fi
  for c in "${containers[@]}"; do pm rm -f -v -t 5 "$c" >/dev/null 2>&1 || true; done
  for v in "${volumes[@]}"; do pm volume rm -f "$v" >/dev/null 2>&1 || true; done
  if [[ -n $database ]]; then
    dropdb --if-exists -h 127.0.0.1 -U postgres "$database" >/dev/null 2>&1 || true
    redis-cli -u "$redis_url" --scan --pattern "${database}*" 2>/dev/null |
      xargs -r redis-cli -u "$redis_url" del >/dev/null 2>&1 || true
  fi
  rm -rf "$root/.prebuilt"
  return "$rc"
}
trap cleanup EXIT

for p in $(seq "$port" $((port + 3))) $((port + 100)) $((port + 101)) $((port + 102)) $((port + 200)) \
  $((port + 300)) $((port + 302)) $((port + 1010)) $((port + 1110)) $((port + 1210)) $((port + 1310)); do
  if ss -ltnH "sport = :$p" | grep -q .; then
    echo "port $p is in use: set TG_SMOKE_PORT to a free range" >&2
    exit 1
  fi
done

# --- images -------------------------------------------------------------------------------

if ! pm image exists localhost/debian:bookworm; then
  say "base image: debootstrap --variant=minbase bookworm (a few minutes)"
  rm -rf "$work/rootfs-bookworm"
  debootstrap --variant=minbase bookworm "$work/rootfs-bookworm" >"$work/debootstrap.log" 2>&1
  tar -C "$work/rootfs-bookworm" -c . | pm import - localhost/debian:bookworm >/dev/null
fi

binary=${TG_SMOKE_BINARY:-${CARGO_TARGET_DIR:-$root/target}/release/tenantgate}
if [[ ! -x $binary ]]; then
  say "no binary at $binary: cargo build --release (5-25 minutes on 2 cores)"
  nice -n 19 cargo build --release --locked --bin tenantgate
fi
mkdir -p "$root/.prebuilt"
cp "$binary" "$root/.prebuilt/tenantgate"
strip "$root/.prebuilt/tenantgate" 2>/dev/null || true

say "podman build (BINARY_SOURCE=prebuilt, RUNTIME_IMAGE=localhost/debian:bookworm)"
build_started=$SECONDS
# (--layers=false trips a buildah 1.28 bug with the binary stage alias: "identifier is not an image")
pm build --isolation chroot --network host \
  --build-arg BUILDER_IMAGE=localhost/debian:bookworm \
  --build-arg RUNTIME_IMAGE=localhost/debian:bookworm \
  --build-arg BINARY_SOURCE=prebuilt \
  -t "$image" -f Dockerfile . >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log"
  bad "image builds"
  exit 1
}
ok "image builds ($((SECONDS - build_started)) s, $(pm image inspect "$image" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
check "image runs as uid 10001" test "$(pm image inspect "$image" --format '{{.Config.User}}')" = "10001:10001"
check "tenantgate --help in the image" pm run --rm --network host "$image" --help >/dev/null

# --- helpers ------------------------------------------------------------------------------

# run NAME ARGS...: a detached container on the host network, removed by cleanup.
run() {
  local name=$1
  shift
  containers+=("$name")
  pm run -d --name "$name" --network host "$@" >/dev/null
}

wait_http() { # URL [seconds]
  local url=$1 deadline=$((SECONDS + ${2:-30}))
  while ((SECONDS < deadline)); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.3
  done
  echo "no answer from $url" >&2
  return 1
}

# api METHOD URL [BODY]: sets $status and $body (and $headers).
api() {
  local method=$1 url=$2 data=${3:-}
  local args=(-sS -X "$method" -H "Authorization: Bearer $token" -D "$work/headers" -o "$work/body" -w '%{http_code}')
  [[ -n $data ]] && args+=(-H 'content-type: application/json' -d "$data")
  status=$(curl "${args[@]}" "$url")
  body=$(cat "$work/body")
  headers=$(cat "$work/headers")
}

# through PROXY_URL PATH KEY [extra curl args]: a request with an API key; sets $status, $body, $headers.
through() {
  local proxy=$1 path=$2 key=$3
  shift 3
  status=$(curl -sS -H "X-API-Key: $key" -D "$work/headers" -o "$work/body" -w '%{http_code}' "$@" "$proxy$path")
  body=$(cat "$work/body")
  headers=$(cat "$work/headers")
}

json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {"d": d}))' "$1" <<<"$body"; }

stopped_cleanly() { # NAME: SIGTERM, then the exit code must be 0
  pm stop -t 20 "$1" >/dev/null
  test "$(pm inspect "$1" --format '{{.State.ExitCode}}')" = 0
}

# flow ADMIN_URL PROXY_URL TENANT: tenant -> key -> request through the proxy.
flow() {
  local admin=$1 proxy=$2 tenant=$3
  api POST "$admin/v1/tenants" "{\"id\":\"$tenant\",\"name\":\"Smoke $tenant\",\"tier\":\"pro\"}"
  check "admin: POST /v1/tenants -> 201" test "$status" = 201
  api POST "$admin/v1/tenants/$tenant/api-keys" '{"name":"smoke","role":"developer"}'
  check "admin: POST /v1/tenants/$tenant/api-keys -> 201" test "$status" = 201
  key=$(json 'd["key"]')
  key_id=$(json 'd["id"]')
  through "$proxy" /api/v1/whoami "$key" -H 'x-tenant-id: evil' -H 'x-user-id: mallory'
  check "proxy: GET /api/v1/whoami -> 200" test "$status" = 200
  check "upstream saw x-tenant-id: $tenant (client sent evil)" test "$(json 'd["tenant_id"]')" = "$tenant"
  check "upstream saw x-auth-method: api_key, x-api-key-id: the key" \
    test "$(json 'd["auth_method"] + " " + d["api_key_id"]')" = "api_key $key_id"
  check "proxy response carries RateLimit-Limit" grep -qi '^ratelimit-limit:' <<<"$headers"
  through "$proxy" /api/v1/resources "$key" -H 'content-type: application/json' -d '{"name":"doc","data":{"n":1}}'
  check "proxy: POST /api/v1/resources -> 201" test "$status" = 201
  through "$proxy" /api/v1/whoami "not-a-key"
  check "proxy: a bad key -> 401 invalid_api_key" test "$status $(json 'd["error"]["code"]')" = "401 invalid_api_key"
}

# --- 1. tenantgate up (SQLite) --------------------------------------------------------------

say "scenario 1: tenantgate up in one container (SQLite), ports $port-$((port + 2)), $((port + 1010))"
A=http://127.0.0.1:$((port + 1))
P=http://127.0.0.1:$port
volumes+=("tg-smoke-up-$run_id")
run "tg-smoke-up-$run_id" --read-only -v "tg-smoke-up-$run_id:/var/lib/tenantgate/data" \
  -e TENANTGATE_ADMIN_TOKEN="$token" \
  -e TENANTGATE__PROXY__LISTEN="\"127.0.0.1:$port\"" \
  -e TENANTGATE__PROXY__ADMIN_LISTEN="\"127.0.0.1:$((port + 1010))\"" \
  -e TENANTGATE__ADMIN__LISTEN="\"127.0.0.1:$((port + 1))\"" \
  -e TENANTGATE__UPSTREAM_DEMO__LISTEN="\"127.0.0.1:$((port + 2))\"" \
  "$image"
check "up: admin API and proxy healthy" wait_http "$A/health" 60
wait_http "http://127.0.0.1:$((port + 1010))/health" 30 || true
flow "$A" "$P" "smoke-$run_id"
check "up: SIGTERM -> exit 0" stopped_cleanly "tg-smoke-up-$run_id"

if ((only_up)); then
  say "smoke: $passed passed, $failed failed"
  exit $((failed > 0))
fi

# --- 2. fleet on PostgreSQL and Redis ---------------------------------------------------------

database=tg_smoke_$run_id
say "scenario 2: fleet on PostgreSQL ($database) and Redis (prefix $database)"
createdb -h 127.0.0.1 -U postgres "$database"
store_url="$pg_base/$database"
fleet_env=(
  -e TENANTGATE_ADMIN_TOKEN="$token"
  -e TENANTGATE__ADMIN__SECRET_KEY="smoke-secret-key-$run_id-0123456789abcdef"
  -e TENANTGATE__SECURITY__API_KEY_PEPPER="smoke-pepper-$run_id"
  -e TENANTGATE__STORE__URL="$store_url"
  -e TENANTGATE__REDIS__URL="$redis_url"
  -e TENANTGATE__REDIS__KEY_PREFIX="\"$database\""
  -e TENANTGATE__RATELIMIT__BACKEND='"redis"'
  -e TENANTGATE__LOG__FORMAT='"json"'
)
fleet_cfg=(--config /etc/tenantgate/fleet.example.toml)
FA=http://127.0.0.1:$((port + 101))
P1=http://127.0.0.1:$((port + 100))
P2=http://127.0.0.1:$((port + 200))
demo=127.0.0.1:$((port + 102))

check "fleet: migrate -> exit 0" pm run --rm --network host "${fleet_env[@]}" "$image" migrate "${fleet_cfg[@]}"
run "tg-smoke-admin-$run_id" "${fleet_env[@]}" -e TENANTGATE__ADMIN__LISTEN="\"127.0.0.1:$((port + 101))\"" \
  "$image" admin "${fleet_cfg[@]}"
run "tg-smoke-demo-$run_id" "${fleet_env[@]}" -e TENANTGATE__UPSTREAM_DEMO__LISTEN="\"$demo\"" \
  "$image" demo-upstream "${fleet_cfg[@]}"
for n in 1 2; do
  run "tg-smoke-proxy$n-$run_id" "${fleet_env[@]}" \
    -e TENANTGATE__PROXY__LISTEN="\"127.0.0.1:$((port + n * 100))\"" \
    -e TENANTGATE__PROXY__ADMIN_LISTEN="\"127.0.0.1:$((port + 1010 + n * 100))\"" \
    -e TENANTGATE__METERING__NODE_ID="\"smoke-proxy$n\"" \
    -e TENANTGATE__ROUTES="[{prefix = \"/api/v1/\", upstream = \"$demo\"}]" \
    "$image" proxy "${fleet_cfg[@]}"
done
check "fleet: admin API healthy (store reachable)" wait_http "$FA/health" 60
check "fleet: demo upstream healthy" wait_http "http://$demo/health" 60
check "fleet: proxy1 and proxy2 healthy" wait_http "http://127.0.0.1:$((port + 1110))/health" 60
wait_http "http://127.0.0.1:$((port + 1210))/health" 30 || true
if ((failed > 0)); then
  for c in "${containers[@]}"; do
    echo "        --- last log lines of $c:"
    pm logs --tail 5 "$c" 2>&1 | sed 's/^/        /'
  done
  say "smoke: $passed passed, $failed failed (the fleet did not start)"
  exit 1
fi

tenant="fleet-$run_id"
flow "$FA" "$P1" "$tenant"
through "$P2" /api/v1/whoami "$key"
check "proxy2: the same key -> 200, tenant $tenant" test "$status $(json 'd["tenant_id"]')" = "200 $tenant"

# A shared limit of 5 a minute across both proxies (Redis): 12 requests, alternating.
api PUT "$FA/v1/tenants/$tenant/rate-limit" '{"max_requests":5,"window_seconds":60}'
check "admin: PUT rate-limit 5/60s -> 200" test "$status" = 200
sleep 1.5
admitted=0 limited=0 retry_after=""
for i in $(seq 1 12); do
  if ((i % 2)); then through "$P1" /api/v1/whoami "$key"; else through "$P2" /api/v1/whoami "$key"; fi
  case $status in
    200) admitted=$((admitted + 1)) ;;
    429)
      limited=$((limited + 1))
      retry_after=$(grep -i '^retry-after:' <<<"$headers" | tr -d '\r' | awk '{print $2}')
      ;;
  esac
done
echo "        12 requests through 2 proxies, limit 5: $admitted admitted, $limited refused 429 (Retry-After: ${retry_after:-none})"
check "shared limit: at most 6 admitted, the rest 429 with Retry-After" \
  test "$admitted" -le 6 -a "$limited" -ge 6 -a -n "$retry_after"

# Revocation reaches both proxies (contract: within 1 s).
api DELETE "$FA/v1/tenants/$tenant/api-keys/$key_id"
check "admin: DELETE api-key -> 204" test "$status" = 204
revoked_at=$(date +%s.%N)
deadline=$((SECONDS + 5))
s1="" s2=""
while ((SECONDS < deadline)); do
  through "$P1" /api/v1/whoami "$key"
  s1=$status
  through "$P2" /api/v1/whoami "$key"
  s2=$status
  [[ $s1 == 401 && $s2 == 401 ]] && break
  sleep 0.1
done
lag=$(python3 -c "import time; print(f'{time.time() - $revoked_at:.2f}')")
check "revoked key -> 401 on both proxies (after ${lag} s)" test "$s1 $s2" = "401 401"

metrics=$(curl -fsS "http://127.0.0.1:$((port + 1110))/metrics")
check "proxy /metrics: tenantgate_proxy_requests_total, change lag, Redis limiter" \
  grep -q 'tenantgate_ratelimit_redis_calls_total' <<<"$metrics"
grep -E '^tenantgate_proxy_requests_total|^tenantgate_proxy_change_lag_seconds|^tenantgate_ratelimit_(redis_calls|leased_decisions)_total' <<<"$metrics" | sed 's/^/        /'

# --- 3. the Kubernetes sidecar example with podman kube play ----------------------------------

say "scenario 3: deploy/kubernetes/sidecar with podman kube play (host network, ports $((port + 300)), $((port + 302)), $((port + 1310)))"
api POST "$FA/v1/tenants/$tenant/api-keys" '{"name":"sidecar","role":"read_only"}'
check "admin: a read_only key for the sidecar -> 201" test "$status" = 201
key=$(json 'd["key"]')
kube=$work/kube-$run_id
mkdir -p "$kube"
# The Secret `tenantgate` the manifest refers to. podman 4.3 resolves secretKeyRef from a
# podman secret holding a JSON object of base64 values (a Secret's `data`).
python3 -c 'import base64, json, sys
keys = ["store-url", "redis-url", "api-key-pepper"]
print(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in zip(keys, sys.argv[1:])}))' \
  "$store_url" "$redis_url" "smoke-pepper-$run_id" >"$kube/secret.json"
# podman refuses containers' `ports:` (port mappings) on the host network: they are
# dropped, and the probes that name a port get its number.
sed -e "s|ghcr.io/OWNER/tenantgate:0.1.0|$image|" \
  -e 's|replicas: 2|replicas: 1|' \
  -e "s|0.0.0.0:8080|127.0.0.1:$((port + 300))|" \
  -e "s|0.0.0.0:9090|127.0.0.1:$((port + 1310))|; s|port: health|port: $((port + 1310))|" \
  -e "s|127.0.0.1:8000|127.0.0.1:$((port + 302))|g" \
  -e 's|backend = "redis"|backend = "local"|' \
  deploy/kubernetes/sidecar/app-with-tenantgate.yaml |
  awk '/^          ports:$/ { skip = 1; next } skip && /^            / { next } { skip = 0; print }' \
    >"$kube/sidecar.yaml"
if pm secret create tenantgate "$kube/secret.json" >"$kube/play.log" 2>&1 &&
  pm play kube --network host "$kube/sidecar.yaml" >>"$kube/play.log" 2>&1; then
  ok "podman kube play: ConfigMap, Deployment (app + tenantgate), env from the Secret"
  check "sidecar: proxy healthy" wait_http "http://127.0.0.1:$((port + 1310))/health" 60
  wait_http "http://127.0.0.1:$((port + 302))/health" 30 || true
  app_listen=$(ss -ltnH "sport = :$((port + 302))" | awk '{print $4}' | sort -u | tr '\n' ' ')
  check "sidecar: the app listens on 127.0.0.1 only ($app_listen)" test "$app_listen" = "127.0.0.1:$((port + 302)) "
  through "http://127.0.0.1:$((port + 300))" /api/v1/whoami "$key" -H 'x-tenant-id: evil'
  check "sidecar: GET /api/v1/whoami -> 200, x-tenant-id $tenant, role read_only" \
    test "$status $(json 'd["tenant_id"] + " " + d["role"]')" = "200 $tenant read_only"
  through "http://127.0.0.1:$((port + 300))" /api/v1/resources "$key" -H 'content-type: application/json' -d '{"name":"x"}'
  check "sidecar: POST as read_only -> 403 forbidden" test "$status $(json 'd["error"]["code"]')" = "403 forbidden"
else
  sed 's/^/        /' "$kube/play.log"
  bad "podman kube play of deploy/kubernetes/sidecar/app-with-tenantgate.yaml"
fi
kube_down

for c in "tg-smoke-proxy1-$run_id" "tg-smoke-proxy2-$run_id" "tg-smoke-admin-$run_id" "tg-smoke-demo-$run_id"; do
  check "${c%-"$run_id"}: SIGTERM -> exit 0" stopped_cleanly "$c"
done
usage=$(psql -h 127.0.0.1 -U postgres -d "$database" -Atc "select coalesce(sum(requests),0) from usage_minute where tenant_id = '$tenant'" 2>/dev/null || echo "?")
echo "        requests metered for $tenant in PostgreSQL after shutdown: $usage"

say "smoke: $passed passed, $failed failed"
exit $((failed > 0))
