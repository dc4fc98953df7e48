package conformance

import (
	"testing"
)

// TestTelemetryDuplicates: the hub records each message's $.mid, and a
// message whose $.mid this device already sent (an at-least-once resend
// after a cut) is recorded with duplicates = how many times it was seen
// before (docs/simulator.md, telemetry).
func TestTelemetryDuplicates(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance mid CA")
	tg.enrollGroup("mid", ca.PEM, nil)
	d := tg.provision(t, ca, "mid-1")
	send := func(c *rawConn, mid, body string) {
		t.Helper()
		id, err := c.publish("devices/"+d.id+"/messages/events/%24.mid="+mid+"&k=v", 1, false, []byte(body))
		if err == nil {
			err = c.expectPuback(id)
		}
		if err != nil {
			t.Fatalf("telemetry %s: %v", mid, err)
		}
	}
	c := tg.hubConnect(t, d)
	send(c, "q-1", "first")
	send(c, "q-2", "second")
	c.close() // the cut: the device cannot know whether q-2 arrived
	c = tg.hubConnect(t, d)
	send(c, "q-2", "second")
	send(c, "q-2", "second")
	send(c, "q-3", "third")
	c.close()

	recs := tg.telemetry(d.name, d.id)
	want := []struct {
		mid  string
		dups float64
	}{{"q-1", 0}, {"q-2", 0}, {"q-2", 1}, {"q-2", 2}, {"q-3", 0}}
	if len(recs) != len(want) {
		t.Fatalf("recorded %d messages, want %d: %v", len(recs), len(want), recs)
	}
	for i, w := range want {
		if jstr(recs[i], "messageId") != w.mid || jget(recs[i], "duplicates") != w.dups {
			t.Errorf("record %d: messageId %q duplicates %v; want %q %v", i, jstr(recs[i], "messageId"), jget(recs[i], "duplicates"), w.mid, w.dups)
		}
	}
}
