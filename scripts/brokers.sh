#!/usr/bin/env bash
# Prepares the foreign MQTT brokers of the cross-broker conformance suite
# (tests/it/conformance.rs). Idempotent: run it as often as you like.
#
#   rabbitmq  the machine's RabbitMQ service gets its MQTT plugin enabled ONLINE (no
#             restart), with the MQTT listener on 127.0.0.1:$AIOMQTT_RABBITMQ_MQTT_PORT
#             (default 1884: 1883 is Mosquitto's); guest/guest must log in over MQTT.
#   nats      the `nats-server` Debian package (the tests start their own instance with
#             JetStream and an MQTT listener on free ports).
#   rumqttd   the rumqttd 0.20.0 binary crate, `cargo install --locked` into the cache
#             directory (or an installed 0.20.x is reused; see prepare_rumqttd).
#
# Mosquitto itself comes from scripts/deps.sh. What the tests read is left in the cache
# directory $AIOMQTT_BROKERS_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/aiomqtt-brokers):
# bin/rumqttd and rabbitmq-mqtt.port.
#
# A broker that cannot be prepared is named with the reason, and the script exits 1.
set -uo pipefail

CACHE=${AIOMQTT_BROKERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aiomqtt-brokers}
RABBIT_PORT=${AIOMQTT_RABBITMQ_MQTT_PORT:-1884}
RUMQTTD_VERSION=0.20
mkdir -p "$CACHE/bin"

