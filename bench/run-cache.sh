#!/usr/bin/env bash
# Builds flotilla (release), installs nginx, varnish and wrk from Debian if missing, runs the
# cache-hit benchmark. Usage: bench/run-cache.sh [--duration 8] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ensure_tools nginx:nginx varnishd:varnish wrk:wrk taskset:util-linux
BIN=$(build_flotilla)
python3 bench/cache_bench.py --binary "$BIN" "$@"
