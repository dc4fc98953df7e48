package dps

import (
	"context"
	"net/http"
	"testing"
	"time"
)

// TestTelemetryResendKeepsMessageID: the caller's MessageID goes out as
// $.mid, and resending the same message after the connection was cut
// carries the same ID, which the hub records as a duplicate.
func TestTelemetryResendKeepsMessageID(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	res, cred := r.register(t, "dev-mid")
	hc := r.hubConfig(res, cred)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := &Message{Payload: []byte(`{"n":1}`), MessageID: "queue-000042", ContentType: "application/json"}

	h, err := ConnectHub(ctx, hc)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.SendTelemetry(ctx, m); err != nil {
		t.Fatal(err)
	}
	r.sim.MustDo(http.MethodPost, "/sim/disconnect", map[string]string{"id": "dev-mid"}, nil) // the cut
	wait(t, h.Done(), "Done after the cut")

	h2, err := ConnectHub(ctx, hc)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if err := h2.SendTelemetry(ctx, m); err != nil {
		t.Fatal(err)
	}
	recs := r.sim.Telemetry(t, "dev-mid")
	if len(recs) != 2 {
		t.Fatalf("recorded %d messages, want 2: %+v", len(recs), recs)
	}
	for i, rec := range recs {
		if rec.MessageID != "queue-000042" || rec.SystemProperties["messageId"] != "queue-000042" {
			t.Errorf("record %d: messageId %q (system properties %v); want queue-000042", i, rec.MessageID, rec.SystemProperties)
		}
		if rec.Duplicates != i {
			t.Errorf("record %d: duplicates %d, want %d", i, rec.Duplicates, i)
		}
	}
}
