package simulator_test

import (
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"devid/simulator"
	"devid/simulator/simtest"
)

// TestTelemetryPubackAfterGroupCommit: the hub answers a telemetry
// PUBACK only once the message is durable, and the messages that arrive
// while one store commit is syncing go into the next commit together.
//
// Every store commit is held in the commit hook (after the data is on
// disk, before any writer is told). The device sends n messages and then
// a twin GET, which needs no store write: the hub reads a connection's
// packets in order, so when the twin answer arrives it has taken in all
// n messages, and a hub that acknowledged before the commit would have
// sent their PUBACKs first.
func TestTelemetryPubackAfterGroupCommit(t *testing.T) {
	t.Parallel()
	var srv *simulator.Sim
	sim := simtest.Start(t, simtest.InProcess(func(args []string, log io.Writer) (simtest.Server, error) {
		s, err := simulator.StartArgs(args, log)
		if err != nil {
			return nil, err
		}
		srv = s
		return s, nil
	}))
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "gc", ca.Root)
	dev := ca.Issue(t, "gc-dev")
	if st := register(t, sim, dev, ""); st.Status != "assigned" {
		t.Fatalf("registration: %+v", st)
	}
	hub := sim.Hub("")
	h, err := dialMQTT(t, hub.Addr, "gc-dev", hubUser(hub, "gc-dev"), sim.TLSConfig(hub.Host, dev.TLSCertificate()), true)
	if err != nil {
		t.Fatal(err)
	}
	h.sub("$iothub/twin/res/#")

	var (
		mu     sync.Mutex
		groups []int
	)
	held := make(chan struct{}, 1)
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the simulator stops
	simulator.OnCommit(srv, func(n int) {
		mu.Lock()
		groups = append(groups, n)
		mu.Unlock()
		select {
		case held <- struct{}{}:
		default:
		}
		<-release
	})

	const n = 50
	toks := make([]paho.Token, n)
	for i := range toks {
		toks[i] = h.c.Publish(fmt.Sprintf("devices/gc-dev/messages/events/%%24.mid=gc-%d", i), 1, false, []byte(`{"i":1}`))
	}
	h.pub("$iothub/twin/GET/?$rid=flush", 0, nil)
	h.next("$iothub/twin/res/200/?$rid=flush")
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("no store commit started for the telemetry")
	}
	for i, tok := range toks {
		select {
		case <-tok.Done():
			t.Fatalf("message %d acknowledged while its commit is not finished (err %v)", i, tok.Error())
		default:
		}
	}
	once.Do(func() { close(release) })
	for i, tok := range toks {
		if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("message %d: no PUBACK after the commit (err %v)", i, tok.Error())
		}
	}
	if got := sim.WaitTelemetry(t, "gc-dev", n, 10*time.Second); len(got) != n {
		t.Fatalf("%d messages recorded, want %d", len(got), n)
	}
	mu.Lock()
	defer mu.Unlock()
	biggest := 0
	for _, g := range groups {
		biggest = max(biggest, g)
	}
	// The first commit holds at least one message; all the others were
	// queued behind it and go into one commit.
	if biggest < n/2 {
		t.Fatalf("commits of %v writes: the %d messages were not committed together", groups, n)
	}
}
