#!/usr/bin/env bash
# The long versions of the reliability suite (issue 7), release build:
#  - chaos under load (crates/flotilla/tests/chaos.rs): four fleet-managed demo-app instances
#    behind the edge take steady GET + POST load while one is kill -9'd every 10 s (the fleet
#    replaces it), one is slow (300 ms) and one answers 503; prints requests sent, failures by
#    kind, orders applied twice / lost, and the edge's peak RSS;
#  - rolling refreshes and scale-in/out cycles under the same load for as long: nothing fails;
#  - resource bounds (tests/bounds.rs) at 4x the CI scale: 64 concurrent 16 MiB uploads, 128
#    clients not reading 64 MiB responses, 160 000 cache keys; prints peak RSS for each.
#
#   bench/chaos.sh [--seconds N] [--kill-every N] [--bounds-scale N]   (default 300, 10, 4)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SECS=300
KILL_EVERY=10
SCALE=4
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECS="$2"; shift 2 ;;
    --kill-every) KILL_EVERY="$2"; shift 2 ;;
    --bounds-scale) SCALE="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
export FLOTILLA_CHAOS_SECS="$SECS" FLOTILLA_CHAOS_KILL_EVERY="$KILL_EVERY" FLOTILLA_BOUNDS_SCALE="$SCALE"
# One test at a time: the chaos run and the refresh cycles must not share the two cores.
cargo test --release -p flotilla --test chaos --test bounds -- --nocapture --test-threads 1 2>&1 \
  | grep -oE '(chaos: |refresh/scale: |  GET |  POST |edge RSS|edge peak|[0-9]+ (concurrent|clients not|distinct)).*|panicked.*|test result.*'
