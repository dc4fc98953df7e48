#!/usr/bin/env bash
# make soak: the field-fault campaign of docs/faults.md in bounded time.
# It runs the fault tests with higher counts than make test does (kill -9
# of the agent in a loop, SIGKILL of the simulator, ENOSPC at every
# write, a bit flip at every offset, clock jumps, a hub outage) and
# writes the figures every test reports on its "soak:" line to
# .build/soak-report.md. It fails when any test fails: a lost
# acknowledged message, or more extra copies per kill than the in-flight
# window, fails its test.
#
#   SOAK_AGENT_KILLS (default 40)  agent kill -9 rounds
#   SOAK_SIM_KILLS   (default 10)  simulator SIGKILL rounds
#   SOAK_TIMEOUT     (default 40m) go test -timeout
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .build
log=.build/soak.log
report=.build/soak-report.md
export DEVID_REQUIRE=all
export DEVID_SOAK_AGENT_KILLS=${SOAK_AGENT_KILLS:-40}
export DEVID_SOAK_SIM_KILLS=${SOAK_SIM_KILLS:-10}
start=$(date +%s)
set +e
go test -count=1 -v -timeout "${SOAK_TIMEOUT:-40m}" \
  -run "${SOAK_RUN:-^(TestKill9LoopDuplicates|TestSimulatorKillLoop|TestLifecycleKill9|TestKill9AtEveryRotationStep|TestKill9Provisioning|TestKill9Connecting|TestKill9Reprovisioning|TestKill9Error|TestHubCrashMidTelemetry|TestHubOutageSimulatedClock|TestDPSIssuanceHub.*|TestENOSPCAtEveryWrite|TestBitFlipAtEveryOffset|TestTornTailIsCut|TestPoisonMessageSetAside|TestReadOnly.*|TestNoQueueDirOnReadOnlyDisk|TestClock.*)\$}" \
  ./agent ./agent/queue >"$log" 2>&1
rc=$?
set -e
{
  echo "# make soak, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo "go test exit status $rc after $(( $(date +%s) - start )) s; full log: $log"
  echo
  sed -n 's/^ *[a-z0-9_]*_test\.go:[0-9]*: soak: /- /p' "$log"
  echo
  echo "Tests run: $(grep -c '^--- PASS' "$log" || true) passed, $(grep -c '^--- FAIL' "$log" || true) failed:"
  echo "$(sed -n 's/^--- PASS: \([^ ]*\).*/\1/p' "$log" | tr '\n' ' ')"
  grep '^--- FAIL' "$log" || true
} >"$report"
cat "$report"
exit $rc
