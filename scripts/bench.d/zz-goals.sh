#!/usr/bin/env bash
# The goals table of make bench, printed last: each headline figure from
# this run beside its baseline from the same run and its goal. The figures
# come from the other bench.d scripts (figure, in scripts/lib.sh). A figure
# a script could not measure shows as "not measured"; nothing here fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
F=${BENCH_FIGURES:-.build/bench-figures.tsv}
# get KEY: the median of the values recorded for KEY (a script may record
# one per run), or nothing.
get() { [ -f "$F" ] && awk -F'\t' -v k="$1" '$1==k && $2!=""{print $2}' "$F" | sort -g | awk '{v[NR]=$1} END{if (NR) print v[int((NR+1)/2)]}'; }
# fmt VALUE SCALE DIGITS: VALUE/SCALE with DIGITS decimals, or "not measured".
fmt() { [ -n "$1" ] && awk -v v="$1" -v s="$2" -v d="$3" 'BEGIN{printf "%." d "f", v/s}' || echo "not measured"; }
# met VALUE SCALE OP GOAL: whether VALUE/SCALE meets the goal, or "-" when
# the value is missing.
met() { [ -n "$1" ] && awk -v v="$1" -v s="$2" -v op="$3" -v g="$4" 'BEGIN{v/=s; ok = (op=="<=") ? v<=g : v>=g; print ok ? "yes" : "**no**"}' || echo "-"; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN{if (b>0) printf "%.1f", a/b}'; }

tel=$(get telemetry_agent_sim_msgs) broker=$(get telemetry_agent_broker_msgs) node=$(get telemetry_node_sim_msgs)
cpu=$(get telemetry_agent_cpu_us) nodecpu=$(get telemetry_node_cpu_us)
rss=$(get rss_idle_amd64_kib) rssfloor=$(get rss_floor_amd64_kib) rssboard=$(get rss_idle_arm64_board_kib) rssboardfloor=$(get rss_floor_arm64_board_kib)
bin=$(get binary_arm64_bytes) binfloor=$(get binary_floor_arm64_bytes)
boot=$(get boot_cached_arm64_s) toinit=$(get boot_qemu_to_init_arm64_s)
nodex=$(ratio "$tel" "$node") brokerx=$(ratio "$tel" "$broker")

echo "## Goals"
echo
echo "Each figure from this run, beside its baseline measured in the same run where there is one (\"-\": none yet; docs/benchmarks.md)."
echo
echo "| figure | devid | baseline (same run) | goal | met |"
echo "|---|---|---|---|---|"
echo "| telemetry end to end, agent -> devid-sim, QoS 1, durable queue (msg/s) | $(fmt "$tel" 1 0) | Node SDK $(fmt "$node" 1 0) (devid ${nodex:-?}×); agent -> TLS broker $(fmt "$broker" 1 0) (devid ${brokerx:-?}×) | ≥ 10000 and ≥ 5× Node SDK | $(met "$tel" 1 '>=' 10000) / $(met "${nodex:-}" 1 '>=' 5) |"
echo "| agent CPU per message under that load (µs) | $(fmt "$cpu" 1 1) | Node SDK $(fmt "$nodecpu" 1 1) | ≤ 50 | $(met "$cpu" 1 '<=' 50) |"
echo "| RSS connected, idle, amd64 (MiB) | $(fmt "$rss" 1024 1) | paho + crypto/tls client $(fmt "$rssfloor" 1024 1) | ≤ 8 | $(met "$rss" 1024 '<=' 8) |"
echo "| RSS connected, idle, arm64 QEMU board (MiB) | $(fmt "$rssboard" 1024 1) | paho + crypto/tls client on the same board $(fmt "$rssboardfloor" 1024 1) | ≤ 8 | $(met "$rssboard" 1024 '<=' 8) |"
echo "| stripped static arm64 binary (MB) | $(fmt "$bin" 1000000 2) | paho + crypto/tls client $(fmt "$binfloor" 1000000 2) | ≤ 7 | $(met "$bin" 1000000 '<=' 7) |"
echo "| arm64 QEMU board, boot to connected, cached assignment (s) | $(fmt "$boot" 1 2) | QEMU start to init $(fmt "$toinit" 1 2) | ≤ 3 | $(met "$boot" 1 '<=' 3) |"
echo
