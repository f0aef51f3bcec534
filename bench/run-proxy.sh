#!/usr/bin/env bash
# Builds flotilla (release), installs the anchors from Debian if missing, runs the proxy benchmark.
# Usage: bench/run-proxy.sh [--duration 10] [--connections 64] [--rounds 3] [--only http1,tls,h2]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
need=()
for bin in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client openssl:openssl taskset:util-linux; do
  command -v "${bin%%:*}" >/dev/null || need+=("${bin##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
cargo build --release --bin flotilla
python3 bench/proxy_bench.py --binary "$CARGO_TARGET_DIR/release/flotilla" "$@"
