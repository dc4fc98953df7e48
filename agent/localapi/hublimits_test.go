package localapi

import (
	"fmt"
	"strings"
	"testing"
)

// TestHubLimitsRefusedAtAPI: a message the hub would refuse for good
// (over 256 KB with its properties) or a property bag over the MQTT topic
// limit (which the MQTT library cuts silently) is refused at the API with
// a clear error and never reaches the queue.
func TestHubLimitsRefusedAtAPI(t *testing.T) {
	t.Parallel()
	path := socketPath(t)
	be := &fakeBackend{}
	listenServe(t, Options{Path: path, MaxMessage: 256 * 1024}, be)
	c := dial(t, path)

	props := func(n, size int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"p%03d":%q`, i, strings.Repeat("v", size))
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, req, want string
	}{
		{"body and properties over 256 KB",
			`{"op":"send","body":"` + strings.Repeat("x", 250*1024) + `","properties":{` + props(10, 1000) + `}}`,
			"256 KB"},
		{"property bag over the MQTT topic limit",
			`{"op":"send","body":"x","properties":{` + props(70, 1000) + `}}`,
			"65535"},
	} {
		r := c.roundTrip(tc.req)
		if r["ok"] != false || !strings.Contains(fmt.Sprint(r["error"]), tc.want) {
			t.Errorf("%s: reply %v, want an error naming %q", tc.name, r, tc.want)
		}
	}
	be.mu.Lock()
	n := len(be.msgs)
	be.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d over-limit messages were queued", n)
	}
	// Just under both limits is accepted.
	if r := c.roundTrip(`{"op":"send","body":"` + strings.Repeat("x", 190*1024) + `","properties":{` + props(60, 1000) + `}}`); r["ok"] != true {
		t.Fatalf("a message within the limits was refused: %v", r)
	}
}
