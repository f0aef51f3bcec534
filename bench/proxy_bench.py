#!/usr/bin/env python3
"""Pass-through proxy benchmark: flotilla vs HAProxy vs nginx, side by side, in one run.

Every proxy sits in front of the same fast backend (nginx answering a fixed 200 from memory), with
keep-alive to the backend, one worker, pinned to CPU 1 with `taskset`. The load generator (wrk
for HTTP/1.1 and TLS, h2load for HTTP/2) and the backend share CPU 0. Logging is off everywhere.

Because the backend and the load generator share a core, req/s can be capped by them rather than by
the proxy; the CPU time the proxy itself spends per request (from /proc/PID/stat) is printed too,
and is the fairer figure when req/s is capped.

Usage: bench/run-proxy.sh [--duration 10] [--connections 64] (it builds release and installs
nginx, haproxy, wrk and h2load from Debian if missing). Loopback only.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BACKEND_PORT = 18001
HTTP_PORT = 18080
TLS_PORT = 18443
TICK = os.sysconf("SC_CLK_TCK")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def wait_port(port, limit=10.0):
    import socket

    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except FileNotFoundError:
            pass
    return total


def steal_jiffies():
    """Per-CPU (total, steal) jiffies from /proc/stat. Steal is time the hypervisor ran something
    else on this VM's CPU: it lands on whichever contender is running and shows up as tail
    latency, so every run reports it."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                vals = [int(v) for v in vals]
                out[name] = (sum(vals), vals[7] if len(vals) > 7 else 0)
    return out


def steal_pct(before, after):
    """The highest steal percentage of any CPU between two `steal_jiffies` readings."""
    worst = 0.0
    for cpu, (total, steal) in after.items():
        t0, s0 = before.get(cpu, (total, steal))
        if total > t0:
            worst = max(worst, 100.0 * (steal - s0) / (total - t0))
    return worst


def tree(pid):
    """pid and all its descendants (nginx master + workers)."""
    out = [pid]
    try:
        kids = sh(["pgrep", "-P", str(pid)]).stdout.split()
    except subprocess.CalledProcessError:
        kids = []
    for k in kids:
        out += tree(int(k))
    return out


def make_cert(d):
    sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost"])
    with open(f"{d}/both.pem", "w") as f:
        f.write(open(f"{d}/cert.pem").read() + open(f"{d}/key.pem").read())


