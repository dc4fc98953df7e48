#!/usr/bin/env bash
# `make qemu-test`: the emulated boards, then the device-side unit tests
# under qemu-user for arm64 and armv7.
#
#   BOARD_ARCHES="arm64 armv7 debian"  boards to build and boot (in parallel;
#                               debian is the systemd board, scripts/qemu/image-debian.sh)
#   QEMU_SCENARIOS=smoke,flow   harness scenarios (see scripts/qemu/harness); by
#                               default the arm64 board also runs usb-adapter and usb-gadget
#   QEMU_CROSS=0                skip the qemu-user unit tests
#
# Each board is judged by the harness from the simulator's own records
# (registration, hub device, telemetry), not from console output.
# Everything is built here from the tree: the board images
# (scripts/qemu/image.sh), the host devid-sim and devid-jig, and the harness.
# Logs: .build/qemu/run-ARCH/ (console per boot, swtpm, sim), .build/qemu/unit-ARCH.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCHES=${BOARD_ARCHES:-arm64 armv7 debian}
SCENARIOS=${QEMU_SCENARIOS:-smoke,flow}
start=$EPOCHREALTIME
elapsed() { awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $start}"; }

for tool in qemu-system-aarch64 qemu-system-arm qemu-aarch64-static qemu-arm-static swtpm swtpm_setup socat mkfs.ext4 e2fsck dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "qemu-test: $tool missing; run scripts/deps.sh" >&2; exit 1; }
done

for a in $ARCHES; do
  case "$a" in
    debian) scripts/qemu/image-debian.sh ;;
    *) scripts/qemu/image.sh "$a" ;;
  esac
done
echo "qemu-test: build host devid-sim, devid-jig and the harness"
mkdir -p .build/qemu/bin
CGO_ENABLED=0 go build -o .build/qemu/bin/ ./simulator/cmd/devid-sim ./enroll/cmd/devid-jig ./scripts/qemu/harness
echo "qemu-test: builds done at +$(elapsed)s; boards: $ARCHES; scenarios: $SCENARIOS"

# The boards run in parallel, each with its own simulator, TPM and disk
# (pipefail: a subshell fails when its harness does, not only sed).
rc=0
pids=()
for a in $ARCHES; do
  mkdir -p ".build/qemu/run-$a"
  extra=(-scenarios "$SCENARIOS")
  # The USB bus is proven on the arm64 board (scripts/qemu/harness/usb.go).
  [ "$a" = arm64 ] && [ -z "${QEMU_SCENARIOS:-}" ] && extra=(-scenarios "$SCENARIOS,usb-adapter,usb-gadget")
  # The systemd board runs all its steps in one boot (harness/debian.go).
  [ "$a" = debian ] && extra=(-scenarios debian -image .build/qemu/debian/image.env -timeout 14m)
  ( .build/qemu/bin/harness -arch "$a" "${extra[@]}" \
      -sim .build/qemu/bin/devid-sim -jig .build/qemu/bin/devid-jig 2>&1 | sed -u "s/^/[$a] /" ) &
  pids+=("$!")
done
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "qemu-test: boards done at +$(elapsed)s"

if [ "${QEMU_CROSS:-1}" != 0 ]; then
  scripts/qemu/unit-cross.sh || rc=1
  echo "qemu-test: qemu-user unit tests done at +$(elapsed)s"
fi
echo "qemu-test: total $(elapsed)s, $([ $rc = 0 ] && echo green || echo FAILED)"
exit $rc
