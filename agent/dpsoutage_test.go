package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"devid/agent/config"
	"devid/agent/renewal"
	"devid/enroll/certstore"
	"devid/enroll/rotate"
	"devid/hal/clock/clocktest"
	"devid/simulator/simtest"
)

// hubGate stands between the agent and the simulator's hub. Down, it
// resets every connection at once (a hub behind a load balancer with no
// backend); up, it relays to the hub. DPS stays reachable throughout.
type hubGate struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	isUp   bool
	tries  int
}

func newHubGate(t *testing.T, target string) *hubGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &hubGate{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go g.serve()
	return g
}

func (g *hubGate) addr() string { return g.ln.Addr().String() }

func (g *hubGate) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		g.tries++
		up := g.isUp
		g.mu.Unlock()
		if !up {
			c.Close()
			continue
		}
		go func() {
			defer c.Close()
			hub, err := net.Dial("tcp", g.target)
			if err != nil {
				return
			}
			defer hub.Close()
			go func() { io.Copy(hub, c); hub.Close() }()
			io.Copy(c, hub)
		}()
	}
}

func (g *hubGate) setUp(up bool) {
	g.mu.Lock()
	g.isUp = up
	g.mu.Unlock()
}

// attempts is how many connections reached the gate.
func (g *hubGate) attempts() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.tries
}

// chainSerial is the leaf serial of a chain file ("" while there is none).
func chainSerial(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	certs, err := certstore.ParsePEM(raw)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return certs[0].SerialNumber.Text(16)
}

// dpsBoard is an agent with renewal.path = "dps" running in process
// against the real simulator (DPS certificate issuance, real TLS), its
// hub behind a gate, on a clocktest.Fake that moves only once the timer
// the agent waits on is armed (as in TestHubOutageSimulatedClock).
type dpsBoard struct {
	t       *testing.T
	sim     *simtest.Sim
	a       *Agent
	clock   *clocktest.Fake
	gate    *hubGate
	cfg     *config.Config
	state   string
	id      string
	counter string // the fault whose Applied counts DPS register requests
}

// dpsIdle is how many timers are armed when the agent waits on one:
// the renewal loop always has one too (its next planning, an hour away
// at most), so AdvanceToNext fires the agent's, the earlier one.
const dpsIdle = 2

