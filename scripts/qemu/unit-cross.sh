#!/usr/bin/env bash
# Runs unit tests of the device-side packages as linux/arm64 and linux/arm
# (GOARM=7) binaries under qemu-user. 32-bit ARM catches 64-bit atomic
# alignment bugs; both catch endianness/word-size assumptions.
#
#   scripts/qemu/unit-cross.sh [arm64|armv7 ...]        (default: both, in parallel)
#
# binfmt_misc is not mounted on these machines, so `go test -exec` hands each
# test binary to qemu-*-static. Packages whose tests need swtpm, the network
# simulator or host binaries built on the fly stay in the native run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCHES=("$@"); ((${#ARCHES[@]})) || ARCHES=(arm64 armv7)
# Pure unit packages of the device side (hal, enroll, dps, agent internals).
PKGS=${CROSS_PKGS:-"./hal/board ./hal/serial ./enroll/atomicfile ./enroll/csr ./enroll/certstore ./enroll/factory ./enroll/keys ./agent/config ./agent/queue ./agent/statedir"}
# Keep only packages that exist and have tests, so the list survives refactors.
sel=()
for p in $PKGS; do
  if [ -d "$p" ] && ls "$p"/*_test.go >/dev/null 2>&1; then sel+=("$p"); fi
done
if ((${#sel[@]} == 0)); then echo "unit-cross: no packages with tests yet"; exit 0; fi
mkdir -p .build/qemu
export CGO_ENABLED=0
rc=0
pids=()
for a in "${ARCHES[@]}"; do
  case "$a" in
    arm64) env=(GOARCH=arm64); exec=qemu-aarch64-static ;;
    armv7) env=(GOARCH=arm GOARM=7); exec=qemu-arm-static ;;
    *) echo "unit-cross: unknown arch $a" >&2; exit 2 ;;
  esac
  log=.build/qemu/unit-$a.log
  ( env "${env[@]}" go test -count=1 -short -timeout 5m -exec "$exec" "${sel[@]}" >"$log" 2>&1 ) &
  pids+=("$!:$a:$log")
done
for p in "${pids[@]}"; do
  IFS=: read -r pid a log <<<"$p"
  if wait "$pid"; then echo "unit-cross[$a]: ok"; sed 's/^/  /' "$log" | grep -E '^  (ok|FAIL|---)' || true
  else rc=1; echo "unit-cross[$a]: FAILED"; sed 's/^/  /' "$log" | tail -60; fi
done
exit $rc
