#!/usr/bin/env bash
# Builds flotilla (release), installs redis-server and wrk from Debian if missing, runs the
# cluster benchmark: invalidation propagation across 3 nodes and rate-limit decisions with Redis
# vs local. Usage: bench/cluster.sh [--invalidations 1000] [--duration 8]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ensure_tools redis-server:redis-server wrk:wrk taskset:util-linux
BIN=$(build_flotilla)
python3 bench/cluster_bench.py --binary "$BIN" "$@"
