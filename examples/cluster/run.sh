#!/usr/bin/env bash
# Two Flotilla edges sharing state through one Redis, in front of two demo apps.
# One command: bash examples/cluster/run.sh   (Ctrl-C stops everything)
#
#   curl -s localhost:8081/cached?cc=max-age=600     # cached on edge-1
#   curl -s localhost:8082/cached?cc=max-age=600     # cached on edge-2
#   curl -s -XPOST -H 'authorization: Bearer cluster-token' -d '{"paths":["/cached"]}' \
#        localhost:9091/api/v1/invalidations        # answered once both edges applied it
#   curl -s localhost:9091/api/v1/cluster            # both nodes, their lag, config hashes
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v redis-server >/dev/null || { echo "needs redis-server (apt install redis-server)" >&2; exit 1; }
cargo build --release --bin flotilla
bin="${CARGO_TARGET_DIR:-target}/release/flotilla"
state=/tmp/flotilla-cluster-example
mkdir -p "$state"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
# appendonly: a Redis restart keeps the invalidation stream, so the edges keep their caches.
redis-server --port 6390 --bind 127.0.0.1 --dir "$state" --appendonly yes --save "" >"$state/redis.log" 2>&1 & pids+=($!)
for i in 1 2; do
  "$bin" demo-app --port "910$i" --id "app-$i" --log-format text & pids+=($!)
done
sleep 0.5
"$bin" up --config examples/cluster/node-1.toml & pids+=($!)
"$bin" up --config examples/cluster/node-2.toml & pids+=($!)
echo "edges: http://127.0.0.1:8081/ http://127.0.0.1:8082/   cluster: http://127.0.0.1:9091/api/v1/cluster"
wait
