#!/usr/bin/env bash
# Image variants: flotilla's transform vs libvips' vipsthumbnail, both on one core, over the whole
# corpus (../shared/corpus/images), for 320 px wide WebP q80 and JPEG q80.
#
#   bench/images.sh [--rounds N] [--width W]
#
# Prints variants/s (best of N rounds, each side run alternately), output bytes, and ratios.
# Bytes count the image itself: EXIF and XMP are left out on both sides (vipsthumbnail 8.14
# keeps them even with [strip] for WebP), ICC profiles are kept and counted on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3
WIDTH=320
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --width) WIDTH="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"
command -v vipsthumbnail >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libvips-tools; }
command -v nasm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nasm; }
cargo build --release -q -p flotilla-images --example convert
CONVERT="$CARGO_TARGET_DIR/release/examples/convert"
CORPUS="$(cd ../shared/corpus/images && pwd)"
FILES=("$CORPUS"/*.jpg "$CORPUS"/*.png)
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Bytes of an image file without its EXIF/XMP (JPEG APP1 segments, WebP EXIF/XMP chunks).
payload_bytes() {
  python3 - "$@" <<'EOF'
import struct, sys
total = 0
for path in sys.argv[1:]:
    b = open(path, 'rb').read()
    size = len(b)
    if b[:4] == b'RIFF':
        i = 12
        while i + 8 <= len(b):
            tag, n = b[i:i+4], struct.unpack('<I', b[i+4:i+8])[0]
            if tag in (b'EXIF', b'XMP '):
                size -= 8 + n + (n & 1)
            i += 8 + n + (n & 1)
    elif b[:2] == b'\xff\xd8':
        i = 2
        while i + 4 <= len(b) and b[i] == 0xFF:
            m, n = b[i+1], struct.unpack('>H', b[i+2:i+4])[0]
            if m == 0xDA:
                break
            if m == 0xE1:
                size -= 2 + n
            i += 2 + n
    total += size
print(total)
EOF
}

now() { date +%s.%N; }

run_flotilla() { # format quality outdir
  taskset -c 1 "$CONVERT" "$WIDTH" "$1" "$2" "$3" "${FILES[@]}" >/dev/null
}

run_vips() { # format quality outdir
  local ext="$1"; [ "$ext" = jpeg ] && ext=jpg
  taskset -c 1 vipsthumbnail "${FILES[@]}" --size "${WIDTH}x" -o "$3/%s.$ext[Q=$2,strip]"
}

echo "corpus: ${#FILES[@]} photos ($(du -sh "$CORPUS" | cut -f1)), ${WIDTH} px wide, one core (taskset -c 1), best of $ROUNDS"
printf '%-6s %14s %14s %8s %12s %12s %8s\n' format "flotilla v/s" "libvips v/s" ratio "flotilla B" "libvips B" "bytes"
for fmt in webp jpeg; do
  best_f=999; best_v=999
  for _ in $(seq 1 "$ROUNDS"); do
    mkdir -p "$WORK/f" "$WORK/v"
    s=$(now); run_flotilla "$fmt" 80 "$WORK/f"; e=$(now)
    best_f=$(python3 -c "print(min($best_f, $e - $s))")
    s=$(now); run_vips "$fmt" 80 "$WORK/v"; e=$(now)
    best_v=$(python3 -c "print(min($best_v, $e - $s))")
  done
  ext="$fmt"; [ "$fmt" = jpeg ] && ext=jpg
  bf=$(payload_bytes "$WORK"/f/*."$fmt")
  bv=$(payload_bytes "$WORK"/v/*."$ext")
  python3 - "$fmt" "${#FILES[@]}" "$best_f" "$best_v" "$bf" "$bv" <<'EOF'
import sys
fmt, n, tf, tv, bf, bv = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(f"{fmt:<6} {n/tf:14.2f} {n/tv:14.2f} {tv/tf:7.2f}x {bf:12d} {bv:12d} {bf/bv:7.2f}x")
EOF
  rm -rf "$WORK/f" "$WORK/v"
done
echo "ratio = flotilla throughput / libvips throughput (higher is better); bytes = flotilla / libvips (lower is better)"
