#!/usr/bin/env bash
# devid-sim load: DPS registrations/s and concurrent TLS hub connections,
# with the simulator's RSS. Prints markdown sections (see simulator/bench):
# one with the default RSA server key (what Azure presents), one with an
# ECDSA P-256 server key (cheaper handshakes).
#   SIM_BENCH_DEVICES   devices to register and hold connected (default 10000)
#   SIM_BENCH_ARGS      extra flags for the bench (e.g. "-reg-workers 1024")
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=.build/bin/devid-sim
if [ ! -x "$bin" ]; then
  mkdir -p .build/bin
  go build -trimpath -o "$bin" ./simulator/cmd/devid-sim
fi
# Polls go out as soon as a 202 arrives (-honour-retry-after=false): the figure is the
# simulator's capacity, not the retry-after a patient device would wait.
# Progress goes to stderr; the markdown goes to stdout.
go run ./simulator/bench -sim "$bin" -devices "${SIM_BENCH_DEVICES:-10000}" -honour-retry-after=false ${SIM_BENCH_ARGS:-}
go run ./simulator/bench -sim "$bin" -devices "${SIM_BENCH_DEVICES:-10000}" -honour-retry-after=false -sim-args "--server-key ecdsa" ${SIM_BENCH_ARGS:-}
