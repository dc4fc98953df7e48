package localapi

import (
	"context"
	"testing"
)

// TestMethodReplyOnlyFromCallee: a direct-method call is answered only by
// the connection that received it. Another client that learns (or
// guesses) the call id is refused, and the callee's own answer still
// reaches the cloud.
func TestMethodReplyOnlyFromCallee(t *testing.T) {
	t.Parallel()
	s, _, path := start(t)
	app, intruder := dial(t, path), dial(t, path)
	if r := app.roundTrip(`{"op":"subscribe","methods":["unlock"]}`); r["ok"] != true {
		t.Fatalf("subscribe: %v", r)
	}
	type res struct {
		st int
		p  string
	}
	done := make(chan res, 1)
	go func() {
		st, p, _ := s.Method(context.Background(), "unlock", []byte(`{}`))
		done <- res{st, string(p)}
	}()
	ev := app.read()
	call, _ := ev["call"].(string)
	if ev["event"] != "method" || call == "" {
		t.Fatalf("method event %v", ev)
	}
	if r := intruder.roundTrip(`{"op":"method_response","call":"` + call + `","status":200,"payload":{"spoofed":true}}`); r["ok"] != false || r["error"] == "" {
		t.Fatalf("a reply from another client was accepted: %v", r)
	}
	if r := app.roundTrip(`{"op":"method_response","call":"` + call + `","status":201,"payload":{"real":true}}`); r["ok"] != true {
		t.Fatalf("the callee's own reply was refused: %v", r)
	}
	if r := <-done; r.st != 201 || r.p != `{"real":true}` {
		t.Fatalf("the cloud got %d %s, want the callee's 201 {\"real\":true}", r.st, r.p)
	}
}
