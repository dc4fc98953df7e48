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
# Device-side packages (and the station packages whose tests drive a device
# over a pty) whose tests need no simulator and no host binary built on the
# fly. swtpm-backed tests are in: qemu-user passes the exec of the host's
# swtpm through, so the TPM code runs as arm code against it.
PKGS=${CROSS_PKGS:-"./hal/board ./hal/serial ./hal/gpio ./hal/tpm ./hal/atomicfile ./enroll/keys ./enroll/keys/tpmkey ./enroll/csr ./enroll/certstore ./enroll/factory ./enroll/station/ca ./enroll/station/jig ./agent/config ./agent/localapi ./agent/queue ./agent/sdnotify ./agent/statedir"}
# dps: its unit tests only (topics, parsers, backoff, credentials, dial
# classification, fuzz seeds); the rest runs against devid-sim natively.
DPS_RUN=${CROSS_DPS_RUN:-'Test(Usernames|DPSTopics|TelemetryTopic|PropertyBagNullAndForms|ParseResponseTopics|MethodAndDesiredTopics|ParseC2DTopic|ParseOperationStatus|ParseStatusError|BackoffAndLimiter|Credential|AzureRoots|ConfigValidation|HubConfigValidation|DialTLSClassification|DialNetworkErrors)$|^Fuzz'}
# Keep only packages that exist and have tests, so the list survives refactors.
sel=()
for p in $PKGS; do
  if [ -d "$p" ] && ls "$p"/*_test.go >/dev/null 2>&1; then sel+=("$p"); fi
done
if ((${#sel[@]} == 0)); then echo "unit-cross: no packages with tests yet"; exit 0; fi
# Tests to skip in the cross run only (a -skip regexp), each with its reason
# in a comment here; empty when every selected test passes on arm.
SKIP=${CROSS_SKIP:-}
skipflag=(); [ -n "$SKIP" ] && skipflag=(-skip "$SKIP")
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
  ( env "${env[@]}" go test -trimpath -count=1 -short -timeout 150s -exec "$exec" "${skipflag[@]}" "${sel[@]}" >"$log" 2>&1 &&
    if [ -d dps ]; then env "${env[@]}" go test -trimpath -count=1 -short -timeout 150s -exec "$exec" -run "$DPS_RUN" ./dps >>"$log" 2>&1; fi ) &
  pids+=("$!:$a:$log")
done
for p in "${pids[@]}"; do
  IFS=: read -r pid a log <<<"$p"
  if wait "$pid"; then echo "unit-cross[$a]: ok"; sed 's/^/  /' "$log" | grep -E '^  (ok|FAIL|---)' || true
  else rc=1; echo "unit-cross[$a]: FAILED"; sed 's/^/  /' "$log" | tail -60; fi
done
exit $rc
