# Shell functions shared by scripts that drive devid-sim and a board
# (scripts/demo.sh, scripts/bench.d/agent.sh). Source it; it runs nothing.

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
