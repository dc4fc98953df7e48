#!/usr/bin/env bash
# Agent figures for make bench (markdown on stdout, progress on stderr):
#   - stripped static binary size for amd64, arm64, armv7;
#   - RSS connected and idle, and under telemetry load (local API -> queue -> hub);
#   - CPU time connected and idle, and under that load;
#   - time from boot with a cached assignment to connected.
# Runs against devid-sim on loopback; every wait is bounded. Measures only.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../lib.sh"

main() {
  cd "$(dirname "$0")/../.."
  BIN="${BIN:-$PWD/.build/bin}"
  W="$(mktemp -d /tmp/devid-bench-agent.XXXXXX)"
  PIDS=()
  trap cleanup EXIT
  LOAD_N="${AGENT_BENCH_MESSAGES:-5000}"
  BOOTS="${AGENT_BENCH_BOOTS:-5}"
  IDLE_S="${AGENT_BENCH_IDLE_SECONDS:-10}"

  echo "## Agent (scripts/bench.d/agent.sh)"
  echo
  sizes
  # The RSS figures are for the shipped build: static, stripped.
  AGENT="$W/devid-agent"
  CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$AGENT" ./agent/cmd/devid-agent
  bench_board_setup
  runtime_figures
}

sizes() {
  log "cross-building devid-agent"
  echo "### Stripped static binary (CGO_ENABLED=0, -trimpath -ldflags '-s -w')"
  echo
  echo "| target | bytes | MB | goal |"
  echo "|---|---|---|---|"
  for t in amd64: arm64: arm:7; do
    local arch=${t%%:*} arm=${t##*:}
    local out="$W/devid-agent-$arch$arm"
    GOOS=linux GOARCH=$arch GOARM=$arm CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out" ./agent/cmd/devid-agent
    local n; n=$(stat -c %s "$out")
    local goal="-"; [ "$arch" = arm64 ] && goal="≤ 7 MB"
    printf '| linux/%s%s | %d | %s | %s |\n' "$arch" "${arm:+v$arm}" "$n" "$(awk -v n="$n" 'BEGIN{printf "%.2f", n/1e6}')" "$goal"
    [ "$arch" = arm64 ] && figure binary_arm64_bytes "$n"
    # The baseline: the least Go device client on the same stack.
    local floor="$W/mqttfloor-$arch$arm"
    GOOS=linux GOARCH=$arch GOARM=$arm CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$floor" ./scripts/bench.d/mqttfloor
    local fn; fn=$(stat -c %s "$floor")
    printf '| linux/%s%s, baseline: paho + crypto/tls client (scripts/bench.d/mqttfloor) | %d | %s | - |\n' "$arch" "${arm:+v$arm}" "$fn" "$(awk -v n="$fn" 'BEGIN{printf "%.2f", n/1e6}')"
    [ "$arch" = arm64 ] && figure binary_floor_arm64_bytes "$fn"
  done
  echo
}

# floor_rss prints the VmRSS of the baseline client (scripts/bench.d/mqttfloor)
# connected to the simulated hub as the bench board and idle for 5 s (the
# agent must not be running: the hub keeps one connection per device).
floor_rss() {
  # sizes built it for this machine's architecture already.
  local floor; floor="$W/mqttfloor-$(go env GOARCH)"
  [ -x "$floor" ] || CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$floor" ./scripts/bench.d/mqttfloor
  "$floor" -addr "$HUB_ADDR" -hub "$HUB_HOST" -device bench-board -ca "$SERVER_CA" \
    -cert "$W/state/device-chain.pem" -key "$W/state/device.key" >"$W/floor.out" 2>"$W/floor.log" &
  local pid=$!
  if wait_for "baseline client connected" 30 grep -q connected "$W/floor.out"; then
    sleep 5
    rss_kib "$pid"
  fi
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
}

# start_agent: runs the agent, sets AGENT_PID, returns when connected,
# and sets BOOT_MS to the time from exec to the "connected" log line.
start_agent() {
  : >"$W/agent.log"
  local t0; t0=$(date +%s%N)
  "$AGENT" run --config "$W/config.toml" 2>"$W/agent.log" &
  AGENT_PID=$!
  wait_for "agent connected" 60 grep -q 'state=connected' "$W/agent.log"
  BOOT_MS=$((($(date +%s%N) - t0) / 1000000))
}

stop_agent() {
  kill "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
}

# cpu_ms: user + system CPU time of a process so far, in milliseconds.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$1/stat"; }

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/{print $2}' "/proc/$1/status"; }

runtime_figures() {
  log "first boot (DPS registration), then idle RSS"
  start_agent
  local first_ms=$BOOT_MS
  sleep 5 # let it settle: idle is what is measured
  local idle; idle=$(rss_kib "$AGENT_PID")
  local anon; anon=$(awk '/^Anonymous:/{print $2}' "/proc/$AGENT_PID/smaps_rollup" 2>/dev/null || echo 0)
  log "idle CPU over ${IDLE_S}s"
  local c0; c0=$(cpu_ms "$AGENT_PID")
  sleep "$IDLE_S"
  local idle_cpu=$(($(cpu_ms "$AGENT_PID") - c0))

  log "telemetry load: $LOAD_N messages through the local API"
  local req="$W/load.jsonl"
  for ((i = 0; i < LOAD_N; i++)); do
    printf '{"op":"send","body":{"i":%d,"temperature":21.5,"pad":"0123456789abcdef0123456789abcdef"},"properties":{"bench":"1"}}\n' "$i"
  done >"$req"
  CURSOR=0 DELIVERED=0
  poll_telemetry
  DELIVERED=0
  local t0; t0=$(date +%s%N)
  local lc0; lc0=$(cpu_ms "$AGENT_PID")
  socat -t 30 - UNIX-CONNECT:"$W/api.sock" <"$req" >"$W/load.replies"
  local t_enq=$((($(date +%s%N) - t0) / 1000000))
  local ok; ok=$(grep -c '"ok":true' "$W/load.replies" || true)
  local peak_load=0 n=0
  for ((s = 0; s < 600; s++)); do
    local r; r=$(rss_kib "$AGENT_PID"); [ "$r" -gt "$peak_load" ] && peak_load=$r
    poll_telemetry
    n=$DELIVERED
    [ "$n" -ge "$LOAD_N" ] && break
    sleep 0.1
  done
  local t_all=$((($(date +%s%N) - t0) / 1000000))
  local load_cpu=$(($(cpu_ms "$AGENT_PID") - lc0))
  local hwm; hwm=$(hwm_kib "$AGENT_PID")
  stop_agent

  log "cold start: binary evicted from the page cache, as after a reboot"
  dd if="$AGENT" iflag=nocache count=0 status=none 2>/dev/null || true
  start_agent
  sleep 5
  local cold; cold=$(rss_kib "$AGENT_PID")
  local cold_anon; cold_anon=$(awk '/^Anonymous:/{print $2}' "/proc/$AGENT_PID/smaps_rollup" 2>/dev/null || echo 0)
  stop_agent

  log "baseline client: idle RSS"
  local floor; floor=$(floor_rss)

  log "boots with a cached assignment"
  local boots=()
  for ((b = 0; b < BOOTS; b++)); do
    start_agent
    boots+=("$BOOT_MS")
    stop_agent
  done
  local sorted; sorted=$(printf '%s\n' "${boots[@]}" | sort -n | tr '\n' ' ')
  local median; median=$(printf '%s\n' "${boots[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')

  figure rss_idle_amd64_kib "$idle"
  [ -n "$floor" ] && figure rss_floor_amd64_kib "$floor"
  echo "### Memory (static linux/$(go env GOARCH) build, loopback simulator)"
  echo
  echo "| figure | value | goal |"
  echo "|---|---|---|"
  printf '| RSS connected, idle (VmRSS after 5 s) | %.1f MiB | ≤ 8 MiB |\n' "$(awk -v k="$idle" 'BEGIN{print k/1024}')"
  printf '| of which anonymous (heap, stacks) / file-backed (binary text) | %.1f / %.1f MiB | |\n' "$(awk -v k="$anon" 'BEGIN{print k/1024}')" "$(awk -v k="$idle" -v a="$anon" 'BEGIN{print (k-a)/1024}')"
  printf '| baseline: paho + crypto/tls client, connected, idle (VmRSS after 5 s) | %s MiB | |\n' "$(awk -v k="$floor" 'BEGIN{if (k>0) printf "%.1f", k/1024; else printf "not measured"}')"
  printf '| RSS connected, idle, cold start (binary not in page cache) | %.1f MiB (%.1f anonymous) | ≤ 8 MiB |\n' "$(awk -v k="$cold" 'BEGIN{print k/1024}')" "$(awk -v k="$cold_anon" 'BEGIN{print k/1024}')"
  printf '| RSS under load, highest sample (%d messages) | %.1f MiB | |\n' "$LOAD_N" "$(awk -v k="$peak_load" 'BEGIN{print k/1024}')"
  printf '| peak RSS over the run (VmHWM) | %.1f MiB | |\n' "$(awk -v k="$hwm" 'BEGIN{print k/1024}')"
  echo
  echo "### CPU (utime + stime of the agent, /proc/PID/stat)"
  echo
  echo "| figure | value |"
  echo "|---|---|"
  printf '| connected, idle, over %d s | %d ms (%.2f %% of one core; resolution %d ms) |\n' "$IDLE_S" "$idle_cpu" "$(awk -v c="$idle_cpu" -v s="$IDLE_S" 'BEGIN{print c/(s*10)}')" "$((1000 / $(getconf CLK_TCK)))"
  printf '| telemetry load, %d messages | %d ms (%.0f µs per message) |\n' "$LOAD_N" "$load_cpu" "$(awk -v c="$load_cpu" -v n="$LOAD_N" 'BEGIN{print (n>0)?c*1000/n:0}')"
  echo
  echo "### Telemetry through the agent (local API -> durable queue -> QoS 1 -> simulated hub)"
  echo
  echo "| figure | value |"
  echo "|---|---|"
  printf '| messages accepted by the local API | %d of %d in %d ms (%.0f msg/s, fsync batch) |\n' "$ok" "$LOAD_N" "$t_enq" "$(awk -v n="$ok" -v ms="$t_enq" 'BEGIN{print (ms>0)?n*1000/ms:0}')"
  printf '| messages recorded by the simulator | %d in %d ms from the first send (%.0f msg/s end to end) |\n' "$n" "$t_all" "$(awk -v n="$n" -v ms="$t_all" 'BEGIN{print (ms>0)?n*1000/ms:0}')"
  echo
  echo "### Boot to connected"
  echo
  echo "| figure | value |"
  echo "|---|---|"
  printf '| first boot (DPS registration + hub) | %d ms |\n' "$first_ms"
  printf '| boot with cached assignment, median of %d | %d ms (all: %s ms) |\n' "$BOOTS" "$median" "$sorted"
  echo
  echo "Process start to the \`state=connected\` log line, exec included; the simulator answers"
  echo "DPS with retry-after 1 s, which dominates the first boot."
  echo
}

log() { printf 'agent bench: %s\n' "$*" >&2; }

cleanup() {
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$W"
}

main "$@"
