#!/usr/bin/env bash
# Memory under a flood of large originals: every preset × format × corpus photo (216 distinct
# variants, sources up to 20 MP), N requests at a time, through the release binary; prints the
# status counts and flotilla's peak RSS (VmHWM).
#
#   bench/images-flood.sh [--workers N] [--concurrency N]
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=2
CONC=64
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) WORKERS="$2"; shift 2 ;;
    --concurrency) CONC="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
cargo build --release -q -p flotilla
BIN="$CARGO_TARGET_DIR/release/flotilla"
CORPUS="$(cd ../shared/corpus/images && pwd)"
WORK="$(mktemp -d)"
APP_PORT=23901 EDGE_PORT=23902 ADMIN_PORT=23903
"$BIN" demo-app --port $APP_PORT --photos "$CORPUS" >/dev/null 2>&1 &
APP=$!
cat >"$WORK/flotilla.toml" <<EOF
[edge]
listen = ["127.0.0.1:$EDGE_PORT"]
access_log = false
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[routes]]
path = "/*"
target_group = "web"
[target_groups.web]
targets = ["127.0.0.1:$APP_PORT"]
[target_groups.web.health_check]
interval = "1s"
timeout = "500ms"
healthy_threshold = 1
[images]
source = "web"
workers = $WORKERS
EOF
"$BIN" up --config "$WORK/flotilla.toml" >"$WORK/log" 2>&1 &
EDGE=$!
trap 'kill $EDGE $APP 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$ADMIN_PORT/health" >/dev/null && break; sleep 0.2; done
sleep 1.5 # first health check
start=$(date +%s)
for p in thumbnail small medium large; do
  for a in image/avif image/webp image/jpeg; do
    for f in $(ls "$CORPUS" | grep -E '\.(jpg|png)$'); do echo "$p $a $f"; done
  done
done | timeout 900 xargs -P "$CONC" -n 3 sh -c \
  'curl -s -o /dev/null -w "%{http_code}\n" -H "Accept: $1" "http://127.0.0.1:'"$EDGE_PORT"'/_img/$0/photos/$2"' |
  sort | uniq -c | sed 's/^/status /'
echo "elapsed $(( $(date +%s) - start )) s, workers $WORKERS, concurrency $CONC"
grep -E 'VmHWM|VmRSS' "/proc/$EDGE/status"
