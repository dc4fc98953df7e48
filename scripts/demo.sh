#!/usr/bin/env bash
# make demo: one board's life on the simulator, step by step:
# devid-sim -> virtual board (pty UART, temp state dir) -> factory CA ->
# DPS group enrollment -> factory programming over the UART -> agent
# provisions through DPS, connects to its hub, sends telemetry -> a local
# app sends a message through the local API -> summary from the
# simulator's own records.
#
# Usage: scripts/demo.sh [file|tpm]   (make demo KEY=tpm)
# Needs: make build (binaries in .build/bin), socat; swtpm for KEY=tpm.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

main() {
  cd "$(dirname "$0")/.."
  KEY="${1:-${KEY:-file}}"
  BIN="${BIN:-$PWD/.build/bin}"
  W="$(mktemp -d /tmp/devid-demo.XXXXXX)"
  PIDS=()
  trap cleanup EXIT
  T0=$(date +%s%N)

  for b in devid-sim devid-jig devid-agent; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: run make build"
  done
  command -v socat >/dev/null || die "socat missing: run scripts/deps.sh"

  step "start the simulator (DPS + IoT Hub + CA) on loopback"
  "$BIN/devid-sim" serve --state "$W/sim" --retry-after 1 --assigning-polls 0 >"$W/sim.ready" 2>"$W/sim.log" &
  PIDS+=($!)
  wait_for "simulator ready line" 30 test -s "$W/sim.ready"
  READY="$(head -n1 "$W/sim.ready")"
  sim_ready_vars "$READY"
  info "id scope $SCOPE, DPS $DPS_HOST at $DPS_ADDR, hub $HUB_HOST at $HUB_ADDR"

  step "create a virtual board: a pty pair as its factory UART and an empty state dir"
  socat pty,raw,echo=0,link="$W/board-uart" pty,raw,echo=0,link="$W/jig-uart" 2>"$W/socat.log" &
  PIDS+=($!)
  wait_for "pty pair" 10 test -e "$W/board-uart" -a -e "$W/jig-uart"
  mkdir -m 0700 "$W/state"
  info "board UART $W/board-uart <-> jig UART $W/jig-uart"

  KEYSPEC="file:$W/state/device.key"
  if [ "$KEY" = tpm ]; then
    command -v swtpm >/dev/null || die "swtpm missing: run scripts/deps.sh"
    step "start a software TPM (swtpm) for the board"
    mkdir -p "$W/swtpm"
    swtpm socket --tpm2 --tpmstate dir="$W/swtpm" --server type=unixio,path="$W/swtpm/tpm.sock" \
      --ctrl type=unixio,path="$W/swtpm/tpm.sock.ctrl" --flags not-need-init,startup-clear \
      --pid file="$W/swtpm/swtpm.pid" --log file="$W/swtpm/swtpm.log" --daemon
    wait_for "swtpm socket" 10 test -S "$W/swtpm/tpm.sock"
    KEYSPEC="tpm:unix:$W/swtpm/tpm.sock"
    info "key backend $KEYSPEC"
  elif [ "$KEY" != file ]; then
    die "KEY must be file or tpm, not $KEY"
  fi

  step "factory CA: devid-jig ca init"
  "$BIN/devid-jig" ca init --dir "$W/ca" --name "devid demo line" >"$W/ca.log" 2>&1 || { cat "$W/ca.log"; die "ca init failed"; }
  info "root $W/ca/root.pem"

  step "enroll the factory CA as a DPS enrollment group on the simulator"
  "$BIN/devid-sim" enroll-group demo-line --ca "$W/ca/root.pem" --credential-policy demo-policy --state "$W/sim" >"$W/enroll.log" 2>&1 || { cat "$W/enroll.log"; die "enroll-group failed"; }
  info "enrollment group demo-line"

  write_config
  step "factory: devid-agent factory serves the UART, devid-jig program drives it"
  "$BIN/devid-agent" factory --config "$W/config.toml" --port "$W/board-uart" --device-id demo-board-0001 2>"$W/factory.log" &
  FACTORY_PID=$!
  PIDS+=("$FACTORY_PID")
  "$BIN/devid-jig" program --port "$W/jig-uart" --ca-dir "$W/ca" --json 2> >(sed 's/^/    jig: /') >"$W/jig.json" ||
    { cat "$W/factory.log"; die "programming failed"; }
  kill "$FACTORY_PID" 2>/dev/null; wait "$FACTORY_PID" 2>/dev/null || true
  DEVICE_ID="$(json_str "$(tr -d '\n' <"$W/jig.json")" device_id)"
  info "device $DEVICE_ID programmed; key ${KEYSPEC%%:*}, chain $W/state/device-chain.pem"

  step "the agent boots in the field: DPS registration, hub connection"
  "$BIN/devid-agent" run --config "$W/config.toml" 2>"$W/agent.log" &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  # Show each state transition as it happens.
  (tail --pid="$AGENT_PID" -n +1 -F "$W/agent.log" 2>/dev/null | grep --line-buffered 'msg="state change"' |
    sed -u 's/.*state=\([a-z]*\) from=\([a-z]*\).*/    agent: \2 -> \1/') &
  PIDS+=($!)
  wait_for "agent connected" 60 grep -q 'state=connected' "$W/agent.log" || { cat "$W/agent.log"; die "agent did not connect"; }
  if [ -s "$W/state/operational-chain.pem" ]; then info "operational certificate issued by DPS: $W/state/operational-chain.pem"; fi

  step "a local app sends a message through the local API (socat on $W/api.sock)"
  REPLY="$(printf '%s\n' '{"op":"send","body":{"hello":"from a local app","temperature":21.5},"properties":{"source":"demo-app"}}' |
    socat -t 5 - UNIX-CONNECT:"$W/api.sock")"
  info "reply: $REPLY"

  step "wait for the simulator to record the messages"
  "$BIN/devid-sim" telemetry --state "$W/sim" --device "$DEVICE_ID" --wait 20s --min 2 >"$W/telemetry.json"
  ACKED="$(grep -cE '"seq": ?[0-9]' "$W/telemetry.json" || true)"
  APP="$(grep -cE '"source": ?"demo-app"' "$W/telemetry.json" || true)"
  # status exits 1 when the agent runs but is not connected; the summary
  # shows the state either way.
  STATUS="$("$BIN/devid-agent" status --config "$W/config.toml")" || info "devid-agent status exited $? (0: running and connected)"

  printf '\n== summary ==\n'
  printf '  device ID:              %s\n' "$DEVICE_ID"
  printf '  hub:                    %s\n' "$HUB_HOST"
  printf '  key backend:            %s\n' "${KEYSPEC%%:*}"
  printf '  messages acknowledged:  %s (recorded by the simulator; %s from the local app, the rest agent health)\n' "$ACKED" "$APP"
  printf '  renewal path:           %s\n' "$(status_row 'renewal path')"
  printf '  next renewal:           %s\n' "$(status_row 'next renewal')"
  printf '  elapsed:                %s s\n' "$(elapsed)"
  printf '  work dir:               %s (agent.log, sim.log, config.toml)\n\n' "$W"
  printf '%s\n' "$STATUS" | sed 's/^/  /'
  [ "$APP" -ge 1 ] || die "the local app's message was not recorded"
}

write_config() {
  {
    cat <<EOF
# devid-agent config for the demo board (docs/config.md)
state_dir = "$W/state"
[key]
backend = "$KEYSPEC"
[factory]
port = "$W/board-uart"
root = "$W/ca/root.pem"
EOF
    sim_config_tables
    # No [renewal] path: the default, auto, finds at the first
    # registration that the demo enrollment (--credential-policy) issues
    # certificates, and renews through DPS (docs/rotation.md).
  } >"$W/config.toml"
}

# status_row prints the value of one row of `devid-agent status`.
status_row() { sed -n "s/^$1: *//p" <<<"$STATUS" | head -n1; }


N=0
step() {
  N=$((N + 1))
  printf '[%6ss] %d. %s\n' "$(elapsed)" "$N" "$*"
}
elapsed() {
  local ms=$((($(date +%s%N) - T0) / 1000000))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
info() { printf '    %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

cleanup() {
  local rc=$?
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[$i]}" 2>/dev/null || true
  done
  if [ -f "$W/swtpm/swtpm.pid" ]; then kill "$(cat "$W/swtpm/swtpm.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    printf 'demo failed; logs kept in %s\n' "$W" >&2
  fi
}

main "$@"
