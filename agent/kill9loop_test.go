package agent_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"devid/simulator/simtest"
)

// sendWindow is the agent's in-flight window (sendLoop): after a power
// cut at most this many acknowledged messages may be sent again.
const sendWindow = 64

// TestKill9LoopDuplicates power-cuts the agent again and again while it
// drains a burst, and counts the copies the hub received. Every message
// must arrive, and the extra copies per kill must stay within the
// in-flight window: the ack cursor on disk may lag the hub's PUBACKs by
// no more than what is in flight.
func TestKill9LoopDuplicates(t *testing.T) {
	skipShort(t)
	t.Parallel()
	sim, b := startConnectedBoard(t, "kill9loop-dev", "")
	// Slowed PUBACKs (the simulator records a message after the delay)
	// keep the drain going long enough for the kill to land in it.
	sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: b.deviceID, Ops: []string{"telemetry"}, DelayMs: 20, Count: 1 << 20})
	// Three windows: the kill lands with a full window in flight.
	const burst = 3 * sendWindow
	kills := soakCount(t, "AGENT_KILLS", 6)
	extraCopies := func() int {
		extra := 0
		for _, n := range b.appTelemetry() {
			extra += n - 1
		}
		return extra
	}
	worst, total := 0, 0
	for k := 0; k < kills; k++ {
		tag := fmt.Sprintf("loop%d", k)
		before := extraCopies()
		b.send(burst, tag)
		// Kill mid-drain: the hub has acknowledged half the burst.
		b.waitFor("half the burst at the hub", 30*time.Second, func() bool {
			got := b.appTelemetry()
			n := 0
			for i := 0; i < burst; i++ {
				if got[fmt.Sprintf("%s/%d", tag, i)] > 0 {
					n++
				}
			}
			return n >= burst/2
		})
		b.kill()
		b.start()
		b.waitState("connected", 30*time.Second)
		b.waitDelivered(tag, burst)
		b.waitDrained()
		extra := extraCopies() - before
		t.Logf("kill %d: %d extra copies", k+1, extra)
		if extra > sendWindow {
			t.Errorf("kill %d: %d extra copies, more than the in-flight window (%d)", k+1, extra, sendWindow)
		}
		worst, total = max(worst, extra), total+extra
	}
	// Every copy of a message carries the ID it was queued with, so the
	// hub marks each resend as a duplicate of the first delivery.
	mids, flagged := map[string]string{}, 0
	for _, m := range b.sim.Telemetry(t, b.deviceID) {
		tag := m.ApplicationProperties["tag"]
		if tag == "" {
			continue
		}
		var body struct{ I int }
		json.Unmarshal([]byte(m.Body), &body)
		key := fmt.Sprintf("%s/%d", tag, body.I)
		if m.MessageID == "" {
			t.Fatalf("%s reached the hub without a $.mid", key)
		}
		if first, seen := mids[key]; seen && first != m.MessageID {
			t.Errorf("%s was resent with $.mid %s, first sent with %s", key, m.MessageID, first)
		}
		if _, seen := mids[key]; !seen {
			mids[key] = m.MessageID
		}
		if m.Duplicates > 0 {
			flagged++
		}
	}
	if flagged != total {
		t.Errorf("the hub flagged %d duplicates by $.mid, the test counted %d extra copies", flagged, total)
	}
	soakReport(t, "%d agent kills, %d messages, 0 lost, %d extra copies (%.1f per kill, worst %d; window %d)", kills, kills*burst, total, float64(total)/float64(kills), worst, sendWindow)
}
