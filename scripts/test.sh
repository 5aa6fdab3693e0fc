#!/usr/bin/env bash
# The whole test suite: unit tests, the integration suite (each test starts its own
# Mosquitto; the conformance suite also runs RabbitMQ, NATS and rumqttd, prepared by
# scripts/brokers.sh), the tests of the optional features, doc tests, and every example
# and benchmark built. Ends with one line: "N passed, M failed" over every test binary.
#
# Set AIOMQTT_REQUIRE_ALL_BROKERS=1 to fail (not skip) when a foreign broker is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> [%s] %s\n' "$1" "$2" >&2; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

step 1/6 "system packages (scripts/deps.sh)"
scripts/deps.sh test || exit 1

step 2/6 "foreign brokers for the conformance suite (scripts/brokers.sh; the first run builds rumqttd, ~3 min)"
if ! scripts/brokers.sh; then
  if [ "${AIOMQTT_REQUIRE_ALL_BROKERS:-0}" = 1 ]; then
    echo "a foreign broker could not be prepared (AIOMQTT_REQUIRE_ALL_BROKERS=1)" >&2
    exit 1
  fi
  echo "some foreign brokers are missing: the conformance suite reports them as SKIPPED" >&2
fi

step 3/6 "build: the crate, tests, examples, benchmarks (the first build compiles Paho C and OpenSSL bindings, ~70 s)"
cargo build --all-targets || exit 1

step 4/6 "tests (unit, integration, examples; about 3 minutes)"
status=0
cargo test --all-targets --no-fail-fast 2>&1 | tee -a "$log" || status=1

step 5/6 "the fault suite again, every link dialled by the relay and handed to the engine (about 90 s)"
AIOMQTT_TEST_LINK=handed cargo test --test it --no-fail-fast -- faults:: 2>&1 | tee -a "$log" || status=1

step 6/6 "tests of the optional features (bytes, tls-context), doc tests"
# The tests of `tls_context` and of `bytes` payloads exist only with their features (they
# make openssl and bytes part of the API); the rest of the integration suite does not
# change with them. The unit tests and doc tests run with both, which only add.
features=bytes,tls-context
cargo test --features "$features" --test it --no-fail-fast -- tls_context 2>&1 | tee -a "$log" || status=1
cargo test --features "$features" --lib --no-fail-fast 2>&1 | tee -a "$log" || status=1
cargo test --features "$features" --doc 2>&1 | tee -a "$log" || status=1

# One total over every "test result:" line of every binary.
read -r passed failed < <(awk '
  /^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i + 1) ~ /^passed/) p += $i
      if ($(i + 1) ~ /^failed/) f += $i
    }
  }
  END { print p + 0, f + 0 }' "$log")
echo
echo "$passed passed, $failed failed"
if [ "$failed" -ne 0 ] || [ "$status" -ne 0 ]; then
  exit 1
fi
