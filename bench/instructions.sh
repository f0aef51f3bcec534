#!/usr/bin/env bash
# User-space instructions per proxied request, flotilla vs HAProxy vs nginx, under callgrind.
#
# Wall-clock req/s on a shared 2-core VM swings by 2-3x between runs; instruction counts do not.
# Each proxy runs under `valgrind --tool=callgrind` in front of the same nginx backend, doing the
# same header work (X-Forwarded-For/-Proto/-Host/-Port, Forwarded, a request id). Two runs with
# different request counts (h2load, HTTP/1.1, 16 connections) are differenced, so start-up cost
# cancels out. Kernel time (the loopback TCP stack) is not counted: it is the same for all three.
#
# Usage: bench/instructions.sh [--requests 10000] [--h2] [--cache-sim]
#   --h2         HTTP/2 prior knowledge (h2c), 10 streams per connection; nginx is left out (its
#                cleartext listener cannot take both protocols)
#   --cache-sim  cachegrind with its cache simulation instead of callgrind: also prints L1
#                instruction, L1 data and last-level misses per request (where wall-clock
#                differences hide when instruction counts are even)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N=10000
H2=0
SIM=0
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) N="$2"; shift 2 ;;
    --h2) H2=1; shift ;;
    --cache-sim) SIM=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
ensure_tools valgrind:valgrind h2load:nghttp2-client nginx:nginx haproxy:haproxy
BIN=${FLOTILLA_BIN:-$(build_flotilla)}
D=$(mktemp -d /tmp/flotilla-icount-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$D"' EXIT
PORT=18080 BACKEND=18001

cat > "$D/backend.conf" <<CONF
worker_processes 1; daemon off; pid $D/backend.pid; error_log $D/backend.err warn;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello from the backend\n"; } } }
CONF
nginx -c "$D/backend.conf" -p "$D" &

cat > "$D/flotilla.toml" <<CONF
[edge]
listen = ["127.0.0.1:$PORT"]
access_log = false
workers = 1
[[routes]]
target_group = "web"
[target_groups.web]
targets = ["127.0.0.1:$BACKEND"]
[target_groups.web.health_check]
path = "/"
interval = "60s"
CONF
cat > "$D/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$PORT
  unique-id-format %{+X}o%ci%cp%fp%Ts%rt%pid
  unique-id-header X-Request-Id
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request add-header Forwarded for=%[src];host=%[req.hdr(host)];proto=http
  http-response set-header X-Request-Id %[unique-id]
  default_backend be
backend be
  option forwardfor
  http-reuse always
  server s1 127.0.0.1:$BACKEND
CONF
cat > "$D/nginx.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $D/nginx.pid; error_log $D/nginx.err warn;
events { worker_connections 1024; }
http { access_log off;
  upstream be { server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$PORT;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
      proxy_set_header X-Forwarded-Port \$server_port;
      proxy_set_header Forwarded "for=\$remote_addr;host=\$host;proto=\$scheme";
      proxy_set_header X-Request-Id \$request_id;
      add_header X-Request-Id \$request_id; } } }
CONF

count() { # name n cmd... -> the proxy's event totals for n requests (Ir, or Ir and cache misses)
  local name=$1 n=$2; shift 2
  local out="$D/cg-$name-$n.out"
  if [ "$SIM" = 1 ]; then
    FLOTILLA_LOG=warn valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file="$out" "$@" > "$D/vg-$name.log" 2>&1 &
  else
    FLOTILLA_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$@" > "$D/vg-$name.log" 2>&1 &
  fi
  local vp=$!
  for _ in $(seq 200); do sleep 0.1; (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; done
  sleep 1
  local proto=(--h1)
  [ "$H2" = 1 ] && proto=(-m 10)
  h2load "${proto[@]}" -n "$n" -c 16 -t 1 "http://127.0.0.1:$PORT/" | grep -q "$n succeeded" || echo "warning: $name: not all requests succeeded" >&2
  kill -TERM $vp; wait $vp || true
  grep -E '^summary:' "$out" | head -1 | cut -d' ' -f2-
}

names=(flotilla haproxy nginx)
[ "$H2" = 1 ] && names=(flotilla haproxy)
declare -A per
for name in "${names[@]}"; do
  case $name in
    flotilla) cmd=("$BIN" up --config "$D/flotilla.toml") ;;
    haproxy) cmd=(haproxy -f "$D/haproxy.cfg" -db) ;;
    nginx) cmd=(nginx -c "$D/nginx.conf" -p "$D") ;;
  esac
  a=$(count "$name" 2000 "${cmd[@]}")
  b=$(count "$name" $((2000 + N)) "${cmd[@]}")
  per[$name]=$(python3 -c "
a=list(map(int,'$a'.split())); b=list(map(int,'$b'.split())); d=[(y-x)/$N for x,y in zip(a,b)]
# cachegrind: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw; callgrind: Ir
print(f'{d[0]:.0f}' if len(d)==1 else f'{d[0]:.0f} | {d[1]:.0f} | {d[4]+d[7]:.0f} | {d[2]+d[5]+d[8]:.2f}')")
done
proto=HTTP/1.1; [ "$H2" = 1 ] && proto="HTTP/2 (h2c, 10 streams per connection)"
echo "$proto, $N requests, 16 connections, user space only:"
if [ "$SIM" = 1 ]; then
  echo "| proxy | instructions | L1i misses | L1d misses | LL misses |  (per request)"
  echo "|---|---:|---:|---:|---:|"
else
  echo "| proxy | instructions per request | flotilla / other |"
  echo "|---|---:|---:|"
fi
for name in "${names[@]}"; do
  if [ "$SIM" = 1 ]; then
    echo "| $name | ${per[$name]} |"
  else
    ratio=$(python3 -c "print(f'{${per[flotilla]}/${per[$name]}:.2f}')")
    [ "$name" = flotilla ] && ratio="—"
    echo "| $name | ${per[$name]} | $ratio |"
  fi
done
