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

# wait_port PORT — waits up to 30 s for 127.0.0.1:PORT to accept connections.
wait_port() {
  local _
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 never opened" >&2
  return 1
}
