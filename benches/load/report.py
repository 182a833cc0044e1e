#!/usr/bin/env python3
"""Turns the load harness's results.jsonl into benches/RESULTS.md (run.sh calls it)."""

import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Which peer row a tenantgate row is compared with. The peers have no API keys: the
# API-key path is compared with their JWT path (the same job: authenticate, tenant,
# rate limit, inject).
# HAProxy 2.6 never caches a verified token, so its one JWT row is compared with both
# of tenantgate's.
PEER_CLASS = {
    "passthrough": "passthrough",
    "passthrough_proxy": "passthrough",
    "apikey": "jwt",
    "apikey_redis": "jwt",
    "jwt": "jwt",
    "jwt_uncached": "jwt_uncached",
    "401": "401",
    "401_key": "401",
    "429": "429",
}
PEER_OVERRIDE = {("haproxy", "jwt_uncached"): "jwt"}


def sh(cmd):
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip()
    except Exception:  # noqa: BLE001 - best effort description
        return ""


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "nproc": sh("nproc"),
        "cpu": cpu,
        "mem": mem,
        "kernel": platform.release(),
        "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
    }


def versions():
    envoy = os.path.expanduser(os.environ.get("TG_BENCH_CACHE", "~/.cache/tenantgate-bench"))
    envoy = os.path.join(envoy, "venv", "bin", "envoy")
    ev = sh(f"{envoy} --version").split("version:")[-1].strip() if os.path.exists(envoy) else "-"
    return {
        "tenantgate": sh(f"git -C {ROOT} describe --always --dirty"),
        "haproxy": sh("haproxy -v | head -n 1").replace("HAProxy version ", ""),
        "envoy": ev.split("/")[1] if ev.count("/") >= 2 else ev,
        "nginx": sh("nginx -v").replace("nginx version: ", ""),
        "wrk": sh("dpkg-query -W -f='${Version}' wrk"),
    }


def fmt_ratio(a, b):
    if not a or not b:
        return "–"
    return f"{a / b:.2f}×"


def criterion_rows():
    rows = []
    for bench in sorted(glob.glob(os.path.join(ROOT, "target", "criterion", "*", "*", "new", "benchmark.json"))):
        d = os.path.dirname(os.path.dirname(bench))
        try:
            with open(bench) as f:
                meta = json.load(f)
            with open(os.path.join(d, "new", "estimates.json")) as f:
                est = json.load(f)
        except (OSError, ValueError):
            continue
        ns = est.get("median", est.get("mean", {})).get("point_estimate")
        if ns is None:
            continue
        rows.append((meta.get("group_id", ""), meta.get("function_id", ""), ns, os.path.getmtime(bench)))
    return rows


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def annotate(argv):
    """run.sh: one wrk RESULT line plus what the harness knows -> one results.jsonl row."""
    line, rid, label, target, cls, expect, ticks, hz, creds, b0, b1, rep = argv
    r = json.loads(line)
    r.update(id=rid, label=label, target=target, cls=cls, expect=int(expect),
             credentials=int(creds), rep=int(rep))
    ticks, hz = int(ticks), int(hz)
    r["cpu_us_per_req"] = round(ticks / hz * 1e6 / r["requests"], 1) if r["requests"] and ticks > 0 else None
    # What else ran on the proxy's CPU meanwhile: other processes on the machine. The
    # direct-upstream row has nothing of ours pinned there, so all its busy time counts.
    busy0, tot0 = map(int, b0.split())
    busy1, tot1 = map(int, b1.split())
    own = ticks if target != "nginx" else 0
    r["cpu_other_pct"] = round(100 * max(0, (busy1 - busy0) - own) / max(1, tot1 - tot0), 1)
    print(json.dumps(r))


