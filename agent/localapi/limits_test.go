package localapi

import (
	"bufio"
	"encoding/json"
	"net"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
)

// TestMaxClients: beyond local_api.max_clients a connection gets a clear
// error and is closed; a freed slot is usable again.
func TestMaxClients(t *testing.T) {
	t.Parallel()
	path := socketPath(t)
	listenServe(t, Options{Path: path, MaxMessage: 1024, MaxClients: 2}, &fakeBackend{})

	a, b := dial(t, path), dial(t, path)
	for _, c := range []*conn{a, b} {
		if r := c.roundTrip(`{"op":"status"}`); r["ok"] != true {
			t.Fatalf("status: %v", r)
		}
	}
	if r := dial(t, path).read(); r["ok"] != false || r["error"] != "too many local clients" {
		t.Fatalf("third client: %v", r)
	}
	a.c.Close()
	// The server frees the slot once the kernel has delivered the close to
	// it over the real socket: a wait on real IO, so clocktest.Poll.
	if !clocktest.Poll(10*time.Second, func() bool { return served(path) }) {
		t.Fatal("the closed client's slot was never freed")
	}
}

// TestReprovisionOp: the local API's reprovision op reaches the agent.
func TestReprovisionOp(t *testing.T) {
	t.Parallel()
	_, be, path := start(t)
	if r := dial(t, path).roundTrip(`{"op":"reprovision"}`); r["ok"] != true {
		t.Fatalf("reprovision: %v", r)
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.reprov != 1 {
		t.Fatalf("reprovision requests %d, want 1", be.reprov)
	}
}

// served says whether a new client gets a status reply (not refused).
func served(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(`{"op":"status"}` + "\n")); err != nil {
		return false // refused and closed before the request went out
	}
	sc := bufio.NewScanner(c)
	if !sc.Scan() {
		return false
	}
	var m map[string]any
	return json.Unmarshal(sc.Bytes(), &m) == nil && m["ok"] == true
}