func startDPSBoard(t *testing.T, id string, hubUp bool) *dpsBoard {
	t.Helper()
	sim := simtest.Start(t)
	b := &dpsBoard{t: t, sim: sim, id: id, state: filepath.Join(t.TempDir(), "state")}
	os.Mkdir(b.state, 0o700)
	ca := simtest.NewDeviceCA(t)
	dev := ca.Issue(t, id)
	os.WriteFile(filepath.Join(b.state, "device.key"), dev.KeyPEM(t), 0o600)
	os.WriteFile(filepath.Join(b.state, "device-chain.pem"), dev.ChainPEM(), 0o600)
	sim.EnrollGroup(t, id+"-grp", ca.Root, simtest.IssueCertificates())
	// A 1 ms delay on every DPS register request: the simulator counts
	// the requests it delayed (Applied).
	b.counter = sim.SetFault(t, simtest.Fault{ID: "count-registers", Scope: "dps", Ops: []string{"register"}, DelayMs: 1})

	hub := sim.Hub("")
	resolve := sim.Resolve()
	b.gate = newHubGate(t, resolve[hub.Host])
	b.gate.setUp(hubUp)
	resolve[hub.Host] = b.gate.addr()

	cfg := config.Default()
	cfg.StateDir = b.state
	cfg.Key.Backend = "file:" + filepath.Join(b.state, "device.key")
	cfg.DPS.Endpoint = sim.Ready.DPS.Host + ":8883"
	cfg.DPS.IDScope = sim.Ready.IDScope
	cfg.DPS.TrustBundle = sim.Ready.ServerCA
	cfg.Network.Resolve = resolve
	cfg.LocalAPI.Socket = ""
	cfg.Health.Interval = 0
	cfg.Hub.ConnectTimeout = config.Duration(5 * time.Second)
	cfg.Renewal.Path = "dps"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	b.cfg = cfg
	b.clock = clocktest.NewFake(time.Now())
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	cloud, err := NewDPSCloud(cfg, b.clock, log, "test")
	if err != nil {
		t.Fatal(err)
	}
	b.a, err = New(Options{Config: cfg, Clock: b.clock, Cloud: cloud, Logger: log,
		Identity: StoreIdentity{KeySpec: cfg.Key.Backend, StateDir: b.state}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return b
}

// registrations is how many register requests DPS got.
func (b *dpsBoard) registrations() int {
	b.t.Helper()
	var fs []simtest.Fault
	b.sim.MustDo("GET", "/sim/faults", nil, &fs)
	for _, f := range fs {
		if f.ID == b.counter {
			return f.Applied
		}
	}
	b.t.Fatalf("fault %s gone: %+v", b.counter, fs)
	return 0
}

// operational is the serial of the installed operational certificate.
func (b *dpsBoard) operational() string {
	return chainSerial(b.t, filepath.Join(b.state, renewal.OperationalChainFile))
}

// step waits until done holds (true) or the agent is idle on a timer
// in a state other than connected (false; the clock is then advanced to
// that timer). It fails if neither comes within a minute of real time.
func (b *dpsBoard) step(what string, done func(Status) bool) bool {
	b.t.Helper()
	var s Status
	fin := false
	ok := clocktest.Poll(60*time.Second, func() bool {
		s = b.a.Status()
		fin = done(s)
		return fin || s.State != "connected" && s.State != "connecting" && b.clock.Pending() == dpsIdle
	})
	if !ok {
		b.t.Fatalf("%s: %+v (%d timers armed, want %d)", what, s, b.clock.Pending(), dpsIdle)
	}
	if !fin {
		b.clock.AdvanceToNext()
	}
	return fin
}

// until steps the agent until done holds.
func (b *dpsBoard) until(what string, done func(Status) bool) {
	b.t.Helper()
	for !b.step(what, done) {
	}
}

// TestDPSIssuanceHubOutageRegistersOnce: with renewal.path =
// "dps", a first boot while the hub is down must register with DPS once,
// keep the certificate DPS issued, and only retry the hub; never register
// (and get a new certificate) again on every backoff cycle. 10 simulated
// minutes of hub outage take about a second; the simulator counts the
// register requests it gets.
func TestDPSIssuanceHubOutageRegistersOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the simulator")
	}
	t.Parallel()
	b := startDPSBoard(t, "dpsoutage-dev", false)
	start := b.clock.Now()
	for b.clock.Now().Sub(start) < 10*time.Minute {
		if b.step("hub down", func(s Status) bool { return s.State == "connected" }) {
			t.Fatalf("connected through a closed gate: %+v", b.a.Status())
		}
	}
	if n := b.registrations(); n != 1 {
		t.Fatalf("%d DPS registrations during a 10-minute hub outage, want 1", n)
	}
	if n := b.gate.attempts(); n < b.cfg.Hub.MaxFailures {
		t.Fatalf("%d hub attempts in 10 simulated minutes; the test needs at least %d", n, b.cfg.Hub.MaxFailures)
	}
	serial := b.operational()
	if serial == "" {
		t.Fatal("no operational certificate kept from the registration")
	}
	if s := b.a.Status(); s.State != "backoff" && s.State != "connecting" || s.Hub == "" {
		t.Fatalf("during the outage: %+v, want retrying the cached hub", s)
	}
	// Status says the kept certificate has not connected yet ...
	if r, _ := b.a.Status().Extra["renewal"].(rotate.Status); !r.Unproven {
		t.Errorf("renewal status during the outage %+v: want unproven", r)
	}

	b.gate.setUp(true)
	b.until("hub back", func(s Status) bool { return s.State == "connected" })
	if n := b.registrations(); n != 1 {
		t.Errorf("%d DPS registrations in all, want 1", n)
	}
	if got := b.operational(); got != serial {
		t.Errorf("connected with operational certificate %s, want %s (the one issued at the registration)", got, serial)
	}
	if r, _ := b.a.Status().Extra["renewal"].(rotate.Status); r.Rotations != 1 || r.Unproven {
		t.Errorf("renewal status %+v: want exactly 1 rotation (the registration's), proven by the connection", r)
	}
}

// TestDPSIssuanceHubRefusalRegistersAgain: the other side of it. A
// hub that refuses the device (here: the device disabled on the hub) is
// a verdict, not an outage: the agent goes back to DPS, each new
// certificate the hub refuses is discarded (the one in the slot stays,
// no rotation is left half-done), and once the hub accepts the device
// again a registration's certificate connects.
func TestDPSIssuanceHubRefusalRegistersAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the simulator")
	}
	t.Parallel()
	b := startDPSBoard(t, "dpsrefusal-dev", true)
	b.until("first connection", func(s Status) bool { return s.State == "connected" })
	first := b.operational()
	if n := b.registrations(); n != 1 || first == "" {
		t.Fatalf("%d registrations, operational certificate %q: want 1 and one", n, first)
	}

	hub := b.sim.Hub("")
	b.sim.MustDo("POST", "/sim/devices/"+hub.Name+"/"+b.id+"/disable", nil, nil)
	// Looked at once the third registration has come back and the agent
	// waits in backoff (status read after the count), so no rotation is
	// under way.
	b.until("re-registrations while the hub refuses", func(Status) bool {
		return b.registrations() >= 3 && b.a.Status().State == "backoff" && b.clock.Pending() == dpsIdle
	})
	if got := b.operational(); got != first {
		t.Errorf("operational certificate %s after refused registrations, want %s kept", got, first)
	}
	ents, _ := os.ReadDir(b.state)
	for _, e := range ents {
		if n := e.Name(); n == rotate.JournalFile || filepath.Ext(n) == rotate.StagedSuffix {
			t.Errorf("a refused registration left %s behind", n)
		}
	}

	b.sim.MustDo("POST", "/sim/devices/"+hub.Name+"/"+b.id+"/enable", nil, nil)
	before := b.registrations()
	b.until("hub accepts again", func(s Status) bool { return s.State == "connected" })
	if got := b.operational(); got == first {
		t.Errorf("connected with the first certificate %s; want the one of the registration after the refusals", got)
	}
	if n := b.registrations(); n > before+1 {
		t.Errorf("%d registrations once the hub accepted the device again, want at most 1", n-before)
	}
}