def describe(argv):
    r = json.loads(argv[0])
    print("%-42s %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms  CPU %s us/req  other load on CPU %s: %s%%  non-2xx %d"
          % (r["label"], r["rps"], r["p50_ms"], r["p99_ms"], r["cpu_us_per_req"], argv[1],
             r["cpu_other_pct"], r["non_2xx"]))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--annotate":
        return annotate(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "--describe":
        return describe(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--notes")
    ap.add_argument("--analysis")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="benches/load/run.sh")
    ap.add_argument("--duration", default="10")
    ap.add_argument("--reps", default="1")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--conns", default="64")
    a = ap.parse_args()

    rows, extra = [], {}
    with open(a.results) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if "rps" in r:
                rows.append(r)
            else:
                extra[r["id"]] = r
    by_id = {r["id"]: r for r in rows}
    peer = {}
    for r in rows:
        if r["target"] in ("haproxy", "envoy"):
            peer[(r["target"], r["cls"])] = r
    base = by_id.get("tg_public")
    base_rps = base["rps"] if base else None
    proxy_base = by_id.get("tg_proxy_public")

    def row_base(r):
        """Rows from the standalone `tenantgate proxy` compare with its own passthrough."""
        if r["id"].startswith(("tg_proxy_", "tg_redis_")) and proxy_base:
            return proxy_base["rps"]
        return base_rps

    m, v = machine(), versions()
    out = []
    w = out.append
    w("# tenantgate load results")
    w("")
    w("Generated by `benches/load/run.sh` (see `benches/README.md`); the stage")
    w("micro-benchmarks at the end come from `cargo bench --bench stages`.")
    w("")
    w(f"- **Date**: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
    w(f"- **Command**: `{a.command.strip()}`")
    w(f"- **Machine**: {m['nproc']} CPUs, {m['cpu']}, {m['mem']} RAM; {m['os']}, Linux {m['kernel']}")
    w(f"- **Versions**: tenantgate {v['tenantgate']}, HAProxy {v['haproxy']}, Envoy {v['envoy']}, "
      f"nginx {v['nginx']} (upstream), wrk {v['wrk']}")
    w(f"- **Load**: wrk `-t{a.threads} -c{a.conns}`, best of {a.reps} run(s) of {a.duration} s per scenario after a warm-up "
      f"(in {a.reps} rounds, each round running every scenario of its group once), "
      "HTTP/1.1 keep-alive, `GET` of a ~12-byte JSON body; each request carries the next "
      "credential of its list (100 tenants × 10 keys, or 1000 JWTs over 100 tenants).")
    w("- **Pinning**: the proxy under test on CPU 0 with one worker (tenantgate `threads = 1`, "
      "HAProxy `nbthread 1`, Envoy `--concurrency 1`); wrk and the upstream (one nginx worker) "
      "on CPU 1. So req/s is what *one core* of each proxy does; *CPU µs/req* is the proxy "
      "process's CPU time (user+sys, all its threads) divided by the requests served.")
    w("- **Same job for the peers**: HAProxy (`jwt_verify` RS256 + `alg`/`iss`/`aud`/`exp` "
      "checks, stick-table rate per tenant claim, header scrub + inject) and Envoy (`jwt_authn` "
      "with its verified-token cache, `local_ratelimit` per `x-tenant-id` descriptor, "
      "`header_mutation` scrub, `claim_to_headers` inject): `benches/load/conf/`.")
    w("")
    w("| scenario | target | req/s | p50 ms | p99 ms | CPU µs/req | × passthrough | × HAProxy | × Envoy | non-2xx / errors | other load on CPU 0 |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        cls = PEER_CLASS.get(r["cls"])
        hap = env = None
        if r["target"] == "tenantgate" and cls:
            hap = peer.get(("haproxy", PEER_OVERRIDE.get(("haproxy", cls), cls)))
            env = peer.get(("envoy", PEER_OVERRIDE.get(("envoy", cls), cls)))
        errs = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
        status = f"{r['non_2xx']}" + (f" (expected {r['expect']})" if r["expect"] != 200 else "")
        if errs:
            status += f", {errs} socket errors"
        cpu = r.get("cpu_us_per_req")
        w(f"| {r['label']} | {r['target']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
          f"{cpu if cpu is not None else '–'} | {fmt_ratio(r['rps'], row_base(r))} | "
          f"{fmt_ratio(r['rps'], hap['rps']) if hap else '–'} | "
          f"{fmt_ratio(r['rps'], env['rps']) if env else '–'} | {status} | {r.get('cpu_other_pct', '–')} % |")
    w("")
    w("× HAProxy / × Envoy compare a tenantgate row with the peer's row doing the same job; "
      "the peers have no API keys, so the API-key rows are compared with their JWT rows. "
      "HAProxy 2.6 verifies the signature on every request (it has no verified-token cache), "
      "so its one JWT row is the peer of both tenantgate JWT rows. The uncached rows: "
      "tenantgate gets tokens that expired 2 s earlier, accepted within its 60 s leeway but "
      "never cached, so every request is a full verification; Envoy uses a provider without "
      "`jwt_cache_config`.")
    w("")

    # targets
    def rps(i):
        return by_id[i]["rps"] if i in by_id else None

    checks = []

    def target(name, value, ok_if, goal):
        if value is None:
            checks.append((name, "not measured", "–", goal))
        else:
            checks.append((name, f"{value:.2f}", "met" if ok_if(value) else "**MISSED**", goal))

    def ratio(x, y):
        return (rps(x) / rps(y)) if rps(x) and rps(y) else None

    target("API-key path / passthrough (`tenantgate proxy`)", ratio("tg_proxy_apikey", "tg_proxy_public"),
           lambda x: x >= 0.90, "≥ 0.90")
    target("API-key path / passthrough (`tenantgate up`)", ratio("tg_apikey", "tg_public"), lambda x: x >= 0.90, "≥ 0.90")
    target("cached-JWT path / passthrough", ratio("tg_jwt_cached", "tg_public"), lambda x: x >= 0.90, "≥ 0.90")
    target("API key with amortised assertion / passthrough", ratio("tg_apikey", "tg_public"),
           lambda x: x >= 0.85, "≥ 0.85")

    target("API key with its own limit + quota + allow-lists / passthrough", ratio("tg_apikey_extras", "tg_public"),
           lambda x: x >= 0.85, "≥ 0.85")
    def cost_us(x, base):
        # One saturated proxy core: the per-request CPU time difference.
        return (1e6 / rps(x) - 1e6 / rps(base)) if rps(x) and rps(base) else None

    target("key limit + quota + allow-lists cost (µs per request vs plain API key)",
           cost_us("tg_apikey_extras", "tg_apikey"), lambda x: x <= 5.0, "≤ 5 µs")
    target("assertion cost, amortised (µs per request vs none)", cost_us("tg_apikey", "tg_apikey_noassert"),
           lambda x: x <= 1.0, "≤ 1 µs")
    target("assertion cost, bind_request (µs per request vs none)", cost_us("tg_apikey_bound", "tg_apikey_noassert"),
           lambda x: x <= 50.0, "reported")
    for t_id, t_name in (("tg_jwt_cached", "cached JWT"), ("tg_apikey", "API key"), ("tg_jwt_uncached", "uncached JWT")):
        for p_name, p_prefix in (("HAProxy", "hap"), ("Envoy", "env")):
            p_id = f"{p_prefix}_jwt_uncached" if t_id == "tg_jwt_uncached" and p_prefix == "env" else f"{p_prefix}_jwt"
            target(f"{t_name} / {p_name} JWT", ratio(t_id, p_id), lambda x: x >= 1.0, "≥ 1.0")
    target("401 (no credential) / passthrough", ratio("tg_401", "tg_public"), lambda x: x >= 1.0, "≥ 1.0")
    target("401 (unknown key) / passthrough", ratio("tg_401_key", "tg_public"), lambda x: x >= 1.0, "≥ 1.0")
    target("429 / passthrough", ratio("tg_429", "tg_public"), lambda x: x >= 1.0, "≥ 1.0")
    target("Redis backend / local limiter (both `tenantgate proxy`)", ratio("tg_redis_apikey", "tg_proxy_apikey"),
           lambda x: x >= 0.85, "≥ 0.85")
    for n in (2, 4):
        oa = extra.get(f"overadmit_{n}")
        target(f"over-admission with {n} proxies on Redis (% of the limit)", oa["over_pct"] if oa else None,
               lambda x: x <= 1.0, "≤ 1 %")
    target("100k keys / 1 key (same process)", ratio("scale_all", "scale_1"), lambda x: x >= 0.90, "≥ 0.90")
    idle = extra.get("idle_tg")
    target("KiB per idle keep-alive connection (`tenantgate up`)",
           idle.get("kib_per_idle_connection") if idle else None, lambda x: x <= 8.0, "≤ 8 KiB")
    target("RSS 30 s after the idle connections closed / before",
           idle.get("after_close_ratio") if idle else None, lambda x: x <= 1.25, "≤ 1.25")
    target("API key with 10k idle connections held / without", ratio("tg_apikey_idle", "tg_apikey"),
           lambda x: x >= 0.9, "≥ 0.9")
    rs = extra.get("rss_scale")
    target("proxy RSS with 100k keys cached (MB)", rs["rss_kb"] / 1024 if rs else None, lambda x: x <= 150, "≤ 150")

    w("## Targets")
    w("")
    w("| target | measured | result | goal |")
    w("|---|---:|---|---|")
    for c in checks:
        w(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]} |")
    w("")

    oas = [extra[k] for k in ("overadmit_2", "overadmit_4") if k in extra]
    if oas:
        w("## Over-admission on the Redis backend")
        w("")
        w("N `tenantgate proxy` processes with `[ratelimit] backend = \"redis\"` share one tenant "
          "limited per hour; one wrk (`-t1 -c8`) per proxy hammers it at once, each request "
          "with the tenant's key. Admitted = requests that were not refused; the bucket's refill "
          "during the run (limit / 3600 per second) is allowed and subtracted.")
        w("")
        w("| proxies | limit | run | attempts | admitted | refill allowed | over-admitted | socket errors | live proxies seen |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for o in oas:
            w(f"| {o['proxies']} | {o['limit']:,} | {o['duration_s']:.0f} s | {o['attempts']:,} | {o['admitted']:,} | "
              f"{o['refill']} | {o['over_pct']:.3f} % | {o['socket_errors']} | {o['live_seen']} |")
        w("")

    if rs:
        w("## Scale run")
        w("")
        w(f"{rs['tenants']:,} tenants and {rs['keys']:,} API keys written into a fresh store by "
          "`benches/load/helper.rs seed` (real `Store::create_tenant`/`create_api_key`, digests as "
          "the admin API makes them), then `tenantgate proxy` on it, a warm-up pass sending every "
          f"key once (api_keys cache misses after it: {rs['misses_after_warm']:,}; at the end: "
          f"{rs['misses_end']:,}), then the two measured rows above from the same process.")
        w("")
        w(f"- proxy RSS after the run: **{rs['rss_kb'] / 1024:.0f} MB** (VmRSS), peak {rs['hwm_kb'] / 1024:.0f} MB (VmHWM)")
        up = extra.get("rss_up")
        if up:
            w(f"- `tenantgate up` (proxy + admin API + demo upstream in one process) after the main "
              f"scenarios: {up['rss_kb'] / 1024:.0f} MB (VmRSS), peak {up['hwm_kb'] / 1024:.0f} MB")
        w("")

    idles = [(name, extra[k]) for name, k in (("tenantgate up", "idle_tg"), ("HAProxy", "idle_hap"),
                                               ("Envoy", "idle_env")) if k in extra]
    if idles:
        w("## Idle keep-alive connections")
        w("")
        w("`benches/load/idle.py`: N connections, each after one request answered 401, held open; "
          "RSS of the process (and its workers) before, while held, and 30 s after they closed.")
        w("")
        w("| server | connections | RSS before | RSS held | KiB per idle connection | RSS 30 s after close | after / before |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for name, i in idles:
            w(f"| {name} | {i['connections']:,} | {i['rss_before_kb'] / 1024:.1f} MB | {i['rss_held_kb'] / 1024:.1f} MB | "
              f"{i['kib_per_idle_connection']} | {i['rss_after_close_kb'] / 1024:.1f} MB | {i['after_close_ratio']} |")
        w("")

    cg = [extra[k] for k in ("cg_public", "cg_apikey", "cg_jwt") if k in extra]
    if cg:
        labels = {
            "cg_public": "public route (passthrough)",
            "cg_apikey": "API key, 100 tenants x 10 keys",
            "cg_jwt": "JWT cached, 1000 tokens",
        }
        cg_base = extra.get("cg_public", {}).get("ir_per_req")
        w("## Instructions per request (callgrind)")
        w("")
        w("`tenantgate proxy` on the same store under valgrind's callgrind (`benches/load/callgrind.sh`): "
          "counters zeroed after a warm-up, instructions counted over 5 s of wrk, divided by the requests. "
          "User-space work only (no kernel), and repeatable to a few per cent where the req/s rows move 10–20 % "
          "between runs on this VM. Under valgrind SHA-256 runs without SHA-NI (about 3.5k instructions "
          "a 64-byte block: ~7k of the API-key row, ~35k of the JWT row, each ~0.1–0.4 µs natively) and the "
          "once-a-second usage flush is spread over ~700 requests a second instead of tens of thousands.")
        w("")
        w("| scenario | instructions / request | cost × passthrough |")
        w("|---|---:|---:|")
        for r in cg:
            ratio = f"{r['ir_per_req'] / cg_base:.2f}×" if cg_base else "–"
            w(f"| {labels.get(r['id'], r['id'])} | {r['ir_per_req']:,} | {ratio} |")
        w("")

    notes = []
    if a.notes and os.path.exists(a.notes):
        with open(a.notes) as f:
            notes = [l.strip() for l in f if l.strip()]
    if notes:
        w("## Notes from the run")
        w("")
        for n in notes:
            w(f"- {n}")
        w("")

    if a.analysis and os.path.exists(a.analysis):
        with open(a.analysis) as f:
            w(f.read().rstrip())
        w("")

    crit = criterion_rows()
    if crit:
        newest = max(c[3] for c in crit)
        when = datetime.datetime.fromtimestamp(newest).astimezone().strftime("%Y-%m-%d %H:%M")
        w("## Stage micro-benchmarks")
        w("")
        w(f"Median time per call from the latest `cargo bench --bench stages` on this machine ({when}), "
          "single-threaded, no load.")
        w("")
        w("| group | benchmark | median |")
        w("|---|---|---:|")
        for g, fn, ns, _ in crit:
            w(f"| {g} | {fn} | {fmt_ns(ns)} |")
        w("")

    with open(a.out, "w") as f:
        f.write("\n".join(out))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