def launch_nginx(d, name, http_body, cpu, ports):
    """Starts one nginx (one worker, no access log, pinned to `cpu`) with `http_body` inside its
    http block, and waits for `ports`. Used for the backend and for nginx as a proxy or cache."""
    conf = f"""
worker_processes 1;
pid {d}/nginx-{name}.pid;
error_log {d}/nginx-{name}-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  {http_body}
}}
"""
    path = f"{d}/nginx-{name}.conf"
    open(path, "w").write(conf)
    p = subprocess.Popen(["taskset", "-c", str(cpu), "nginx", "-c", path, "-p", d], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    for port in ports:
        wait_port(port)
    return p


def start_backend(d):
    return launch_nginx(d, "backend", f"""
  server {{
    listen 127.0.0.1:{BACKEND_PORT} reuseport backlog=4096;
    location / {{ default_type text/plain; return 200 "hello from the backend\\n"; }}
  }}""", cpu=0, ports=[BACKEND_PORT])


def start_flotilla(d, binary, http_port=HTTP_PORT, tls_port=TLS_PORT):
    conf = f"""
[edge]
listen = ["127.0.0.1:{http_port}"]
access_log = false
[edge.tls]
listen = ["127.0.0.1:{tls_port}"]
certificates = [{{ cert = "{d}/cert.pem", key = "{d}/key.pem" }}]
[[routes]]
target_group = "web"
[target_groups.web]
targets = ["127.0.0.1:{BACKEND_PORT}"]
algorithm = "round_robin"
[target_groups.web.health_check]
path = "/"
interval = "5s"
"""
    path = f"{d}/flotilla.toml"
    open(path, "w").write(conf)
    env = dict(os.environ, FLOTILLA_LOG="warn")
    p = subprocess.Popen(["taskset", "-c", "1", binary, "up", "--config", path], stdout=subprocess.DEVNULL,
                         stderr=open(f"{d}/flotilla.err", "w"), env=env)
    wait_port(http_port)
    wait_port(tls_port)
    time.sleep(0.5)  # first health checks pass (healthy_threshold 2 with an immediate first check)
    return p


def start_haproxy(d, http_port=HTTP_PORT, tls_port=TLS_PORT):
    conf = f"""
global
  nbthread 1
  cpu-map auto:1/1 1
  maxconn 4096
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{http_port}
  bind 127.0.0.1:{tls_port} ssl crt {d}/both.pem alpn h2,http/1.1
  default_backend be
  # The same header work flotilla does by default: X-Forwarded-*, Forwarded, a request id.
  unique-id-format %{{+X}}o%ci%cp%fp%Ts%rt%pid
  unique-id-header X-Request-Id
  http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
  http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request add-header Forwarded for=%[src];host=%[req.hdr(host)];proto=http if !{{ ssl_fc }}
  http-request add-header Forwarded for=%[src];host=%[req.hdr(host)];proto=https if {{ ssl_fc }}
  http-response set-header X-Request-Id %[unique-id]
backend be
  option forwardfor
  server s1 127.0.0.1:{BACKEND_PORT}
"""
    path = f"{d}/haproxy.cfg"
    open(path, "w").write(conf)
    p = subprocess.Popen(["taskset", "-c", "1", "haproxy", "-f", path, "-db"], stdout=subprocess.DEVNULL,
                         stderr=open(f"{d}/haproxy.err", "w"))
    wait_port(http_port)
    wait_port(tls_port)
    return p


def start_nginx(d):
    return launch_nginx(d, "proxy", f"""
  upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{HTTP_PORT} backlog=4096;
    listen 127.0.0.1:{TLS_PORT} ssl http2 backlog=4096;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # The same header work flotilla does by default: X-Forwarded-*, Forwarded, a request id.
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header Forwarded "for=$remote_addr;host=$host;proto=$scheme";
      proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id;
    }}
  }}""", cpu=1, ports=[HTTP_PORT, TLS_PORT])


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {}
    for pct, val, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(val) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return rps, total, lat.get("50"), lat.get("99"), (int(errors.group(1)) if errors else 0), sock.group(1) if sock else ""


def run_wrk(url, duration, conns):
    out = sh(["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", url]).stdout
    return parse_wrk(out)


def run_h2load(url, duration, conns):
    out = sh(["taskset", "-c", "0", "h2load", "-c", str(conns), "-m", "10", "-D", str(duration), "-t", "1",
              "--warm-up-time=1", url]).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    succeeded = int(re.search(r"(\d+) succeeded", out).group(1))
    # h2load reports request time as min/max/mean/sd; it has no percentiles: report mean and max.
    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    conv = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    mean = float(m.group(5)) * conv[m.group(6)] if m else None
    mx = float(m.group(3)) * conv[m.group(4)] if m else None
    return rps, done, mean, mx, done - succeeded, ""


def stop(p):
    """SIGTERM a server and all its children (nginx workers, varnish's child), then reap it."""
    for pid in reversed(tree(p.pid)):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
    time.sleep(0.5)


def interleaved(rounds, contenders, scenarios, duration, conns, only=""):
    """Runs every scenario against every contender, round after round (a shared VM drifts, so
    contenders alternate), and returns {(scenario, contender): [(rps, p50, p99, cpu_us, errs), ...]}.
    A run with non-2xx responses is refused: its numbers would measure errors."""
    samples = {}
    for rnd in range(rounds):
        for name, start in contenders:
            p = start()
            try:
                pids = tree(p.pid)
                for key, _, fn in scenarios:
                    if only and key not in only.split(","):
                        continue
                    fn(2, conns)  # warm-up: pools, TLS session caches, cache fills
                    before = cpu_ticks(pids)
                    stolen = steal_jiffies()
                    rps, total, p50, p99, errs, sock = fn(duration, conns)
                    cpu_us = (cpu_ticks(pids) - before) / TICK * 1e6 / max(total, 1)
                    steal = steal_pct(stolen, steal_jiffies())
                    print(f"round {rnd + 1} {key:6} {name:12} {rps:10.0f} req/s  p50 {p50 or 0:7.3f} ms  "
                          f"p99 {p99 or 0:7.3f} ms  cpu {cpu_us:6.1f} us/req  steal {steal:4.1f}%  errors {errs} {sock}",
                          file=sys.stderr, flush=True)
                    if errs:
                        raise RuntimeError(f"{name} {key}: {errs} non-2xx responses; the run is not valid")
                    samples.setdefault((key, name), []).append((rps, p50, p99, cpu_us, errs, steal))
            finally:
                stop(p)
    return samples


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


SCENARIOS = [
    ("http1", "HTTP/1.1 GET",
     lambda d, c, http=HTTP_PORT, tls=TLS_PORT: run_wrk(f"http://127.0.0.1:{http}/", d, c)),
    ("tls", "HTTPS (TLS 1.3) GET",
     lambda d, c, http=HTTP_PORT, tls=TLS_PORT: run_wrk(f"https://localhost:{tls}/", d, c)),
    ("h2", "HTTP/2 over TLS GET (h2load, mean/max latency)",
     lambda d, c, http=HTTP_PORT, tls=TLS_PORT: run_h2load(f"https://localhost:{tls}/", d, max(8, c // 4))),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--binary-dist", default="",
                    help="also run this flotilla build (contrib/build-dist.sh's binary) as 'flotilla-pgo'")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--only", default="", help="scenarios to run, e.g. h2 or http1,tls")
    ap.add_argument("--proxies", default="", help="contenders to run, e.g. flotilla-pgo,haproxy")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; medians are reported (a shared VM drifts between runs)")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="flotilla-bench-")
    make_cert(d)
    backend = start_backend(d)
    proxies = [("flotilla", lambda: start_flotilla(d, args.binary))]
    if args.binary_dist:
        proxies.append(("flotilla-pgo", lambda: start_flotilla(d, args.binary_dist)))
    proxies += [("haproxy", lambda: start_haproxy(d)), ("nginx", lambda: start_nginx(d))]
    if args.proxies:
        proxies = [p for p in proxies if p[0] in args.proxies.split(",")]
    ours = [name for name, _ in proxies if name.startswith("flotilla")]
    try:
        samples = interleaved(args.rounds, proxies, SCENARIOS, args.duration, args.connections, args.only)
    finally:
        backend.send_signal(signal.SIGTERM)
        backend.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)

    results = {}
    for k, rows in samples.items():
        rows = [(r[0], r[1], r[2], r[3], r[4]) for r in rows]
        cols = list(zip(*rows))
        results[k] = (median(cols[0]), median(cols[1]), median(cols[2]), median(cols[3]), sum(cols[4]), "")

    print(f"\nPass-through proxy, {args.connections} connections, {args.duration}s per run, median of {args.rounds}"
          f" interleaved rounds, proxy pinned to CPU 1, load generator + backend on CPU 0.\n")
    ratio_heads = "".join(f" {o}/other req/s | {o}/other CPU per req |" for o in ours)
    print(f"| scenario | proxy | req/s | p50 ms | p99 ms | proxy CPU µs/req |{ratio_heads}")
    print("|---|---|---:|---:|---:|---:|" + "---:|---:|" * len(ours))
    for key, label, _ in SCENARIOS:
        for name, _ in proxies:
            r = results.get((key, name))
            if not r:
                continue
            rps, p50, p99, cpu, errs, _ = r
            cells = ""
            for o in ours:
                f = results.get((key, o))
                mine = name.startswith("flotilla")
                ratio = f"{f[0] / rps:.2f}" if f and not mine else "—"
                cratio = f"{f[3] / cpu:.2f}" if f and not mine and cpu > 0 else "—"
                cells += f" {ratio} | {cratio} |"
            p50s = f"{p50:.3f}" if p50 is not None else "—"
            p99s = f"{p99:.3f}" if p99 is not None else "—"
            print(f"| {label} | {name} | {rps:.0f} | {p50s} | {p99s} | {cpu:.1f} |{cells}")
    # Round by round: a shared VM swings more between rounds than the differences measured.
    print()
    for key, label, _ in SCENARIOS:
        for o in ours:
            for name, _ in proxies:
                if name.startswith("flotilla") or (key, o) not in samples or (key, name) not in samples:
                    continue
                pairs = list(zip(samples[(key, o)], samples[(key, name)]))
                per = [f"{a[0] / b[0]:.2f}" for a, b in pairs]
                print(f"{key}: {o}/{name} req/s per round: {', '.join(per)}")
                # Tail latency (p99 for wrk, max for h2load): lower is better, so other/flotilla.
                tails = [f"{b[2] / a[2]:.2f}" for a, b in pairs if a[2] and b[2]]
                if tails:
                    print(f"{key}: {name}/{o} {'p99' if key != 'h2' else 'max latency'} per round "
                          f"(> 1: flotilla's is lower): {', '.join(tails)}")
                steals = [f"{max(a[5], b[5]):.1f}" for a, b in pairs]
                print(f"{key}: highest CPU steal % during either run, per round: {', '.join(steals)}")

if __name__ == "__main__":
    main()
