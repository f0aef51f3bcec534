#!/usr/bin/env bash
# Runs the HTTP caching conformance suite (the one behind cache-tests.fyi, as published on npm:
# http-cache-tests) against flotilla, nginx proxy_cache and Varnish, each in front of the suite's
# own origin, and prints passes and failures per kind (required / optimal / check).
# Everything listens on 127.0.0.1. Usage: bench/conformance.sh [--list]   (--list: flotilla's
# failing required tests)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SUITE_VERSION=0.4.5
ensure_tools node:nodejs npm:npm nginx:nginx varnishd:varnish
BIN=$(build_flotilla)
D=$(mktemp -d /tmp/flotilla-conformance-XXXXXX)
chmod 755 "$D"
cleanup() {
  pkill -f "$D" 2>/dev/null || true
  local jobs_left
  jobs_left=$(jobs -p)
  [ -z "$jobs_left" ] || kill $jobs_left 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
(cd "$D" && npm install --silent --no-audit --no-fund "http-cache-tests@$SUITE_VERSION" >/dev/null)
export SUITE_DIR="$D/node_modules/http-cache-tests"
cp bench/conformance/origin.mjs bench/conformance/summary.mjs "$D/"
PORT=18080 ORIGIN=8000
(cd "$D" && npm_config_protocol=http npm_config_port=$ORIGIN npm_config_pidfile="$D/origin.pid" exec node origin.mjs) > "$D/origin.log" 2>&1 &
wait_port $ORIGIN

cat > "$D/flotilla.toml" <<CONF
[edge]
listen = ["127.0.0.1:$PORT"]
access_log = false
[cache]
memory = "64MiB"
[cache_behaviors.conformance]
min_ttl = "0s"
default_ttl = "0s"      # add nothing: only the responses' own freshness (and RFC heuristics)
error_ttl = "0s"        # nor negative caching of 404/410 beyond what the origin says
max_ttl = "3650d"
[[routes]]
target_group = "origin"
cache = "conformance"
[target_groups.origin]
targets = ["127.0.0.1:$ORIGIN"]
[target_groups.origin.health_check]
enabled = false
CONF
mkdir -p "$D/ngx/cache"
cat > "$D/ngx/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $D/ngx/nginx.pid; error_log $D/ngx/error.log warn;
events { worker_connections 1024; }
http { access_log off;
  proxy_cache_path $D/ngx/cache levels=1:2 keys_zone=c:10m max_size=100m inactive=60m use_temp_path=off;
  server { listen 127.0.0.1:$PORT;
    location / { proxy_pass http://127.0.0.1:$ORIGIN; proxy_cache c; proxy_http_version 1.1; proxy_set_header Host \$http_host; } } }
CONF
printf 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "%s"; }\n' "$ORIGIN" > "$D/varnish.vcl"

run() { # name cmd...
  local name=$1; shift
  "$@" > "$D/$name.log" 2>&1 &
  local pid=$!
  wait_port $PORT
  (cd "$SUITE_DIR" && env -u npm_config_id npm_config_base="http://127.0.0.1:$PORT" npm_package_config_id= \
    node --no-warnings cli.mjs > "$D/results-$name.json" 2>/dev/null)
  kill $pid 2>/dev/null || true; pkill -f "$D/varnish" 2>/dev/null || true; wait $pid 2>/dev/null || true
  sleep 1
  echo "$name $(cd "$D" && node summary.mjs "results-$name.json")"
}
echo "http-cache-tests $SUITE_VERSION: passes/failures per kind"
run flotilla env FLOTILLA_LOG=warn "$BIN" up --config "$D/flotilla.toml"
run nginx nginx -c "$D/ngx/nginx.conf" -p "$D/ngx"
run varnish varnishd -F -a "127.0.0.1:$PORT" -f "$D/varnish.vcl" -s malloc,64m -n "$D/varnish"
if [ "${1:-}" = "--list" ]; then (cd "$D" && node summary.mjs results-flotilla.json list | tail -n +2); fi
