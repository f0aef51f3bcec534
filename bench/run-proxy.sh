#!/usr/bin/env bash
# Builds flotilla (release), installs the anchors from Debian if missing, runs the proxy benchmark.
# Usage: bench/run-proxy.sh [--duration 10] [--connections 64] [--rounds 3] [--only http1,tls,h2]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ensure_tools nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl taskset:util-linux
BIN=$(build_flotilla)
python3 bench/proxy_bench.py --binary "$BIN" "$@"
