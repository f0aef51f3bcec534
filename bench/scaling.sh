#!/usr/bin/env bash
# Compares scaling policies by replaying every trace in ../shared/traces through
# `flotilla simulate`: the seeds' step policy, an HPA-style tracker and recommended.toml.
# Usage: bench/scaling.sh [extra simulate flags]   (e.g. --peak-instances 20)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
traces="${TRACES:-$root/../shared/traces}"
bin="${FLOTILLA_BIN:-${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}/release/flotilla}"
if [[ ! -x "$bin" ]]; then
  (cd "$root" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}" cargo build --release --locked -p flotilla)
fi
printf '%-30s %-12s %14s %8s %10s %8s\n' trace policy instance-hours x-oracle under-min actions
for t in "$traces"/*.csv; do
  for p in step hpa recommended; do
    out=$("$bin" simulate --trace "$t" --config "$root/examples/scaling/$p.toml" --json "$@")
    python3 - "$t" "$p" "$out" <<'PY'
import json, os, sys
t, p, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(f"{os.path.basename(t):<30} {p:<12} {r['instance_hours']:14.1f} {r['instance_hours']/r['oracle_instance_hours']:8.3f} {r['under_capacity_minutes']:10d} {r['scaling_actions']:8d}")
PY
  done
done
