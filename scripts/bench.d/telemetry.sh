#!/usr/bin/env bash
# Telemetry throughput side by side for make bench (markdown on stdout,
# progress on stderr). The same N messages of 200 bytes (N =
# TELEMETRY_BENCH_MESSAGES, default 20000), QoS 1, on loopback:
#   a. devid agent: local API -> durable queue -> devid-sim hub, which
#      stores every message durably before its PUBACK;
#   b. the same agent into a plain MQTT broker over TLS
#      (simulator/bench/broker: acknowledges at once, keeps nothing): the
#      agent's own ceiling;
#   c. the official Azure IoT Node SDK (simulator/conformance/node) to the
#      same devid-sim hub as the same device, NODE_WINDOW (default 1000)
#      sendEvent calls at once.
# Agent CPU is utime+stime from /proc/PID/stat over the run. Every wait is
# bounded. Measures only.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../lib.sh"

main() {
  cd "$(dirname "$0")/../.."
  BIN="${BIN:-$PWD/.build/bin}"
  W="$(mktemp -d /tmp/devid-bench-tel.XXXXXX)"
  PIDS=()
  AGENT_PID=
  trap cleanup EXIT
  N="${TELEMETRY_BENCH_MESSAGES:-20000}"
  # Each of a, b and c runs REPS times; the goals table takes the median.
  REPS="${TELEMETRY_BENCH_RUNS:-3}"
  NODE_WINDOW="${NODE_WINDOW:-1000}"
  NODE_MODULES="${NODE_MODULES:-$PWD/simulator/conformance/node/node_modules}"

  AGENT="$BIN/devid-agent" # make build's: static and stripped, as shipped
  go build -o "$W/broker" ./simulator/bench/broker
  bench_board_setup
  messages

  log "a: agent -> devid-sim hub"
  start_agent "$W/config.toml"
  local a_ms=() a_cpu=() a_ok=0 r
  for ((r = 0; r < REPS; r++)); do
    agent_run
    a_ms+=("$RUN_MS") a_cpu+=("$RUN_CPU") a_ok=$((a_ok + RUN_OK))
  done
  stop_agent
  CURSOR=0 DELIVERED=0
  poll_telemetry
  local a_rec=$DELIVERED

  log "b: agent -> plain MQTT broker over TLS"
  mkdir "$W/broker.d"
  "$W/broker" -host "$HUB_HOST" -dir "$W/broker.d" -client-ca "$W/ca/root.pem" >"$W/broker.ready" 2>"$W/broker.log" &
  PIDS+=($!)
  wait_for "broker ready line" 30 test -s "$W/broker.ready"
  local bready; bready="$(head -n1 "$W/broker.ready")"
  local baddr; baddr="$(json_str "$bready" addr)"
  cat "$SERVER_CA" "$(json_str "$bready" ca)" >"$W/bundle.pem"
  sed -e "s|^trust_bundle = .*|trust_bundle = \"$W/bundle.pem\"|" \
    -e "s|^\"$HUB_HOST\" = .*|\"$HUB_HOST\" = \"$baddr\"|" "$W/config.toml" >"$W/config-broker.toml"
  start_agent "$W/config-broker.toml"
  local b_ms=() b_cpu=() b_ok=0
  for ((r = 0; r < REPS; r++)); do
    agent_run
    b_ms+=("$RUN_MS") b_cpu+=("$RUN_CPU") b_ok=$((b_ok + RUN_OK))
  done
  stop_agent

  log "c: Azure IoT Node SDK -> devid-sim hub"
  local c_ms=() c_sent=() c_note="" c_cpu=()
  if ! command -v node >/dev/null; then
    c_note="node not installed"
  elif [ ! -d "$NODE_MODULES/azure-iot-device-mqtt" ]; then
    c_note="the SDK is not in $NODE_MODULES (scripts/deps.sh installs it)"
  else
    printf '{"hub":"%s","deviceId":"bench-board","certFile":"%s","keyFile":"%s","bodies":"%s","window":%d}\n' \
      "$HUB_HOST" "$W/state/device-chain.pem" "$W/state/device.key" "$W/bodies.txt" "$NODE_WINDOW" >"$W/node.json"
    local out cc0
    for ((r = 0; r < REPS; r++)); do
      # The SDK's CPU: what the shell's waited-for children used meanwhile
      # (node is the only one), /proc/self/stat cutime + cstime.
      cc0=$(children_cpu_ms)
      if out=$(cd simulator/conformance/node && NODE_PATH="$NODE_MODULES" NODE_EXTRA_CA_CERTS="$SERVER_CA" \
        DEVID_RESOLVE="$HUB_HOST:8883=$HUB_ADDR" timeout 300 node --require ./shim.js bench_send.js "$W/node.json" 2>"$W/node.log"); then
        c_sent+=("$(grep -oE '"sent":[0-9]+' <<<"$out" | grep -oE '[0-9]+$')")
        c_ms+=("$(grep -oE '"ms":[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')")
        c_cpu+=("$(($(children_cpu_ms) - cc0))")
      else
        c_note="failed: $(tail -n1 "$W/node.log")"
        break
      fi
    done
  fi
  DELIVERED=0
  poll_telemetry
  local c_rec=$DELIVERED

  report
}

