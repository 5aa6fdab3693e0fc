#!/usr/bin/env bash
# The whole test suite: unit, integration (each test starts its own Mosquitto),
# doc tests, and every example and benchmark built.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo build --all-targets --quiet
cargo test --all-targets --no-fail-fast
cargo test --doc