failed=()
ok=()
say() { printf '[brokers] %s\n' "$*" >&2; }
fail() { failed+=("$1: $2"); say "FAILED $1: $2"; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" = 0 ]; }

apt_updated=
apt_install() {
  if ! is_root || ! have apt-get; then
    return 1
  fi
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || return 1
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------
# RabbitMQ: the MQTT plugin, enabled online on 127.0.0.1:$RABBIT_PORT.

rabbit_eval() { timeout 60 rabbitmqctl -q eval "$1" 2>&1; }

# The Erlang term of the listener we want.
rabbit_listener="[{\"127.0.0.1\", $RABBIT_PORT}]"

rabbit_listening() {
  rabbit_eval 'rabbit_networking:active_listeners().' | tr -d ' \n' |
    grep -q "mqtt,\"[^\"]*\",{127,0,0,1},$RABBIT_PORT,"
}

# Without this the port would fall back to 1883 when the node next boots (the plugin
# stays enabled in enabled_plugins), clash with Mosquitto and fail the node's boot.
# advanced.config is plain Erlang terms, read at boot; written only when absent.
rabbit_persist_port() {
  local adv=/etc/rabbitmq/advanced.config
  if [ -e "$adv" ]; then
    if grep -q "rabbitmq_mqtt" "$adv"; then
      return 0
    fi
    say "rabbitmq: $adv exists without a rabbitmq_mqtt entry; not editing it (after a" \
      "reboot the MQTT listener would be on 1883)"
    return 0
  fi
  [ -d /etc/rabbitmq ] && [ -w /etc/rabbitmq ] || return 0
  printf '%% Written by aiomqtt scripts/brokers.sh: the MQTT plugin listens on loopback,\n%% port %s (1883 belongs to Mosquitto).\n[{rabbitmq_mqtt, [{tcp_listeners, %s}]}].\n' \
    "$RABBIT_PORT" "$rabbit_listener" >"$adv"
  if ! rabbit_eval "file:consult(\"$adv\")." | grep -q '^{ok,'; then
    rm -f "$adv"
    say "rabbitmq: could not write a valid $adv; removed it"
  fi
}

prepare_rabbitmq() {
  if ! have rabbitmqctl || ! have rabbitmq-plugins; then
    fail rabbitmq "rabbitmqctl/rabbitmq-plugins not found (is rabbitmq-server installed?)"
    return
  fi
  say "rabbitmq: checking the node"
  local out
  if ! out=$(timeout 60 rabbitmq-diagnostics -q ping 2>&1); then
    fail rabbitmq "the node does not answer rabbitmq-diagnostics ping: ${out//$'\n'/ }"
    return
  fi
  if rabbit_listening; then
    say "rabbitmq: MQTT plugin already listening on 127.0.0.1:$RABBIT_PORT"
  elif timeout 60 rabbitmq-plugins -q is_enabled rabbitmq_mqtt >/dev/null 2>&1; then
    # Enabled, but elsewhere (or not at all, e.g. it lost 1883 to Mosquitto): move it.
    say "rabbitmq: plugin enabled but not on $RABBIT_PORT; restarting its listener there"
    out=$(rabbit_eval "application:stop(rabbitmq_mqtt), application:set_env(rabbitmq_mqtt, tcp_listeners, $rabbit_listener), application:start(rabbitmq_mqtt).")
    if ! rabbit_listening; then
      fail rabbitmq "could not move the MQTT listener to 127.0.0.1:$RABBIT_PORT: ${out//$'\n'/ }"
      return
    fi
  else
    # Set the listener before enabling: the plugin's default is 1883 (Mosquitto's).
    say "rabbitmq: setting the MQTT listener to 127.0.0.1:$RABBIT_PORT, then enabling rabbitmq_mqtt (takes ~30 s)"
    out=$(rabbit_eval "case application:load(rabbitmq_mqtt) of ok -> ok; {error, {already_loaded, _}} -> ok end, application:set_env(rabbitmq_mqtt, tcp_listeners, $rabbit_listener).")
    if [ "$out" != ok ]; then
      fail rabbitmq "could not set the rabbitmq_mqtt listener: ${out//$'\n'/ }"
      return
    fi
    if ! out=$(timeout 300 rabbitmq-plugins enable rabbitmq_mqtt 2>&1); then
      fail rabbitmq "rabbitmq-plugins enable rabbitmq_mqtt failed: ${out//$'\n'/ }"
      return
    fi
    if ! rabbit_listening; then
      fail rabbitmq "plugin enabled but nothing listens on 127.0.0.1:$RABBIT_PORT"
      return
    fi
  fi
  rabbit_persist_port
  # The guest user may log in from loopback only; that is where the tests are.
  if ! have mosquitto_pub; then
    apt_install mosquitto-clients || true
  fi
  if ! have mosquitto_pub; then
    fail rabbitmq "mosquitto_pub (mosquitto-clients) is needed to check the MQTT login"
    return
  fi
  if ! out=$(timeout 20 mosquitto_pub -h 127.0.0.1 -p "$RABBIT_PORT" -V mqttv311 \
    -u guest -P guest -i aiomqtt-brokers-sh -t aiomqtt-brokers/probe -m probe -q 1 2>&1); then
    fail rabbitmq "guest/guest cannot publish over MQTT on 127.0.0.1:$RABBIT_PORT: ${out//$'\n'/ }"
    return
  fi
  echo "$RABBIT_PORT" >"$CACHE/rabbitmq-mqtt.port"
  ok+=("rabbitmq: MQTT on 127.0.0.1:$RABBIT_PORT, guest/guest logs in")
}

# ---------------------------------------------------------------------------------------
# NATS: the Debian package; a smoke start with JetStream and an MQTT listener.

prepare_nats() {
  if ! have nats-server; then
    say "nats: installing the nats-server package"
    apt_install nats-server || true
  fi
  if ! have nats-server; then
    fail nats "nats-server is not installed and apt-get could not install it"
    return
  fi
  local version dir pid out port=
  version=$(nats-server --version 2>&1)
  # MQTT arrived in 2.2.
  if ! [[ $version =~ v2\.([0-9]+)\. ]] || [ "${BASH_REMATCH[1]}" -lt 2 ]; then
    fail nats "$version has no MQTT listener (needs 2.2 or later)"
    return
  fi
  say "nats: $version; smoke start with JetStream and MQTT on loopback"
  dir=$(mktemp -d)
  cat >"$dir/nats.conf" <<EOF
listen: 127.0.0.1:-1
server_name: aiomqtt-brokers-sh
jetstream { store_dir: "$dir/js" }
mqtt { host: 127.0.0.1, port: -1 }
EOF
  nats-server -c "$dir/nats.conf" >"$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    port=$(sed -n 's|.*Listening for MQTT clients on mqtt://127.0.0.1:\([0-9]*\).*|\1|p' "$dir/log")
    [ -n "$port" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -n "$port" ] && have mosquitto_pub; then
    out=$(timeout 20 mosquitto_pub -h 127.0.0.1 -p "$port" -V mqttv311 -i aiomqtt-brokers-sh \
      -t aiomqtt-brokers/probe -m probe -q 1 2>&1) || port=
  fi
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if [ -z "$port" ]; then
    fail nats "a nats-server with JetStream and MQTT did not start or accept a QoS 1 publish: $(tail -3 "$dir/log" | tr '\n' ' ') ${out:-}"
    rm -rf "$dir"
    return
  fi
  rm -rf "$dir"
  ok+=("nats: $version (MQTT with JetStream starts)")
}

# ---------------------------------------------------------------------------------------
# rumqttd: the binary crate, version 0.20.x.

rumqttd_version_ok() {
  local v
  v=$("$1" --version 2>/dev/null) || return 1
  [[ $v == "rumqttd $RUMQTTD_VERSION."* ]]
}

# The lock file published with rumqttd 0.20.0 pins metrics 0.22.1, which current rustc
# rejects (E0521, rust-lang/rust#141402), so a plain `cargo install --locked rumqttd` fails.
# We build the published 0.20.0 source with its lock file, moving only metrics to 0.22.4
# (and the two crates 0.22.4 needs newer: ahash, zerocopy), with `cargo install --locked`.
prepare_rumqttd() {
  local bin="$CACHE/bin/rumqttd" found work manifest src out
  if [ -x "$bin" ] && rumqttd_version_ok "$bin"; then
    ok+=("rumqttd: $("$bin" --version) at $bin (cached)")
    return
  fi
  found=$(command -v rumqttd 2>/dev/null || true)
  if [ -n "$found" ] && rumqttd_version_ok "$found"; then
    ln -sf "$found" "$bin"
    ok+=("rumqttd: $("$found" --version) at $found (already installed; linked from $bin)")
    return
  fi
  if ! have cargo; then
    fail rumqttd "cargo is not installed (needed to build rumqttd)"
    return
  fi
  work="$CACHE/build"
  rm -rf "$work"
  mkdir -p "$work/fetch/src"
  : >"$work/fetch/src/lib.rs"
  printf '[package]\nname = "aiomqtt-fetch-rumqttd"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n[dependencies]\nrumqttd = "=%s.0"\n' \
    "$RUMQTTD_VERSION" >"$work/fetch/Cargo.toml"
  say "rumqttd: fetching the rumqttd $RUMQTTD_VERSION.0 source from crates.io"
  # Its own target dirs, never the project's (CARGO_TARGET_DIR).
  if ! out=$(cd "$work/fetch" && env -u CARGO_TARGET_DIR cargo fetch 2>&1); then
    fail rumqttd "cargo fetch of rumqttd $RUMQTTD_VERSION.0 failed: ${out//$'\n'/ }"
    return
  fi
  manifest=$(cd "$work/fetch" && env -u CARGO_TARGET_DIR cargo metadata --format-version 1 --offline 2>/dev/null |
    grep -o "\"manifest_path\":\"[^\"]*/rumqttd-$RUMQTTD_VERSION\\.0/Cargo.toml\"" | head -1 | cut -d'"' -f4)
  if [ -z "$manifest" ] || [ ! -f "$manifest" ]; then
    fail rumqttd "the rumqttd $RUMQTTD_VERSION.0 source was fetched but not found"
    return
  fi
  src="$work/rumqttd-$RUMQTTD_VERSION.0"
  cp -r "$(dirname "$manifest")" "$src"
  chmod -R u+w "$src"
  if ! out=$(cd "$src" && env -u CARGO_TARGET_DIR cargo update -p metrics@0.22.1 --precise 0.22.4 2>&1); then
    fail rumqttd "could not move metrics 0.22.1 -> 0.22.4 in rumqttd's Cargo.lock: ${out//$'\n'/ }"
    return
  fi
  say "rumqttd: cargo install --locked --path $src (a few minutes on 2 cores)"
  if ! env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR cargo install --locked \
    --path "$src" --root "$CACHE" --force; then
    fail rumqttd "cargo install --locked of rumqttd $RUMQTTD_VERSION.0 failed (see above)"
    return
  fi
  rm -rf "$work"
  if ! rumqttd_version_ok "$bin"; then
    fail rumqttd "installed, but $bin --version says: $("$bin" --version 2>&1)"
    return
  fi
  ok+=("rumqttd: $("$bin" --version) at $bin (installed)")
}

start=$SECONDS
prepare_rabbitmq
prepare_nats
prepare_rumqttd

say "done in $((SECONDS - start)) s"
for line in "${ok[@]}"; do say "ok     $line"; done
if [ ${#failed[@]} -ne 0 ]; then
  for line in "${failed[@]}"; do say "FAILED $line"; done
  exit 1
fi
