#!/usr/bin/env bash
# Runs every benchmark and writes .build/bench-report.md.
#   - Go benchmarks in every package (go test -bench), summarised as a table;
#   - every executable scripts/bench.d/*.sh, each printing a markdown section.
# Benchmarks measure; they never fail on a figure.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .build
report=.build/bench-report.md
raw=.build/bench-go.txt
BENCHTIME=${BENCHTIME:-1x}
# Each bench.d script records its headline figures here (figure, in
# scripts/lib.sh); zz-goals.sh prints them against their goals.
export BENCH_FIGURES=$PWD/.build/bench-figures.tsv
: >"$BENCH_FIGURES"

{
  echo "# devid benchmark report"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(go version | cut -d' ' -f3-)"
  echo
} >"$report"

echo "bench: go test -bench (benchtime ${BENCHTIME}; BENCHTIME=… to change)"
go test -run '^$' -bench . -benchmem -benchtime "${BENCHTIME}" -timeout 30m ./... | tee "$raw" || true
{
  echo "## Go benchmarks"
  echo
  echo '```'
  grep -E '^(Benchmark|pkg:|ok|FAIL)' "$raw" || true
  echo '```'
  echo
} >>"$report"

for s in scripts/bench.d/*.sh; do
  [ -x "$s" ] || continue
  echo "bench: $s"
  if ! "$s" >>"$report"; then
    printf '\n_%s failed; see its output above._\n\n' "$s" >>"$report"
  fi
done
echo "bench: report in $report"
