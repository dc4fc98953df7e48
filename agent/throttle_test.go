package agent_test

import (
	"strings"
	"testing"
	"time"

	"devid/simulator/simtest"
)

// TestHubThrottlingDrain (docs/field-problems.md, row 13): the hub throttles telemetry
// (429: it closes the connection, as the real hub does over MQTT) three
// times while a backlog drains. The agent reconnects with backoff, does
// not go back to DPS, and delivers every message.
func TestHubThrottlingDrain(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim := simtest.Start(t)
	b := newBoard(t, sim, "throttle-dev", "")
	b.start()
	b.waitState("connected", 30*time.Second)
	sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: b.deviceID, Ops: []string{"telemetry"}, Status: 429, Count: 3})
	b.send(50, "t")
	b.waitDelivered("t", 50)
	b.waitDrained()
	log := b.stderr.String()
	if n := strings.Count(log, "state=backoff"); n < 1 {
		t.Fatalf("throttling never closed the connection (no backoff)\n%s", log)
	}
	if strings.Contains(log, "state=reprovisioning") {
		t.Fatalf("hub throttling sent the agent back to DPS\n%s", log)
	}
}
