#!/usr/bin/env bash
# The main job: a real publish/subscribe round trip. Uses MQTT_HOST/MQTT_PORT if
# set, else starts a private local Mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "==> [1/2] system packages (scripts/deps.sh)" >&2
if [ -n "${MQTT_HOST:-}" ]; then scripts/deps.sh build; else scripts/deps.sh run; fi
echo "==> [2/2] build and run examples/quickstart.rs (the first build compiles Paho C, ~70 s)" >&2
exec cargo run --example quickstart
