# Shell functions shared by scripts that drive devid-sim and a board
# (scripts/demo.sh, scripts/bench.d/agent.sh, scripts/bench.d/telemetry.sh).
# Source it; it runs nothing.

# json_str JSON KEY prints the string value of "KEY" in one line of JSON.
json_str() { sed -n "s/.*\"$2\":\"\([^\"]*\)\".*/\1/p" <<<"$1"; }

# sim_ready_vars LINE sets SCOPE, DPS_HOST, DPS_ADDR, HUB_HOST, HUB_ADDR
# (the first hub) and SERVER_CA from devid-sim's ready line.
sim_ready_vars() {
  SCOPE="$(json_str "$1" id_scope)"
  DPS_HOST="$(sed -n 's/.*"dps":{"host":"\([^"]*\)","addr":"\([^"]*\)".*/\1/p' <<<"$1")"
  DPS_ADDR="$(sed -n 's/.*"dps":{"host":"\([^"]*\)","addr":"\([^"]*\)".*/\2/p' <<<"$1")"
  HUB_HOST="$(sed -n 's/.*"hubs":\[{"name":"[^"]*","host":"\([^"]*\)","addr":"\([^"]*\)".*/\1/p' <<<"$1")"
  HUB_ADDR="$(sed -n 's/.*"hubs":\[{"name":"[^"]*","host":"\([^"]*\)","addr":"\([^"]*\)".*/\2/p' <<<"$1")"
  SERVER_CA="$(json_str "$1" server_ca)"
}

# sim_config_tables prints the agent config tables that point a board at
# the simulator (set by sim_ready_vars) with its local API at $W/api.sock
# and no periodic health reports. Top-level keys must come before it.
sim_config_tables() {
  cat <<EOT
[dps]
endpoint = "$DPS_HOST:8883"
id_scope = "$SCOPE"
trust_bundle = "$SERVER_CA"
[network.resolve]
"$DPS_HOST" = "$DPS_ADDR"
"$HUB_HOST" = "$HUB_ADDR"
[local_api]
socket = "$W/api.sock"
group = ""
[health]
interval = "0s"
EOT
}

# wait_for WHAT SECONDS CMD...: poll CMD every 0.1 s, at most SECONDS; on
# timeout say so on stderr and return 1.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local i
  for ((i = 0; i < secs * 10; i++)); do
    "$@" 2>/dev/null && return 0
    sleep 0.1
  done
  printf '%s: timed out waiting for %s\n' "${0##*/}" "$what" >&2
  return 1
}

# figure KEY VALUE records one benchmark figure for the goals table that
# scripts/bench.d/zz-goals.sh prints at the end of make bench. Outside
# make bench (BENCH_FIGURES unset) it does nothing.
figure() {
  [ -n "${BENCH_FIGURES:-}" ] || return 0
  printf '%s\t%s\n' "$1" "$2" >>"$BENCH_FIGURES"
}

# bench_board_setup starts devid-sim (state $W/sim), programs board
# "bench-board" through a socat pty pair with devid-jig and writes its
# agent config to $W/config.toml. Needs BIN (devid-sim, devid-jig), AGENT,
# W and the array PIDS (the processes it starts, for the caller to stop).
bench_board_setup() {
  printf '%s: starting devid-sim and programming a board\n' "${0##*/}" >&2
  "$BIN/devid-sim" serve --state "$W/sim" --retry-after 1 --assigning-polls 0 >"$W/sim.ready" 2>"$W/sim.log" &
  PIDS+=($!)
  wait_for "simulator ready line" 30 test -s "$W/sim.ready"
  local r; r="$(head -n1 "$W/sim.ready")"
  sim_ready_vars "$r"
  socat pty,raw,echo=0,link="$W/board-uart" pty,raw,echo=0,link="$W/jig-uart" 2>/dev/null &
  PIDS+=($!)
  wait_for "pty pair" 10 test -e "$W/board-uart" -a -e "$W/jig-uart"
  mkdir -m 0700 "$W/state"
  "$BIN/devid-jig" ca init --dir "$W/ca" >/dev/null 2>&1
  "$BIN/devid-sim" enroll-group bench --ca "$W/ca/root.pem" --state "$W/sim" >/dev/null
  {
    cat <<EOF
state_dir = "$W/state"
log_level = "info"
[key]
backend = "file:$W/state/device.key"
[factory]
root = "$W/ca/root.pem"
EOF
    sim_config_tables
  } >"$W/config.toml"
  "$AGENT" factory --config "$W/config.toml" --port "$W/board-uart" --device-id bench-board 2>"$W/factory.log" &
  local fpid=$!
  "$BIN/devid-jig" program --port "$W/jig-uart" --ca-dir "$W/ca" >/dev/null 2>&1
  kill "$fpid"; wait "$fpid" 2>/dev/null || true
}

# poll_telemetry adds the bench board's records after CURSOR to DELIVERED
# (the control plane returns at most 1000 per call) and moves CURSOR.
# Needs BIN and W, as bench_board_setup.
poll_telemetry() {
  local seqs n
  while :; do
    seqs=$("$BIN/devid-sim" telemetry --state "$W/sim" --device bench-board --after "$CURSOR" 2>/dev/null |
      grep -oE '"seq": ?[0-9]+' | grep -oE '[0-9]+$' || true)
    [ -z "$seqs" ] && return
    n=$(wc -l <<<"$seqs")
    DELIVERED=$((DELIVERED + n))
    CURSOR=$(tail -n1 <<<"$seqs")
    [ "$n" -lt 1000 ] && return
  done
}
