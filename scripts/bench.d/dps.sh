#!/usr/bin/env bash
# Prints the dps section of the benchmark report from the Go benchmark run
# that scripts/bench.sh just made (.build/bench-go.txt): QoS 1 telemetry
# rates, time to "assigned" for devid and the official Node SDK against the
# same devid-sim, and their ratio.
set -eu

main() {
  cd "$(dirname "$0")/../.."
  local raw=.build/bench-go.txt
  echo "## dps: DPS registration and hub telemetry"
  echo
  if [ ! -s "$raw" ] || ! grep -q '^BenchmarkRegister/devid' "$raw"; then
    echo "_no dps benchmark results in $raw (run \`make bench\`)._"
    echo
    return 0
  fi
  # metric NAME UNIT: the value printed before UNIT on NAME's line.
  metric() {
    awk -v name="$1" -v unit="$2" 'index($1, name) == 1 { for (i = 2; i <= NF; i++) if ($i == unit) { print $(i-1); exit } }' "$raw"
  }
  local go_ms node_ms ratio trips
  go_ms=$(metric BenchmarkRegister/devid ms/assigned)
  trips=$(metric BenchmarkRegister/devid roundtrips/assigned)
  node_ms=$(metric BenchmarkRegister/node-sdk ms/assigned)
  ratio=$(metric BenchmarkRegister/node-sdk node/devid)
  echo "| figure (loopback, devid-sim, one device) | value |"
  echo "|---|---|"
  echo "| time to \"assigned\", retry-after=0, devid | ${go_ms:-?} ms (${trips:-?} round trips: register, poll) |"
  echo "| time to \"assigned\", retry-after=0, Node SDK (azure-iot-provisioning-device-mqtt) | ${node_ms:-skipped} ms |"
  echo "| Node SDK / devid | ${ratio:-n/a}× |"
  echo "| QoS 1 telemetry to the simulated hub, 1 in flight | $(metric 'BenchmarkTelemetryQoS1/window=1-' msgs/s) msgs/s |"
  echo "| QoS 1 telemetry to the simulated hub, 32 in flight | $(metric 'BenchmarkTelemetryQoS1/window=32-' msgs/s) msgs/s |"
  echo "| QoS 1 telemetry, client alone (bare broker, 32 in flight) | $(metric 'BenchmarkTelemetryClientOnly/window=32-' msgs/s) msgs/s |"
  echo
  echo "The simulated hub stores every message durably before its PUBACK and commits the"
  echo "messages that arrive during one fsync with the next (group commit): with 1 in flight"
  echo "each message waits for its own fsync, with 32 they share them. The client-alone row"
  echo "is the dps client's own ceiling."
  echo
}

main "$@"
