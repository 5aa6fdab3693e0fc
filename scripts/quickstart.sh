#!/usr/bin/env bash
# The main job: a real publish/subscribe round trip. Uses MQTT_HOST/MQTT_PORT if
# set, else starts a private local Mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${MQTT_HOST:-}" ]; then scripts/deps.sh build; else scripts/deps.sh run; fi
exec cargo run --quiet --example quickstart
