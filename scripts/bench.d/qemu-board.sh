#!/usr/bin/env bash
# Emulated-board figures (not Go benchmarks): image build time, boot times
# and boot-to-connected on the arm64 QEMU board, over RUNS runs (default 3).
# Prints a markdown section; never fails on a figure.
set -uo pipefail
cd "$(dirname "$0")/../.."
RUNS=${QEMU_BENCH_RUNS:-3}
t0=$EPOCHREALTIME
scripts/qemu/image.sh arm64 >/dev/null 2>&1 || { echo "## QEMU board"; echo; echo "image build failed; run scripts/qemu/image.sh"; exit 0; }
img=$(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}")
mkdir -p .build/qemu/bin
CGO_ENABLED=0 go build -trimpath -o .build/qemu/bin/ ./simulator/cmd/devid-sim ./enroll/cmd/devid-jig ./scripts/qemu/harness 2>/dev/null
echo "## QEMU board (arm64, TCG, cortex-a53)"
echo
echo "Image build (warm cache, includes Go cross-builds): ${img} s. Runs: $RUNS."
echo
echo "| run | smoke: QEMU start to power-off (s) | factory programming after reconnect (ms) | boot-to-connected (s) | flow, 3 boots (s) |"
echo "|---|---|---|---|---|"
for i in $(seq "$RUNS"); do
  out=$(.build/qemu/bin/harness -arch arm64 -work .build/qemu/bench-arm64 -scenarios smoke,flow \
        -sim .build/qemu/bin/devid-sim -jig .build/qemu/bin/devid-jig 2>&1)
  smoke=$(grep -oP 'smoke: QEMU exited at \+\K[0-9.]+' <<<"$out")
  prog=$(grep -oP 'programmed in \K[0-9]+' <<<"$out")
  b2c=$(grep -oP 'boot-to-connected \K[0-9.]+' <<<"$out")
  flow=$(grep -oP 'PASS flow \(\K[0-9.]+' <<<"$out")
  echo "| $i | ${smoke:-fail} | ${prog:-fail} | ${b2c:-fail} | ${flow:-fail} |"
done
echo
echo "boot-to-connected: QEMU start of the third boot (after a power cut while registering) to the simulated hub recording the device Connected; includes DPS's two 3 s retry-after waits. See docs/qemu-board.md."
echo
