#!/usr/bin/env bash
# The whole test suite: unit, integration (each test starts its own Mosquitto), the
# tests of the tls-context feature, doc tests, and every example and benchmark built.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo build --all-targets --quiet
cargo test --all-targets --no-fail-fast
# The tests of `tls_context` exist only with its feature (it makes openssl part of the
# API); the rest of the suite does not change with it.
cargo test --features tls-context --test it --no-fail-fast -- tls_context
cargo test --doc
