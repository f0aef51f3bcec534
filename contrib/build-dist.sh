#!/usr/bin/env bash
# Builds the distribution binary: the `dist` profile (whole-program LTO, one codegen unit) plus
# profile-guided optimisation trained on what the edge does all day, and prints its path.
#
# Why: an edge's per-request cost is dominated by instruction-cache and data-cache misses across
# hyper, h2, rustls and tokio rather than by instruction count (bench/instructions.sh
# --cache-sim). PGO lets LLVM lay hot code out together, split cold paths off, and inline by
# measured frequency — the release process of rustc, Chrome and Firefox, applied to flotilla.
#
# Training (loopback only, about a minute): the instrumented binary serves demo-app targets over
# HTTP/1.1, TLS, HTTP/2 (TLS and h2c), cache hits, cache misses that compress (gzip, brotli,
# zstd) text from a `files:` origin, and image variants of a few photos (from ../shared/corpus
# when present, else a generated PNG); a second short run keeps the access log on. Code that
# training never reaches is optimised for size, so the workload covers every hot path a user
# meets.
#
# Usage: contrib/build-dist.sh   → prints $CARGO_TARGET_DIR/<host triple>/dist/flotilla
# Needs rustup's llvm-tools (installed if missing), wrk, h2load, openssl, curl (installed from
# Debian if missing); two full builds, ~27 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh # ensure_tools, CARGO_TARGET_DIR
ensure_tools wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
SYSROOT=$(rustc --print sysroot)
PROFDATA="$SYSROOT/lib/rustlib/$TRIPLE/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  rustup component add llvm-tools >&2
fi
[ -x "$PROFDATA" ] || { echo "llvm-profdata not found at $PROFDATA" >&2; exit 1; }

D=$(mktemp -d /tmp/flotilla-pgo-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$D"' EXIT
# --target keeps RUSTFLAGS off build scripts and proc macros: only the binary is instrumented.
GEN_DIR="$CARGO_TARGET_DIR/pgo-generate"
RUSTFLAGS="-Cprofile-generate=$D/raw" cargo build --profile dist --target "$TRIPLE" --bin flotilla \
  --target-dir "$GEN_DIR" >&2
GEN="$GEN_DIR/$TRIPLE/dist/flotilla"

# --- training ---------------------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$D/key.pem" \
  -out "$D/cert.pem" -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
mkdir -p "$D/img"
CORPUS=../shared/corpus/images
PHOTOS=()
for p in 04_skimage_rocket_640x427.jpg 01_skimage_chelsea_451x300.png 06_mate_GreenMeadow_1280x1024.jpg; do
  [ -f "$CORPUS/$p" ] && cp "$CORPUS/$p" "$D/img/" && PHOTOS+=("$p")
done
if [ ${#PHOTOS[@]} -eq 0 ]; then # outside this workspace: a 640x427 RGB gradient PNG
  python3 - "$D/img/gradient.png" <<'PY'
import struct, sys, zlib
w, h = 640, 427
rows = b"".join(b"\0" + b"".join(bytes((x * 255 // w, y * 255 // h, (x * y) % 256)) for x in range(w))
               for y in range(h))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                              + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
PY
  PHOTOS=(gradient.png)
fi

# Text for compression: this repository's documentation, served by a `files:` origin.
mkdir -p "$D/assets"
cp README.md "$D/assets/readme.txt"
cp ARCHITECTURE.md "$D/assets/architecture.html"

"$GEN" demo-app --port 18001 --id a >/dev/null 2>&1 &
"$GEN" demo-app --port 18002 --id b >/dev/null 2>&1 &
wait_port 18001; wait_port 18002

train() { # access_log seconds
  cat > "$D/flotilla.toml" <<CONF
[edge]
listen = ["127.0.0.1:18080"]
access_log = $1
workers = 1
[edge.tls]
listen = ["127.0.0.1:18443"]
certificates = [{ cert = "$D/cert.pem", key = "$D/key.pem" }]
[[routes]]
path = "/static/*"
target_group = "web"
cache = "static"
[[routes]]
path = "/assets/*"
origin = "files:$D"
cache = "static"
[[routes]]
target_group = "web"
[cache]
memory = "64MiB"
[cache_behaviors.static]
default_ttl = "1d"
compress = true
key = { query = "all" }
[images]
source = "files:$D/img"
[target_groups.web]
targets = ["127.0.0.1:18001", "127.0.0.1:18002"]
algorithm = "least_outstanding"
[target_groups.web.health_check]
path = "/health"
interval = "5s"
CONF
  FLOTILLA_LOG=warn "$GEN" up --config "$D/flotilla.toml" >/dev/null 2>"$D/flotilla.err" &
  local pid=$!
  wait_port 18080; wait_port 18443; sleep 1
  local s=$2
  wrk -t1 -c32 -d"${s}s" http://127.0.0.1:18080/whoami >/dev/null
  wrk -t1 -c32 -d"${s}s" https://localhost:18443/whoami >/dev/null
  h2load -c 16 -m 10 -D "$s" -t 1 https://localhost:18443/whoami >/dev/null
  h2load -c 16 -m 10 -D "$s" -t 1 http://127.0.0.1:18080/whoami >/dev/null
  wrk -t1 -c16 -d"${s}s" -H 'Accept-Encoding: gzip, br, zstd' http://127.0.0.1:18080/static/app.css >/dev/null
  h2load -c 4 -m 10 -D "$s" -t 1 -H 'accept-encoding: br' https://localhost:18443/static/app.css >/dev/null
  local i # cache misses (a new query each time): stored, compressed three ways
  for i in $(seq 40); do
    curl -sf -o /dev/null -H 'Accept-Encoding: br' "http://127.0.0.1:18080/assets/readme.txt?v=$i"
    curl -sf -o /dev/null -H 'Accept-Encoding: zstd' "http://127.0.0.1:18080/assets/architecture.html?v=$i"
  done
  for photo in "${PHOTOS[@]}"; do
    for accept in image/avif image/webp image/jpeg; do
      for preset in thumbnail small; do
        curl -sf -o /dev/null -H "Accept: $accept" "http://127.0.0.1:18080/_img/$preset/$photo"
      done
    done
  done
  kill -TERM $pid; wait $pid
}
train false 6
train true 2
kill -TERM $(jobs -p) 2>/dev/null || true
wait || true

"$PROFDATA" merge -o "$D/merged.profdata" "$D"/raw/*.profraw >&2
# Functions the profile does not know (build-time generated code) only warn; they are not errors.
RUSTFLAGS="-Cprofile-use=$D/merged.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
  cargo build --profile dist --target "$TRIPLE" --bin flotilla >&2
echo "$CARGO_TARGET_DIR/$TRIPLE/dist/flotilla"
