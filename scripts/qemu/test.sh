#!/usr/bin/env bash
# `make qemu-test`: the emulated board test, then the device-side unit tests
# under qemu-user for arm64 and armv7.
#
#   QEMU_SCENARIOS=smoke,flow   harness scenarios (see scripts/qemu/harness)
#   BOARD_ARCH=arm64            board to boot (arm64; armv7 also builds and boots)
#   QEMU_CROSS=0                skip the qemu-user unit tests
#
# Everything is built here from the tree: the board image (scripts/qemu/image.sh),
# the host devid-sim and devid-jig, and the harness. Logs: .build/qemu/run-ARCH/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCH=${BOARD_ARCH:-arm64}
SCENARIOS=${QEMU_SCENARIOS:-smoke,flow}
start=$EPOCHREALTIME
elapsed() { awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $start}"; }

for tool in qemu-system-aarch64 swtpm swtpm_setup socat mkfs.ext4 e2fsck; do
  command -v "$tool" >/dev/null || { echo "qemu-test: $tool missing; run scripts/deps.sh" >&2; exit 1; }
done

scripts/qemu/image.sh "$ARCH"
echo "qemu-test: build host devid-sim, devid-jig and the harness"
mkdir -p .build/qemu/bin
CGO_ENABLED=0 go build -trimpath -o .build/qemu/bin/ ./simulator/cmd/devid-sim ./enroll/cmd/devid-jig ./scripts/qemu/harness
echo "qemu-test: builds done at +$(elapsed)s; scenarios: $SCENARIOS"

rc=0
.build/qemu/bin/harness -arch "$ARCH" -scenarios "$SCENARIOS" \
  -sim .build/qemu/bin/devid-sim -jig .build/qemu/bin/devid-jig || rc=$?
echo "qemu-test: board done at +$(elapsed)s"

if [ "${QEMU_CROSS:-1}" != 0 ]; then
  scripts/qemu/unit-cross.sh || rc=1
  echo "qemu-test: qemu-user unit tests done at +$(elapsed)s"
fi
echo "qemu-test: total $(elapsed)s, $([ $rc = 0 ] && echo green || echo FAILED)"
exit $rc
