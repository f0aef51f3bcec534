# Shared by the bench scripts (source it from the repository root).

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flotilla-target}"

# ensure_tools command:debian-package ... — installs the packages whose command is missing.
ensure_tools() {
  local need=() t
  for t in "$@"; do
    command -v "${t%%:*}" >/dev/null || need+=("${t##*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
}

# Builds the release binary and prints its path.
build_flotilla() {
  cargo build --release --bin flotilla >&2
  echo "$CARGO_TARGET_DIR/release/flotilla"
}
