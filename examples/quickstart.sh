#!/usr/bin/env bash
# Runs the quickstart: three demo apps and an edge in front of them. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin flotilla
bin="${CARGO_TARGET_DIR:-target}/release/flotilla"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for i in 1 2 3; do
  "$bin" demo-app --port "900$i" --id "app-$i" --log-format text & pids+=($!)
done
echo "edge: http://127.0.0.1:8080/   admin: http://127.0.0.1:9090/api/v1/target-groups"
"$bin" up --config examples/quickstart.toml
