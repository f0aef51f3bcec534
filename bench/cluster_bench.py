#!/usr/bin/env python3
"""Cluster benchmark: three flotilla nodes sharing one real redis-server on loopback.

1. Invalidation propagation: 1,000 invalidations, each POSTed to one of the three nodes in turn;
   the admin API answers only once every live node has acknowledged it, so the client-side time
   is "from the request to the last node's ack". Prints p50/p99/max (and the server-side wait).
2. Rate-limit decisions per second: wrk against one node on a route whose limit is spent after
   the first request, so every request is a decision the edge answers itself (429) and nothing
   else is measured; once with the limit in Redis (one Lua call per request) and once local (no
   [cluster]). flotilla on CPU 1, wrk and redis on CPU 0; prints decisions/s, latency and
   flotilla's CPU per decision for both.

3. Origin requests with and without the shield: three edges, a burst of 60 concurrent requests
   (20 per edge) for each of 20 objects from a slow origin (100 ms), counted at the origin;
   once with the edges' misses going straight to the origin, once behind a parent node.

Usage: bench/cluster.sh [--invalidations 1000] [--duration 8]   (loopback only)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_bench import parse_wrk, wait_port  # noqa: E402

REDIS_PORT = 18379
EDGE_PORTS = [18181, 18182, 18183]
ADMIN_PORTS = [18191, 18192, 18193]
TICK = os.sysconf("SC_CLK_TCK")


def node_config(i, d, cluster):
    cl = (f'[cluster]\nnode = "n{i}"\nredis = "redis://127.0.0.1:{REDIS_PORT}/0"\nsecret = "bench"\n'
          if cluster else "")
    return f"""
[edge]
listen = ["127.0.0.1:{EDGE_PORTS[i]}"]
access_log = false
workers = 1
[admin]
listen = "127.0.0.1:{ADMIN_PORTS[i]}"
token = "bench"
{cl}
[cache_behaviors.main]
default_ttl = "1h"
[[routes]]
path = "/*"
origin = "files:{d}/www"
rate_limit = {{ rate = "1/min", burst = 1, key = "ip" }}
"""


def start_node(binary, d, i, cluster, cpu=None):
    path = f"{d}/n{i}-{'c' if cluster else 'l'}.toml"
    open(path, "w").write(node_config(i, d, cluster))
    cmd = ([ "taskset", "-c", str(cpu)] if cpu is not None else []) + [binary, "up", "--config", path]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(f"{d}/n{i}.err", "a"),
                         env=dict(os.environ, FLOTILLA_LOG="warn"))
    wait_port(EDGE_PORTS[i])
    wait_port(ADMIN_PORTS[i])
    return p


def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/invalidations", data=body.encode(),
                                 headers={"authorization": "Bearer bench"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def propagation(binary, d, n):
    nodes = [start_node(binary, d, i, True) for i in range(3)]
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORTS[0]}/api/v1/cluster") as r:
                if len(json.loads(r.read())["nodes"]) == 3:
                    break
            time.sleep(0.1)
        for i in range(20):  # warm connections
            post(ADMIN_PORTS[i % 3], json.dumps({"tags": [f"warm{i}"]}))
        client, server, incomplete = [], [], 0
        for i in range(n):
            t0 = time.perf_counter()
            a = post(ADMIN_PORTS[i % 3], json.dumps({"tags": [f"t{i}"]}))
            client.append((time.perf_counter() - t0) * 1000)
            server.append(a["cluster"]["wait_ms"])
            if a["status"] != "completed" or len(a["cluster"]["applied"]) != 3:
                incomplete += 1
        print(f"\n## Invalidation propagation, 3 nodes, {n} invalidations (request -> last node's ack)\n")
        print("| measure | p50 ms | p99 ms | max ms |")
        print("|---|---:|---:|---:|")
        print(f"| client: request to answer | {pct(client, 50):.2f} | {pct(client, 99):.2f} | {max(client):.2f} |")
        print(f"| server: publish to last ack | {pct(server, 50):.2f} | {pct(server, 99):.2f} | {max(server):.2f} |")
        print(f"\nnot acknowledged by all three: {incomplete}")
    finally:
        for p in nodes:
            p.terminate()
            p.wait()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def decisions(binary, d, duration):
    rows = []
    for cluster in (True, False):
        p = start_node(binary, d, 0, cluster, cpu=1)
        try:
            time.sleep(1.0)
            url = f"http://127.0.0.1:{EDGE_PORTS[0]}/small.txt"
            subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c32", "-d2s", url], capture_output=True)
            pid = int(subprocess.run(["pgrep", "-f", f"n0-{'c' if cluster else 'l'}.toml"], capture_output=True,
                                     text=True).stdout.split()[-1])
            c0 = cpu_ticks(pid)
            out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{duration}s", "--latency", url],
                                 capture_output=True, text=True).stdout
            c1 = cpu_ticks(pid)
            rps, total, p50, p99, non2xx, sock = parse_wrk(out)
            cpu_us = (c1 - c0) / TICK / max(total, 1) * 1e6
            rows.append(("Redis (cluster)" if cluster else "local (no cluster)", rps, p50, p99, cpu_us, non2xx))
        finally:
            p.terminate()
            p.wait()
    print(f"\n## Rate-limit decisions per second (every request a decision answered 429; flotilla on CPU 1, {duration}s)\n")
    print("| limiter | decisions/s | p50 ms | p99 ms | flotilla CPU µs/decision | 429s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rps, p50, p99, cpu, bad in rows:
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | {bad} |")
    print(f"\nRedis / local: {rows[0][1] / rows[1][1]:.2f}x decisions/s, {rows[0][4] / rows[1][4]:.2f}x CPU per decision")


ORIGIN_PORT = 18170
PARENT_PORT = 18180


def shield_config(port, admin, parent):
    p = f'[cache]\nparent = "http://127.0.0.1:{parent}"\n' if parent else ""
    return f"""