# messages writes N bodies of exactly 200 bytes (bodies.txt) and the local
# API requests that send them (requests.jsonl).
messages() {
  awk -v n="$N" 'BEGIN {
    for (i = 0; i < n; i++) {
      head = sprintf("{\"i\":%d,\"temperature\":21.5,\"pad\":\"", i)
      pad = 200 - length(head) - 2
      s = head
      for (j = 0; j < pad; j++) s = s "x"
      print s "\"}"
    }
  }' >"$W/bodies.txt"
  sed 's/.*/{"op":"send","body":&}/' "$W/bodies.txt" >"$W/requests.jsonl"
}

start_agent() {
  : >"$W/agent.log"
  "$AGENT" run --config "$1" 2>"$W/agent.log" &
  AGENT_PID=$!
  wait_for "agent connected" 60 grep -q 'state=connected' "$W/agent.log"
}

stop_agent() {
  kill "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
  AGENT_PID=
}

# children_cpu_ms: CPU time of this shell's waited-for children so far, ms.
children_cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($16 + $17) * 1000 / hz)}' /proc/$$/stat; }

# cpu_ms: user + system CPU time of a process so far, in milliseconds.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14 + $15) * 1000 / hz)}' "/proc/$1/stat"; }

# sent: the agent's count of PUBACKed messages (local API status).
sent() {
  echo '{"op":"status"}' | socat -t 5 - UNIX-CONNECT:"$W/api.sock" | grep -oE '"sent":[0-9]+' | grep -oE '[0-9]+$'
}

# agent_run sends the N requests through the local API and waits until the
# agent has N more PUBACKs; sets RUN_MS (first request to the last
# PUBACK, to 10 ms), RUN_CPU (agent CPU ms) and RUN_OK (accepted).
agent_run() {
  local s0; s0=$(sent)
  local c0; c0=$(cpu_ms "$AGENT_PID")
  local t0; t0=$(date +%s%N)
  socat -t 60 - UNIX-CONNECT:"$W/api.sock" <"$W/requests.jsonl" >"$W/replies.jsonl"
  local i s
  for ((i = 0; i < 30000; i++)); do
    s=$(sent)
    [ "$((s - s0))" -ge "$N" ] && break
    sleep 0.01
  done
  RUN_MS=$((($(date +%s%N) - t0) / 1000000))
  RUN_CPU=$(($(cpu_ms "$AGENT_PID") - c0))
  RUN_OK=$(grep -c '"ok":true' "$W/replies.jsonl" || true)
  [ "$((s - s0))" -ge "$N" ] || log "only $((s - s0)) of $N acknowledged"
}

