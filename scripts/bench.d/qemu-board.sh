#!/usr/bin/env bash
# Emulated-board figures (not Go benchmarks): image build time, boot times
# and boot-to-connected on the arm64 QEMU board, over RUNS runs (default 3).
# Prints a markdown section; never fails on a figure.
set -uo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
RUNS=${QEMU_BENCH_RUNS:-3}
t0=$EPOCHREALTIME
scripts/qemu/image.sh arm64 >/dev/null 2>&1 || { echo "## QEMU board"; echo; echo "image build failed; run scripts/qemu/image.sh"; exit 0; }
img=$(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}")
mkdir -p .build/qemu/bin
CGO_ENABLED=0 go build -trimpath -o .build/qemu/bin/ ./simulator/cmd/devid-sim ./enroll/cmd/devid-jig ./scripts/qemu/harness 2>/dev/null
# The footprint baseline, run on the board beside the agent (scripts/bench.d/mqttfloor).
# Without it the board figures still come, and the baseline column says fail.
floor=()
GOOS=linux GOARCH=arm64 CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o .build/qemu/bin/mqttfloor-arm64 ./scripts/bench.d/mqttfloor 2>/dev/null &&
  floor=(-floor .build/qemu/bin/mqttfloor-arm64)
echo "## QEMU board (arm64, TCG, cortex-a53)"
echo
echo "Image build (warm cache, includes Go cross-builds): ${img} s. Runs: $RUNS."
echo
echo "| run | smoke: QEMU start to power-off (s) | factory programming after reconnect (ms) | boot-to-connected after a power cut while registering (s) | boot-to-connected, cached assignment (s; goal ≤ 3) | of which QEMU start to init (s) | agent RSS connected, idle (MiB; goal ≤ 8) | of which anonymous / binary pages (MiB) | baseline client RSS, same board, same hub (MiB) | of which anonymous / binary pages (MiB) | flow, 4 boots (s) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for i in $(seq "$RUNS"); do
  out=$(.build/qemu/bin/harness -arch arm64 -work .build/qemu/bench-arm64 -scenarios smoke,flow \
        -sim .build/qemu/bin/devid-sim -jig .build/qemu/bin/devid-jig "${floor[@]}" 2>&1)
  smoke=$(grep -oP 'smoke: QEMU exited at \+\K[0-9.]+' <<<"$out")
  prog=$(grep -oP 'programmed in \K[0-9]+' <<<"$out")
  b2c=$(grep -oP 'boot-to-connected \K[0-9.]+' <<<"$out")
  cached=$(grep -oP 'boot-to-connected-cached \K[0-9.]+' <<<"$out")
  # QEMU start to init = the host's time at init's first line minus init's own clock.
  toinit=$(grep -oP 'QEMU start to init \K[0-9.]+' <<<"$out")
  rss=$(grep -oP 'agent-rss .*rss_kib=\K[0-9]+' <<<"$out")
  anon=$(grep -oP 'agent-rss .*anon_kib=\K[0-9]+' <<<"$out")
  shm=$(grep -oP 'agent-rss .*shmem_kib=\K[0-9]+' <<<"$out")
  file=$(grep -oP 'agent-rss .*file_kib=\K[0-9]+' <<<"$out")
  frss=$(grep -oP 'floor-rss .*rss_kib=\K[0-9]+' <<<"$out")
  fanon=$(grep -oP 'floor-rss .*anon_kib=\K[0-9]+' <<<"$out")
  fshm=$(grep -oP 'floor-rss .*shmem_kib=\K[0-9]+' <<<"$out")
  ffile=$(grep -oP 'floor-rss .*file_kib=\K[0-9]+' <<<"$out")
  flow=$(grep -oP 'PASS flow \(\K[0-9.]+' <<<"$out")
  figure boot_cached_arm64_s "$cached"
  figure boot_qemu_to_init_arm64_s "$toinit"
  figure rss_idle_arm64_board_kib "$rss"
  figure rss_floor_arm64_board_kib "$frss"
  mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}' || echo fail; }
  # split RSS ANON SHMEM FILE: "anonymous / binary pages", or fail when the RSS was not measured.
  split() { [ -n "$1" ] && echo "$(mib "$2") / $(mib "$((${3:-0} + ${4:-0}))")" || echo fail; }
  echo "| $i | ${smoke:-fail} | ${prog:-fail} | ${b2c:-fail} | ${cached:-fail} | ${toinit:-fail} | $(mib "$rss") | $(split "$rss" "$anon" "$shm" "$file") | $(mib "$frss") | $(split "$frss" "$fanon" "$fshm" "$ffile") | ${flow:-fail} |"
done
echo
echo "boot-to-connected after a power cut: QEMU start of the third boot (after a power cut while registering) to the simulated hub recording the device Connected; includes DPS's retry-after waits."
echo "boot-to-connected, cached assignment: the fourth boot, which must not register again (the harness checks the DPS registration is untouched); QEMU start to the hub recording the device Connected."
echo "QEMU start to init: when the console shows init's first line, less init's own clock (QEMU and kernel boot under TCG; the agent cannot shorten it)."
echo "agent RSS: /proc/PID/status of the agent on the board after 5 s connected and idle; the binary runs from the initramfs, so its pages are shared memory (RssShmem) there. Baseline client: scripts/bench.d/mqttfloor (paho over crypto/tls, certificate auth) run by the board's init from the flash, connected to the agent's hub with an identity of its own from the same factory CA, idle 5 s. See docs/qemu-board.md and docs/benchmarks.md."
echo
