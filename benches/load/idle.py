#!/usr/bin/env python3
"""Memory per idle keep-alive connection.

Opens N connections to HOST:PORT, sends one request on each (by default one the
proxy answers 401 without a credential), reads the answer, keeps them all open,
and reports the RSS of PID: before, while the N are held, and SETTLE seconds
after they are closed. Prints one JSON line.

Usage: idle.py PID HOST PORT N [--path P] [--settle S] [--hold S] [--id ID] [--tls]
(--tls: HTTP/1.1 over TLS, ALPN http/1.1, certificate not verified.)
(--hold: keep them open this many seconds before closing, e.g. while another load
runs against the same server.)
"""
import argparse
import asyncio
import json
import resource
import ssl


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_tree_kb(pid):
    # the process and its direct children (nginx/haproxy workers)
    total = rss_kb(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            for child in f.read().split():
                total += rss_kb(int(child))
    except OSError:
        pass
    return total


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def one(host, port, path, ctx=None):
    r, w = await asyncio.open_connection(host, port, ssl=ctx)
    w.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await r.readexactly(length)
    status = int(head.split(b" ")[1])
    return r, w, status


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pid", type=int)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("n", type=int)
    ap.add_argument("--path", default="/api/v1/echo")
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--id", default="idle")
    ap.add_argument("--tls", action="store_true")
    a = ap.parse_args()
    pid, host, port, n, path, settle = a.pid, a.host, a.port, a.n, a.path, a.settle
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = tls_context() if a.tls else None
    before = rss_tree_kb(pid)
    conns, statuses = [], {}
    for start in range(0, n, 500):
        batch = await asyncio.gather(
            *[one(host, port, path, ctx) for _ in range(min(500, n - start))],
            return_exceptions=True,
        )
        for c in batch:
            if isinstance(c, Exception):
                statuses["error"] = statuses.get("error", 0) + 1
            else:
                conns.append(c)
                statuses[c[2]] = statuses.get(c[2], 0) + 1
    await asyncio.sleep(2)
    held = rss_tree_kb(pid)
    if a.hold:
        await asyncio.sleep(a.hold)
    for _, w, _ in conns:
        w.close()
    await asyncio.sleep(settle)
    after = rss_tree_kb(pid)
    held_n = len(conns)
    print(json.dumps({
        "id": a.id,
        "connections": held_n,
        "statuses": {str(k): v for k, v in statuses.items()},
        "rss_before_kb": before,
        "rss_held_kb": held,
        "rss_after_close_kb": after,
        "kib_per_idle_connection": round((held - before) / held_n, 2) if held_n else None,
        "after_close_ratio": round(after / before, 2) if before else None,
        "settle_s": settle,
    }))


asyncio.run(main())