rate() { awk -v n="$1" -v ms="$2" 'BEGIN{printf "%.0f", (ms>0)?n*1000/ms:0}'; }
per_msg() { awk -v c="$1" -v n="$2" 'BEGIN{printf "%.0f", (n>0)?c*1000/n:0}'; }

report() {
  local i ra rb rc
  for ((i = 0; i < ${#a_ms[@]}; i++)); do
    figure telemetry_agent_sim_msgs "$(rate "$N" "${a_ms[$i]}")"
    figure telemetry_agent_cpu_us "$(per_msg "${a_cpu[$i]}" "$N")"
  done
  for ((i = 0; i < ${#b_ms[@]}; i++)); do figure telemetry_agent_broker_msgs "$(rate "$N" "${b_ms[$i]}")"; done
  if [ -z "$c_note" ]; then
    for ((i = 0; i < ${#c_ms[@]}; i++)); do
      figure telemetry_node_sim_msgs "$(rate "${c_sent[$i]}" "${c_ms[$i]}")"
      figure telemetry_node_cpu_us "$(per_msg "${c_cpu[$i]}" "${c_sent[$i]}")"
    done
  fi
  echo "## Telemetry side by side (scripts/bench.d/telemetry.sh)"
  echo
  echo "$N messages of 200 bytes per run, QoS 1, loopback TLS, one device, $REPS runs of each; machine: $(nproc) CPUs, load average at start $LOAD0. The goals table takes the median run."
  echo
  echo "| run | time | msg/s | CPU per message | goal |"
  echo "|---|---|---|---|---|"
  for ((i = 0; i < ${#a_ms[@]}; i++)); do
    printf '| a%d. devid agent: local API -> durable queue -> devid-sim hub | %d ms | %s | %s µs | ≥ 10,000 msg/s, ≤ 50 µs |\n' \
      "$((i + 1))" "${a_ms[$i]}" "$(rate "$N" "${a_ms[$i]}")" "$(per_msg "${a_cpu[$i]}" "$N")"
  done
  for ((i = 0; i < ${#b_ms[@]}; i++)); do
    printf '| b%d. the same agent -> plain MQTT broker over TLS (acks at once, keeps nothing) | %d ms | %s | %s µs | - |\n' \
      "$((i + 1))" "${b_ms[$i]}" "$(rate "$N" "${b_ms[$i]}")" "$(per_msg "${b_cpu[$i]}" "$N")"
  done
  if [ -n "$c_note" ]; then
    printf '| c. Azure IoT Node SDK -> devid-sim hub | did not run: %s | | | - |\n' "$c_note"
  else
    for ((i = 0; i < ${#c_ms[@]}; i++)); do
      printf '| c%d. Azure IoT Node SDK -> devid-sim hub (%d sendEvent at once) | %.0f ms | %s | %s µs (node process) | - |\n' \
        "$((i + 1))" "$NODE_WINDOW" "${c_ms[$i]}" "$(rate "${c_sent[$i]}" "${c_ms[$i]}")" "$(per_msg "${c_cpu[$i]}" "${c_sent[$i]}")"
    done
  fi
  echo
  echo "Accepted by the local API: a $a_ok, b $b_ok of $((REPS * N)) each. Recorded by devid-sim: a $a_rec (a resend counts twice, and the agent's own health report, devid-health: 1, sent on connecting, is one more), c $c_rec."
  echo
  echo "Times run from the first request to the local API (a, b) or the first sendEvent (c)"
  echo "to the last PUBACK; a and b poll the agent's status every 10 ms. CPU: the process's"
  echo "user + system time over the run, resolution $((1000 / $(getconf CLK_TCK))) ms. The ratios (a / c, a / b) are in the Goals table."
  echo
}

log() { printf 'telemetry bench: %s\n' "$*" >&2; }

cleanup() {
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}

LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"
main "$@"
