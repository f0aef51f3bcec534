#!/usr/bin/env bash
# Static files: flotilla's files origin vs nginx (open_file_cache on), a 100-byte file, each
# server with one worker pinned to CPU 1, wrk (32 connections) on CPU 0. Prints req/s, latency
# and the server's CPU time per request. Usage: bench/files.sh [seconds]   (loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ensure_tools nginx:nginx wrk:wrk taskset:util-linux
BIN=$(build_flotilla)
SECS=${1:-8}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
mkdir -p "$D/www"
head -c 100 /dev/zero | tr '\0' x >"$D/www/small.txt"

# measure NAME PID URL: warm up, then one timed run with the process's CPU ticks around it.
measure() {
  local name=$1 pid=$2 url=$3 t0 t1 out req
  taskset -c 0 wrk -t1 -c32 -d2s "$url" >/dev/null
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  out=$(taskset -c 0 wrk -t1 -c32 -d"${SECS}s" --latency "$url")
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  req=$(echo "$out" | grep -oP '\d+(?= requests in)')
  python3 - "$name" "$out" "$t0" "$t1" "$req" <<'PY'
import re, sys, os
name, out, t0, t1, req = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
cpu = (t1 - t0) / os.sysconf("SC_CLK_TCK") / req * 1e6
print(f"| {name} | {rps:,.0f} | {p99} | {cpu:.1f} |")
PY
}

echo "| server | req/s | p99 | CPU µs/req |"
echo "|---|---:|---:|---:|"
cat >"$D/f.toml" <<T
[edge]
listen = ["127.0.0.1:18481"]
access_log = false
workers = 1
[[routes]]
path = "/*"
origin = "files:$D/www"
T
taskset -c 1 "$BIN" up --config "$D/f.toml" >/dev/null 2>&1 &
FP=$!
sleep 1
measure flotilla "$FP" http://127.0.0.1:18481/small.txt
kill "$FP"; wait "$FP" 2>/dev/null || true

cat >"$D/nginx.conf" <<N
worker_processes 1;
pid $D/nginx.pid;
error_log $D/err.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  open_file_cache max=1000 inactive=20s;
  server { listen 127.0.0.1:18483 reuseport backlog=4096; root $D/www; }
}
N
taskset -c 1 nginx -c "$D/nginx.conf"
sleep 0.5
NP=$(cat "$D/nginx.pid")
measure nginx "$(pgrep -P "$NP")" http://127.0.0.1:18483/small.txt
kill "$NP"
