#!/usr/bin/env python3
"""Cache-hit benchmark: flotilla's edge cache vs nginx proxy_cache vs Varnish, in one run.

The backend (nginx, CPU 0) serves a 1 KiB and a 100 KiB object with `Cache-Control: public,
max-age=3600`. Each cache runs one worker pinned to CPU 1 and is warmed first, so the measured
requests are all hits. wrk runs on CPU 0. Medians of interleaved rounds, as in proxy_bench.py.

Usage: bench/run-cache.sh [--duration 8] [--rounds 3] (builds release, installs the anchors).
Loopback only.
"""

import argparse
import os
import signal
import shutil
import subprocess  # noqa: F401 (servers are Popen objects)
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_bench import (BACKEND_PORT, HTTP_PORT, interleaved, launch_nginx, median, run_wrk,  # noqa: E402
                         wait_port)

OBJECTS = [("1k", 1024), ("100k", 100 * 1024)]


def start_backend(d):
    os.makedirs(f"{d}/www", exist_ok=True)
    for name, size in OBJECTS:
        with open(f"{d}/www/{name}", "wb") as f:
            f.write((b"flotilla cache bench " * (size // 21 + 1))[:size])
    return launch_nginx(d, "backend", f"""
  server {{
    listen 127.0.0.1:{BACKEND_PORT} reuseport backlog=4096;
    root {d}/www;
    location / {{ default_type text/plain; add_header Cache-Control "public, max-age=3600"; }}
  }}""", cpu=0, ports=[BACKEND_PORT])


def start_flotilla(d, binary):
    conf = f"""
[edge]
listen = ["127.0.0.1:{HTTP_PORT}"]
access_log = false
[cache]
memory = "256MiB"
[cache_behaviors.bench]
default_ttl = "1h"
[[routes]]
target_group = "web"
cache = "bench"
[target_groups.web]
targets = ["127.0.0.1:{BACKEND_PORT}"]
[target_groups.web.health_check]
path = "/1k"
interval = "5s"
"""
    path = f"{d}/flotilla.toml"
    open(path, "w").write(conf)
    p = subprocess.Popen(["taskset", "-c", "1", binary, "up", "--config", path], stdout=subprocess.DEVNULL,
                         stderr=open(f"{d}/flotilla.err", "w"), env=dict(os.environ, FLOTILLA_LOG="warn"))
    wait_port(HTTP_PORT)
    time.sleep(0.5)
    return p


def start_nginx_cache(d):
    os.makedirs(f"{d}/ngx-cache", exist_ok=True)
    return launch_nginx(d, "cache", f"""
  proxy_cache_path {d}/ngx-cache levels=1:2 keys_zone=bench:10m max_size=1g inactive=60m use_temp_path=off;
  upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{HTTP_PORT} backlog=4096;
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_lock on;
      add_header X-Cache-Status $upstream_cache_status;
    }}
  }}""", cpu=1, ports=[HTTP_PORT])


def start_varnish(d):
    vcl = f"""vcl 4.1;
backend default {{ .host = "127.0.0.1"; .port = "{BACKEND_PORT}"; }}
"""
    open(f"{d}/bench.vcl", "w").write(vcl)
    p = subprocess.Popen(["taskset", "-c", "1", "varnishd", "-F", "-a", f"127.0.0.1:{HTTP_PORT}", "-f", f"{d}/bench.vcl",
                          "-s", "malloc,256m", "-n", f"{d}/varnish", "-p", "thread_pools=1"],
                         stdout=subprocess.DEVNULL, stderr=open(f"{d}/varnish.err", "w"))
    try:
        wait_port(HTTP_PORT, limit=30)
    except RuntimeError:
        p.kill()
        raise RuntimeError("varnish did not start: " + open(f"{d}/varnish.err").read()[-2000:])
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="flotilla-cache-bench-")
    os.chmod(d, 0o755)  # nginx's and varnish's workers run as other users
    backend = start_backend(d)
    caches = [("flotilla", lambda: start_flotilla(d, args.binary)), ("nginx", lambda: start_nginx_cache(d)),
              ("varnish", lambda: start_varnish(d))]
    scenarios = [(obj, obj, (lambda u: lambda dur, c: run_wrk(u, dur, c))(f"http://127.0.0.1:{HTTP_PORT}/{obj}"))
                 for obj, _ in OBJECTS]
    try:
        samples = interleaved(args.rounds, caches, scenarios, args.duration, args.connections)
    finally:
        backend.send_signal(signal.SIGTERM)
        backend.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)

    print(f"\nCache hits, {args.connections} connections, {args.duration}s per run, median of {args.rounds} interleaved"
          " rounds, cache pinned to CPU 1, wrk + backend on CPU 0.\n")
    print("| object | cache | req/s | p50 ms | p99 ms | CPU µs/req | flotilla/other req/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for obj, _ in OBJECTS:
        f = samples.get((obj, "flotilla"))
        f_rps = median([r[0] for r in f]) if f else None
        for name, _ in caches:
            rows = samples.get((obj, name))
            if not rows:
                continue
            rps, p50, p99, cpu = (median([r[i] for r in rows]) for i in range(4))
            ratio = f"{f_rps / rps:.2f}" if f_rps and name != "flotilla" else "—"
            print(f"| {obj} | {name} | {rps:.0f} | {p50:.3f} | {p99:.3f} | {cpu:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