[edge]
listen = ["127.0.0.1:{port}"]
access_log = false
[admin]
listen = "127.0.0.1:{admin}"
token = "bench"
{p}
[cache_behaviors.main]
default_ttl = "1h"
[[routes]]
path = "/*"
target_group = "web"
cache = "main"
[target_groups.web]
targets = ["127.0.0.1:{ORIGIN_PORT}"]
"""


def origin_count():
    with urllib.request.urlopen(f"http://127.0.0.1:{ORIGIN_PORT}/cached?count={time.time()}") as r:
        return int(r.read().split()[2]) - 1


def shield(binary, d, objects=20, per_edge=20):
    import concurrent.futures
    rows = []
    for with_parent in (False, True):
        origin = subprocess.Popen([binary, "demo-app", "--port", str(ORIGIN_PORT), "--id", "origin"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=dict(os.environ, FLOTILLA_LOG="warn"))
        wait_port(ORIGIN_PORT)
        procs = []
        try:
            if with_parent:
                path = f"{d}/parent.toml"
                open(path, "w").write(shield_config(PARENT_PORT, PARENT_PORT + 9, None))
                procs.append(subprocess.Popen([binary, "up", "--config", path], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, env=dict(os.environ, FLOTILLA_LOG="warn")))
                wait_port(PARENT_PORT)
            for i in range(3):
                path = f"{d}/edge{i}-{with_parent}.toml"
                open(path, "w").write(shield_config(EDGE_PORTS[i], ADMIN_PORTS[i], PARENT_PORT if with_parent else None))
                procs.append(subprocess.Popen([binary, "up", "--config", path], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, env=dict(os.environ, FLOTILLA_LOG="warn")))
                wait_port(EDGE_PORTS[i])
            time.sleep(2.5)  # health checks: the origin, and the parent
            before = origin_count()
            failed = 0

            def fetch(url):
                try:
                    with urllib.request.urlopen(url, timeout=30) as r:
                        return r.status
                except Exception:  # noqa: BLE001
                    return 0

            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
                for obj in range(objects):
                    urls = [f"http://127.0.0.1:{EDGE_PORTS[i % 3]}/cached?cc=max-age=600&ms=100&obj={obj}-{with_parent}"
                            for i in range(3 * per_edge)]
                    failed += sum(1 for s in pool.map(fetch, urls) if s != 200)
            elapsed = time.perf_counter() - t0
            fetched = origin_count() - before - 1  # the first count request itself
            rows.append(("behind a parent (shield)" if with_parent else "edges alone", fetched, failed, elapsed))
        finally:
            for p in procs:
                p.terminate()
                p.wait()
            origin.terminate()
            origin.wait()
    print(f"\n## Origin requests under a burst: 3 edges, {objects} objects x {3 * per_edge} concurrent requests\n")
    print("| setup | origin requests | per object | failed | seconds |")
    print("|---|---:|---:|---:|---:|")
    for name, fetched, failed, elapsed in rows:
        print(f"| {name} | {fetched} | {fetched / objects:.2f} | {failed} | {elapsed:.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--invalidations", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--only", choices=["propagation", "decisions", "shield"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(f"{d}/www")
        open(f"{d}/www/small.txt", "w").write("x" * 100)
        redis = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(REDIS_PORT), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
                                 stdout=subprocess.DEVNULL)
        wait_port(REDIS_PORT)
        try:
            if args.only in (None, "propagation"):
                propagation(args.binary, d, args.invalidations)
            if args.only in (None, "decisions"):
                decisions(args.binary, d, args.duration)
            if args.only in (None, "shield"):
                shield(args.binary, d)
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    main()
