# Shared by scripts/demo and scripts/test: install what building and testing fieldagent needs on
# Debian 12 (or newer), then make sure a cargo is on PATH. Safe to run again: it installs only
# what is missing. Sourced, not run.

set -euo pipefail

# Debian packages the build and the tests need: a C toolchain and CMake for the bundled Eclipse
# Paho C library, OpenSSL headers for TLS, openssl and mosquitto for the tests and the demo,
# systemd for systemd-analyze and systemd-sysusers (the unit's checks), dpkg-dev and lintian for
# the .deb (dpkg-shlibdeps computes its Depends), procps for the unit's /bin/kill.
FIELDAGENT_APT_PACKAGES=(build-essential cmake pkg-config libssl-dev openssl ca-certificates
  mosquitto mosquitto-clients systemd dpkg-dev lintian procps)

# The cargo-deb that builds the .deb; 3.8.0 builds with Rust 1.85 (Debian 12's rustc-web).
CARGO_DEB_VERSION=3.8.0

# The rumqttd the interop tests run against (tests/interop.rs).
RUMQTTD_VERSION=0.20.0
# The Modbus server of tests/modbus.rs (PyPI), in a venv under target/interop/pymodbus.
PYMODBUS_VERSION=3.8.6

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
  apt-get update -qq || say "apt-get update reported errors (a mirror mid-sync?); going on with the indexes it has"
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

ensure_cargo_deb() {
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    say "cargo install cargo-deb $CARGO_DEB_VERSION (once, about 2 minutes)"
    cargo install --quiet --locked "cargo-deb@$CARGO_DEB_VERSION"
  fi
}

# The other side of the Sparkplug B tests: Node.js with Eclipse Tahu's payload codec
# (tests/sparkplug/package-lock.json), and protoc for the check of the generated protobuf types.
# Debian 12's nodejs and npm; a machine that already has node and npm (e.g. NodeSource's) keeps
# them.
ensure_test_tools() {
  # libfaketime: the wall clock stepped under a running agent (tests/lifecycle.rs).
  apt_install protobuf-compiler libfaketime
  # Device keys in hardware without hardware (tests/device_keys.rs): swtpm, a TPM 2.0 simulator,
  # behind tpm2-abrmd on a private D-Bus bus, used through tpm2-openssl; SoftHSM as a PKCS#11
  # token, made with opensc's pkcs11-tool, used through the pkcs11 engine.
  apt_install swtpm swtpm-tools tpm2-openssl tpm2-abrmd libtss2-tcti-swtpm0 libtss2-tcti-tabrmd0 \
    dbus softhsm2 opensc libengine-pkcs11-openssl
  command -v node >/dev/null 2>&1 || apt_install nodejs
  command -v npm >/dev/null 2>&1 || apt_install npm
  if [ ! -d tests/sparkplug/node_modules/sparkplug-payload ]; then
    say "npm ci in tests/sparkplug (Eclipse Tahu's sparkplug-payload)"
    (cd tests/sparkplug && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  fi
  # An independent JOSE implementation for the signed-request tests (tests/signed.rs).
  if [ ! -d tests/jose/node_modules/jose ]; then
    say "npm ci in tests/jose (panva/jose)"
    (cd tests/jose && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  fi
  # The brokers of the interop tests (tests/interop.rs): aedes from npm, rumqttd from crates.io,
  # built once into target/interop/ (about 3 minutes).
  if [ ! -d tests/brokers/node_modules/aedes ]; then
    say "npm ci in tests/brokers (aedes)"
    (cd tests/brokers && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  fi
  ensure_pymodbus
  # Not --locked: the lock file of rumqttd 0.20.0 pins metrics 0.22.1, which today's Rust
  # refuses to compile (rust-lang/rust#141402); the newest compatible versions build.
  # verify-client-cert makes it require and check client certificates.
  if [ ! -x target/interop/rumqttd/bin/rumqttd ]; then
    say "cargo install rumqttd $RUMQTTD_VERSION into target/interop (once)"
    cargo install --quiet "rumqttd@$RUMQTTD_VERSION" --features verify-client-cert \
      --root target/interop/rumqttd
  fi
}

# The Modbus server of tests/modbus.rs and the cross smoke test: pymodbus from PyPI, with
# pyserial for RTU, in a venv under target/interop/pymodbus.
ensure_pymodbus() {
  apt_install python3 python3-venv
  if ! target/interop/pymodbus/bin/python -c "import pymodbus, serial" >/dev/null 2>&1; then
    say "pip install pymodbus $PYMODBUS_VERSION into target/interop/pymodbus (once)"
    python3 -m venv target/interop/pymodbus
    target/interop/pymodbus/bin/pip install --quiet --disable-pip-version-check \
      "pymodbus[serial]==$PYMODBUS_VERSION"
  fi
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

# Writes a throwaway CA (ca.pem), a broker certificate for 127.0.0.1 (server.crt/key), and client
# certificates named by CN (device.crt/key with CN $2, observer.crt/key) into directory $1.
make_pki() {
  local dir=$1 device_cn=$2
  (
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 \
      -subj /CN=fieldagent-demo-ca -keyout ca.key -out ca.pem 2>/dev/null
    issue() {  # $1 = file name, $2 = CN, $3 = extension file or empty
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1.key" -out "$1.csr" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 90 \
        ${3:+-extfile "$3"} -out "$1.crt" 2>/dev/null
    }
    echo "subjectAltName=IP:127.0.0.1" > server.ext
    issue server 127.0.0.1 server.ext
    issue device "$device_cn"
    issue observer observer
    chmod 600 ./*.key
  )
}

# A free loopback port: the first one nothing answers on.
free_port() {
  local port=$((20000 + RANDOM % 20000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
  echo "$port"
}

# Starts mosquitto with mutual TLS on 127.0.0.1:$2 with the certificates of make_pki in $1/pki,
# logging to $1/mosquitto.log; prints its PID once it listens. With STOCK_BROKER=1, without
# `set_tcp_nodelay true` (mosquitto's default: Nagle's algorithm on).
start_mosquitto() {
  local dir=$1 port=$2 nodelay=true
  [ "${STOCK_BROKER:-0}" = 1 ] && nodelay=false
  cat > "$dir/mosquitto.conf" <<CONF
user root
persistence false
set_tcp_nodelay $nodelay
log_dest file $dir/mosquitto.log
listener $port 127.0.0.1
cafile $dir/pki/ca.pem
certfile $dir/pki/server.crt
keyfile $dir/pki/server.key
require_certificate true
use_identity_as_username true
CONF
  mosquitto -c "$dir/mosquitto.conf" >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  echo "$pid"
}

# "tid name ns slices" for each thread of process $1 (schedstat: ns on CPU, times scheduled in);
# a thread that ends while this runs is left out.
per_thread() {
  local task line
  for task in /proc/"$1"/task/*; do
    line=$({ tr -d ' ' < "$task/comm" && awk '{ print $1, $3 }' "$task/schedstat"; } 2>/dev/null | paste -sd' ') || continue
    [ -n "$line" ] && echo "${task##*/} $line"
  done
  return 0
}
