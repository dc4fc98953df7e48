package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/agent/config"
	"devid/simulator/simtest"
)

// TestHubOutageSimulatedClock runs the real agent code (DPS and hub
// clients, state dir, queue) in-process against the real simulator, on a
// simulated clock: a 10-minute hub outage passes in about a second of
// real time. Messages sent during the outage are queued and all arrive
// afterwards, and the outage does not send the agent back to DPS before
// hub.max_failures.
func TestHubOutageSimulatedClock(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the simulator")
	}
	t.Parallel()
	sim := simtest.Start(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	ca := simtest.NewDeviceCA(t)
	dev := ca.Issue(t, "outage-dev")
	os.WriteFile(filepath.Join(state, "device.key"), dev.KeyPEM(t), 0o600)
	os.WriteFile(filepath.Join(state, "device-chain.pem"), dev.ChainPEM(), 0o600)
	sim.EnrollGroup(t, "outage-grp", ca.Root)

	cfg := config.Default()
	cfg.StateDir = state
	cfg.Key.Backend = "file:" + filepath.Join(state, "device.key")
	cfg.DPS.Endpoint = sim.Ready.DPS.Host + ":8883"
	cfg.DPS.IDScope = sim.Ready.IDScope
	cfg.DPS.TrustBundle = sim.Ready.ServerCA
	cfg.Network.Resolve = sim.Resolve()
	cfg.LocalAPI.Socket = ""
	cfg.Health.Interval = 0
	cfg.Hub.ConnectTimeout = config.Duration(5 * time.Second)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	clock := NewFakeClock(time.Now())
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	cloud, err := NewDPSCloud(cfg, clock, log, "test")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Options{Config: cfg, Clock: clock, Cloud: cloud, Logger: log,
		Identity: StoreIdentity{KeySpec: cfg.Key.Backend, StateDir: state}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// The clock pump: simulated time runs at about 200x, but stands still
	// while a hub connection attempt is on the wire, so the simulation does
	// not depend on how fast this machine is.
	pumpCtx, stopPump := context.WithCancel(ctx)
	defer stopPump()
	go func() {
		for pumpCtx.Err() == nil {
			if a.Status().State != "connecting" {
				clock.Advance(time.Second)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	waitState := func(want string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for a.Status().State != want {
			if time.Now().After(deadline) {
				t.Fatalf("state %q not reached: %+v", want, a.Status())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitState("connected", 30*time.Second)

	sim.Stop()
	waitState("backoff", 30*time.Second)
	start := clock.Now()
	const n = 40
	for i := 0; i < n; i++ {
		if _, err := a.Enqueue(Message{Body: []byte(fmt.Sprintf(`{"i":%d}`, i)), Properties: map[string]string{"outage": "1"}}); err != nil {
			t.Fatal(err)
		}
	}
	// More than hub.max_failures failures, but less than
	// hub.reprovision_after (15m): no DPS round trip.
	for clock.Now().Sub(start) < 10*time.Minute {
		if s := a.Status(); s.State == "reprovisioning" || s.State == "provisioning" {
			t.Fatalf("went back to DPS during a 10-minute hub outage: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := a.Status(); s.HubFailures < cfg.Hub.MaxFailures {
		t.Fatalf("only %d hub failures in 10 simulated minutes; the test needs more than %d", s.HubFailures, cfg.Hub.MaxFailures)
	}
	if d := a.QueueStats().Depth; d != n {
		t.Fatalf("queue depth %d after 10 simulated minutes, want %d", d, n)
	}
	sim.Restart()
	waitState("connected", 60*time.Second)
	got := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		for _, m := range sim.Telemetry(t, "outage-dev") {
			if m.ApplicationProperties["outage"] == "1" {
				got[strings.TrimSpace(m.Body)] = true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(got) != n {
		t.Fatalf("%d of %d queued messages delivered after the outage", len(got), n)
	}
}
