#!/usr/bin/env bash
# Builds flotilla (release), installs nginx, varnish and wrk from Debian if missing, runs the
# cache-hit benchmark. Usage: bench/run-cache.sh [--duration 8] [--rounds 3]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
need=()
for bin in nginx:nginx varnishd:varnish wrk:wrk taskset:util-linux; do
  command -v "${bin%%:*}" >/dev/null || need+=("${bin##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cargo build --release --bin flotilla
python3 bench/cache_bench.py --binary "$CARGO_TARGET_DIR/release/flotilla" "$@"
