#!/usr/bin/env bash
# Builds flotilla (release), installs the anchors from Debian if missing, runs the proxy benchmark.
# Usage: bench/run-proxy.sh [--pgo] [--duration 10] [--connections 64] [--rounds 3] [--only http1,tls,h2]
#   --pgo   also build the distribution binary (contrib/build-dist.sh: fat LTO + PGO, ~27 min) and run it
#           side by side as `flotilla-pgo`
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ensure_tools nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl taskset:util-linux
EXTRA=()
if [ "${1:-}" = "--pgo" ]; then
  shift
  EXTRA=(--binary-dist "$(bash contrib/build-dist.sh)")
fi
BIN=$(build_flotilla)
python3 bench/proxy_bench.py --binary "$BIN" "${EXTRA[@]}" "$@"
