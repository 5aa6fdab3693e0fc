#!/usr/bin/env bash
# Offline builds for air-gapped sites: copies the source of every dependency (locked
# versions, Cargo.lock) into vendor/ and writes the matching source replacement to
# vendor/config.toml. Neither is committed. Then, without network:
#
#   cargo build --offline --config vendor/config.toml
#
# (Paho C is bundled inside paho-mqtt-sys's source, so it is vendored with it; the C
# toolchain, cmake and the OpenSSL headers still come from the host, or use
# `--features vendored-ssl` to build OpenSSL from its vendored source too.)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "vendoring the locked dependencies into vendor/ ..." >&2
# cargo vendor empties vendor/ first, so its output goes elsewhere until it is done.
config=$(mktemp)
trap 'rm -f "$config"' EXIT
cargo vendor --locked --versioned-dirs vendor 2>/dev/null > "$config"
# cargo prints the replacement with a path relative to the project root; make it
# independent of the working directory of later builds.
sed "s|directory = \"vendor\"|directory = \"$(pwd)/vendor\"|" "$config" > vendor/config.toml
echo "done: $(find vendor -mindepth 1 -maxdepth 1 -type d | wc -l) crates; build with" >&2
echo "  cargo build --offline --config vendor/config.toml" >&2
