#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and prints executions per target.
#
#   bench/fuzz.sh [--seconds N] [TARGET...]      (default: 60 s each, all targets)
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs cargo-fuzz if missing.
# Seeds live in fuzz/corpus/TARGET (small, committed); what a run discovers goes to a scratch
# copy, so the repository's corpora stay small. A crash stops the script with libFuzzer's report
# and the reproducer under fuzz/artifacts/TARGET.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH="$2"; shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(config cache_control image_url signed_url image_decode)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-fuzz-target}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O
printf '%-14s %12s %10s %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/" 2>/dev/null || true
  log="$(mktemp)"
  if cargo +nightly fuzz run -O "$t" "$work" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    result="no crash"
  else
    result="CRASH (see $log and fuzz/artifacts/$t)"
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  printf '%-14s %12s %10s %s\n' "$t" "$runs" "$rate" "$result"
  rm -rf "$work"
  [ "$result" = "no crash" ] || { tail -40 "$log"; exit 1; }
done
