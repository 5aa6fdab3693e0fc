#!/usr/bin/env bash
# Checks (and, as root on Debian/Ubuntu, installs) what building and testing need:
# cmake, a C compiler, make, pkg-config and OpenSSL headers to build Paho C from
# source; Mosquitto (+ its CLI clients), tinyproxy, Dante and microsocks (SOCKS) for the
# test suite, which also uses setpriv, unshare, ip and mkfifo (util-linux, iproute2,
# coreutils).
# Usage: scripts/deps.sh build|test
set -euo pipefail
want=${1:-build}

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have cmake || missing+=(cmake)
have cc || missing+=(build-essential)
have make || missing+=(build-essential)
have pkg-config || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
have cargo || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
if [ "$want" = test ] || [ "$want" = run ]; then
  [ -x /usr/sbin/mosquitto ] || have mosquitto || missing+=(mosquitto)
fi
if [ "$want" = test ]; then
  have mosquitto_passwd || missing+=(mosquitto)
  have mosquitto_sub || missing+=(mosquitto-clients)
  have tinyproxy || [ -x /usr/bin/tinyproxy ] || [ -x /usr/sbin/tinyproxy ] || missing+=(tinyproxy)
  [ -x /usr/sbin/danted ] || missing+=(dante-server)
  [ -x /usr/bin/microsocks ] || missing+=(microsocks)
  { have setpriv && have unshare; } || missing+=(util-linux)
  have ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
  have mkfifo || missing+=(coreutils)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

# shellcheck disable=SC2207
pkgs=($(printf '%s\n' "${missing[@]}" | sort -u))
if [ "$(id -u)" = 0 ] && have apt-get; then
  echo "Installing: ${pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${pkgs[@]}" >/dev/null
  # Debian starts a mosquitto service on :1883 (and a danted one, if its default
  # configuration lets it) after install; the tests never use them.
  exit 0
fi
echo "Missing: ${pkgs[*]}" >&2
echo "Install them with: sudo apt-get install ${pkgs[*]}" >&2
exit 1
