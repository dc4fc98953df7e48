package agent_test

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"devid/simulator/simtest"
)

// soakCount is how many rounds a fault loop runs: def under make test,
// more when scripts/soak.sh (make soak) sets DEVID_SOAK_<NAME>.
func soakCount(t *testing.T, name string, def int) int {
	v := os.Getenv("DEVID_SOAK_" + name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("DEVID_SOAK_%s=%q: want a positive count", name, v)
	}
	return n
}

// soakReport logs one line that scripts/soak.sh collects into the
// campaign report.
func soakReport(t *testing.T, format string, a ...any) {
	t.Logf("soak: %s: %s", t.Name(), fmt.Sprintf(format, a...))
}

// TestSimulatorKillLoop SIGKILLs the simulator again and again while the
// agent drains bursts through slowed PUBACKs: every acknowledged message
// must be recorded after the restart, and every queued one must arrive.
func TestSimulatorKillLoop(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "simkill-dev", "")
	const burst = 30
	kills := soakCount(t, "SIM_KILLS", 2)
	lost := 0
	for k := 0; k < kills; k++ {
		tag := fmt.Sprintf("simkill%d", k)
		sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: b.deviceID, Ops: []string{"telemetry"}, DelayMs: 200, Count: 1 << 20})
		b.send(burst, tag)
		b.waitFor("part of the burst recorded", 30*time.Second, func() bool {
			n := 0
			for i := 0; i < burst; i++ {
				if b.appTelemetry()[fmt.Sprintf("%s/%d", tag, i)] > 0 {
					n++
				}
			}
			return n >= 3
		})
		recorded := b.appTelemetry()
		if err := syscall.Kill(sim.Ready.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		sim.Restart()
		sim.ClearFaults(t)
		// What the hub recorded before the kill survives it.
		after := b.appTelemetry()
		for key := range recorded {
			if after[key] == 0 {
				lost++
				t.Errorf("kill %d: %s was recorded before the kill and is gone after it", k+1, key)
			}
		}
		b.waitState("connected", 60*time.Second)
		b.waitDelivered(tag, burst)
	}
	soakReport(t, "%d simulator kills, %d messages, %d acknowledged messages lost", kills, kills*burst, lost)
}
