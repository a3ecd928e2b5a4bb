# Shared by scripts/demo and scripts/test: install what building and testing fieldagent needs on
# Debian 12 (or newer), then make sure a cargo is on PATH. Safe to run again: it installs only
# what is missing. Sourced, not run.

set -euo pipefail

# Debian packages the build and the tests need: a C toolchain and CMake for the bundled Eclipse
# Paho C library, OpenSSL headers for TLS, openssl and mosquitto for the tests and the demo.
FIELDAGENT_APT_PACKAGES=(build-essential cmake pkg-config libssl-dev openssl ca-certificates
  mosquitto mosquitto-clients)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "missing Debian packages: ${missing[*]}; run this script as root, or install them first"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_toolchain() {
  apt_install "${FIELDAGENT_APT_PACKAGES[@]}"
  # rustup's cargo, where one is installed, comes first.
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    # Debian 12's rustc-web is the Rust that exists for amd64, arm64 and armhf alike (>= 1.85).
    apt_install rustc-web cargo-web
  fi
  say "using $(cargo --version)"
}

# Stops the processes whose PIDs are listed, by PID only.
stop_pids() {
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    wait "$pid" 2>/dev/null || true
  done
}
