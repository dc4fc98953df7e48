#!/usr/bin/env bash
# Factory programming time against the 115200-baud wire floor.
#   1. BenchmarkProgramOverPty (enroll/station/jig): one fresh device per
#      iteration, in-process, over a real pty and tarm/serial; then
#      BenchmarkProgramV1VsV2: protocol 1 and 2 through a 115200-baud relay.
#   2. BenchmarkStation (enroll/station/line): 1, 4 and 8 slots at once,
#      through a relay throttled to 115200 baud, and unthrottled.
#   3. The real binaries: devid-agent factory and devid-jig program --json
#      over a socat pty pair, N boards (one state dir each).
# Prints a markdown section on stdout. Measures only; never fails on a figure.
set -euo pipefail

main() {
  cd "$(dirname "$0")/../.."
  local n=${FACTORY_BENCH_N:-10}
  echo "## Factory programming (enroll)"
  echo
  echo "Wire floor = bytes on the wire / 11520 B/s (115200 baud 8N1). A pty has no baud rate, so the"
  echo "measured time is the protocol + key generation + CA + fsync cost without the UART."
  echo
  echo '```'
  go test -run '^$' -bench BenchmarkProgramOverPty -benchtime 50x -count 3 ./enroll/station/jig/ 2>&1 | grep -E '^Benchmark' || true
  echo '```'
  echo
  echo "Protocol 1 against protocol 2 (docs/factory-protocol.md, section 12): one board per iteration"
  echo "through a relay throttled to 11,520 B/s each way (115200 baud, serialtest.Throttled). floor-ms is"
  echo "the board's wire bytes, both directions added, at 11,520 B/s; x-floor is the measured time over it."
  echo "Protocol 1 is stop-and-wait, one direction at a time. Protocol 2 keeps up to 4 requests in flight,"
  echo "so both directions may carry bytes at once; the relay passes each read it makes (up to 4 KB) whole,"
  echo "after its last byte's wire time, so requests sent together reach the device together."
  echo
  echo '```'
  go test -run '^$' -bench BenchmarkProgramV1VsV2 -benchtime 10x -count 3 ./enroll/station/jig/ 2>&1 | grep -E '^Benchmark' || true
  echo '```'
  echo
  echo "A board with its key in swtpm, without and with TPM key attestation (docs/attestation.md):"
  echo "the difference is what attestation costs; its wire bytes are what it adds on a UART."
  echo
  echo '```'
  go test -run '^$' -bench BenchmarkProgramTPM -benchtime 20x -count 3 ./enroll/station/jig/ 2>&1 | grep -E '^Benchmark' || true
  echo '```'
  echo

  echo "A station (devid-jig station, enroll/station/line) programming 1, 4 and 8 boards at once: each"
  echo "slot's pty pair joined by a relay that throttles each way to 11,520 B/s (115200 baud), then"
  echo "unthrottled (pty). boards/min is the line's rate; wire-floor-ms/board is one board at 115200 baud."
  echo
  echo '```'
  go test -run '^$' -bench BenchmarkStation -benchtime 5x ./enroll/station/line/ 2>&1 | grep -E '^Benchmark' || true
  echo '```'
  echo

  command -v socat >/dev/null || { echo "_socat missing: binary run skipped_"; return 0; }
  tmp=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "${tmp:-}"' EXIT
  go build -o "$tmp/" ./agent/cmd/devid-agent ./enroll/cmd/devid-jig
  "$tmp/devid-jig" ca init --dir "$tmp/ca" >/dev/null
  local times=() bytes=0
  for i in $(seq 1 "$n"); do
    socat pty,raw,echo=0,link="$tmp/dev$i" pty,raw,echo=0,link="$tmp/jig$i" & local sp=$!
    waitfor "socat pty pair $i" '[ -e "$tmp/jig$i" ] && [ -e "$tmp/dev$i" ]' || return 0
    "$tmp/devid-agent" factory --port "$tmp/dev$i" --state "$tmp/state$i" --root "$tmp/ca/root.pem" \
      --device-id "bench-$i" --key file: 2>"$tmp/agent$i.log" & local ap=$!
    waitfor "devid-agent factory $i" 'grep -q "serving factory bus" "$tmp/agent$i.log" 2>/dev/null' || {
      sed 's/^/    /' "$tmp/agent$i.log" >&2; return 0; }
    local start end out
    start=$(date +%s%N)
    out=$("$tmp/devid-jig" program --port "$tmp/jig$i" --ca-dir "$tmp/ca" --json 2>/dev/null)
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000000 )))
    bytes=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["bytes_sent"]+d["bytes_received"])' "$out")
    kill "$ap" "$sp" 2>/dev/null || true
    wait "$ap" "$sp" 2>/dev/null || true
  done
  local sorted; sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  local median; median=$(echo "$sorted" | awk -v n="$n" 'NR==int((n+1)/2)')
  local floor; floor=$(awk -v b="$bytes" 'BEGIN{printf "%.0f", b/11520*1000}')
  echo "| what | figure |"
  echo "|---|---|"
  echo "| boards programmed (devid-jig process start to exit: HELLO, key generation, CSR, CA with ledger fsync, INSTALL with fsync; STATUS only with a protocol 1 board) | $n |"
  echo "| median wall time per board | ${median} ms |"
  echo "| min / max | $(echo "$sorted" | head -1) / $(echo "$sorted" | tail -1) ms |"
  echo "| bytes on the wire per board | $bytes |"
  echo "| wire floor at 115200 baud | ${floor} ms |"
  echo
}

# waitfor WHAT COND: polls the shell condition COND for at most 10 s, so a
# dead socat or agent ends the section with a note instead of hanging.
waitfor() {
  local try # not "i": COND may use the caller's $i
  for try in $(seq 200); do
    eval "$2" && return 0
    sleep 0.05
  done
  echo "_factory bench: $1 did not come up within 10 s; binary run skipped_"
  return 1
}

main "$@"
