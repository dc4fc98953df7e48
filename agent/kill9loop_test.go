package agent_test

import (
	"fmt"
	"testing"
	"time"
)

// sendWindow is the agent's in-flight window (sendLoop): after a power
// cut at most this many acknowledged messages may be sent again.
const sendWindow = 8

// TestKill9LoopDuplicates power-cuts the agent again and again while it
// drains a burst, and counts the copies the hub received. Every message
// must arrive, and the extra copies per kill must stay within the
// in-flight window: the ack cursor on disk may lag the hub's PUBACKs by
// no more than what is in flight.
func TestKill9LoopDuplicates(t *testing.T) {
	skipShort(t)
	t.Parallel()
	_, b := startConnectedBoard(t, "kill9loop-dev", "")
	const (
		kills = 6
		burst = 60
	)
	for k := 0; k < kills; k++ {
		tag := fmt.Sprintf("loop%d", k)
		b.send(burst, tag)
		// Kill mid-drain or just after: either way the hub has
		// acknowledged much of the burst.
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
	}
	for k := 0; k < kills; k++ {
		b.waitDelivered(fmt.Sprintf("loop%d", k), burst)
	}
	b.waitDrained()
	extra := 0
	for _, n := range b.appTelemetry() {
		extra += n - 1
	}
	t.Logf("%d kills, %d messages, %d extra copies (%.1f per kill; window %d)", kills, kills*burst, extra, float64(extra)/kills, sendWindow)
	if extra > kills*sendWindow {
		t.Fatalf("%d extra copies over %d kills: more than the in-flight window (%d) per kill", extra, kills, sendWindow)
	}
}
