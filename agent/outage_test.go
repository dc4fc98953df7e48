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
	"devid/hal/clock/clocktest"
	"devid/simulator/simtest"
)

// TestHubOutageSimulatedClock runs the real agent code (DPS and hub
// clients, state dir, queue) in-process against the real simulator, on a
// simulated clock: a 10-minute hub outage passes in about a second of
// real time. Messages sent during the outage are queued and all arrive
// afterwards, and the outage does not send the agent back to DPS before
// hub.max_failures.
//
// The simulator is a real process on real sockets, so this test cannot
// run in a synctest bubble. The clock is a clocktest.Fake that the test
// moves only once the timer it expects is armed: the next DPS poll while
// provisioning, the backoff timer (and nothing else) while backing off.
// Only the wait for the agent to get there polls the wall clock.
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
	clock := clocktest.NewFake(time.Now())
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

	// settle waits until the agent is connected, or idle in wait with
	// exactly one timer armed, the one it is waiting for; only then does
	// it advance the clock, to that timer.
	settle := func(what string, wait string) {
		t.Helper()
		ok := clocktest.Poll(60*time.Second, func() bool {
			switch a.Status().State {
			case "connected":
				return true
			case wait:
				if clock.Pending() == 1 {
					clock.AdvanceToNext()
				}
			}
			return false
		})
		if !ok {
			t.Fatalf("%s: not connected: %+v (%d timers armed)", what, a.Status(), clock.Pending())
		}
	}
	// Registration: the DPS status polls wait on the agent's clock.
	settle("first registration", "provisioning")

	sim.Stop()
	if !clocktest.Poll(30*time.Second, func() bool { return a.Status().State == "backoff" }) {
		t.Fatalf("state backoff not reached after the hub went away: %+v", a.Status())
	}
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
		var s Status
		armed := clocktest.Poll(30*time.Second, func() bool {
			s = a.Status()
			return s.State != "backoff" && s.State != "connecting" || s.State == "backoff" && clock.Pending() == 1
		})
		if s.State == "reprovisioning" || s.State == "provisioning" {
			t.Fatalf("went back to DPS during a 10-minute hub outage: %+v", s)
		}
		if !armed || s.State != "backoff" {
			t.Fatalf("backoff timer not armed during the outage: %+v (%d timers armed)", s, clock.Pending())
		}
		clock.AdvanceToNext()
	}
	if s := a.Status(); s.HubFailures < cfg.Hub.MaxFailures {
		t.Fatalf("only %d hub failures in 10 simulated minutes; the test needs more than %d", s.HubFailures, cfg.Hub.MaxFailures)
	}
	if d := a.QueueStats().Depth; d != n {
		t.Fatalf("queue depth %d after 10 simulated minutes, want %d", d, n)
	}
	sim.Restart()
	settle("after the outage", "backoff")
	got := map[string]bool{}
	clocktest.Poll(30*time.Second, func() bool {
		for _, m := range sim.Telemetry(t, "outage-dev") {
			if m.ApplicationProperties["outage"] == "1" {
				got[strings.TrimSpace(m.Body)] = true
			}
		}
		return len(got) >= n
	})
	if len(got) != n {
		t.Fatalf("%d of %d queued messages delivered after the outage", len(got), n)
	}
}
