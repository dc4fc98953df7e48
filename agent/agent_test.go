package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/enroll/credential"
	"devid/hal/clock/clocktest"
)

// The in-process tests run the agent inside a testing/synctest bubble on
// the bubble's fake time (through clocktest.Wall, which starts at t0 and
// can be stepped like a 1970 boot or NTP). Time moves only when every
// goroutine waits, so "let the agent settle, then read its status" is
// exact and nothing depends on how fast the machine is.

var errAuth = errors.New("connack 5: not authorized")
var errDisabled = errors.New("registration disabled")
var errNet = errors.New("connection refused")
var errClock = errors.New("tls: server certificate not yet valid")
var errTooBig = errors.New("config telemetry message: too large")

type fakeCloud struct {
	// jam is never closed: a runaway agent that calls the cloud more than
	// runaway times blocks on it, so the bubble goes idle and the test
	// fails on its counts instead of spinning until the test timeout.
	jam         chan struct{}
	mu          sync.Mutex
	registers   int
	connects    int
	registerErr error
	connectErr  error
	failNext    error // fails the next connect only
	failSends   int   // fails this many sends, the connection staying up
	conns       []*fakeConn
	sent        []Message

	// refuse, when set, may fail a send (and drop the connection, as the
	// hub does for a message it will not take).
	refuse func(m Message) (err error, drop bool)
}

// runaway is more cloud calls than any test makes on purpose.
const runaway = 1000

// stuck blocks a runaway caller for good (see jam). Called with f.mu held.
func (f *fakeCloud) stuck() {
	if f.registers+f.connects > runaway {
		f.mu.Unlock()
		<-f.jam
	}
}

func (f *fakeCloud) Register(ctx context.Context, id *credential.Credential) (*statedir.Assignment, error) {
	f.mu.Lock()
	f.stuck()
	defer f.mu.Unlock()
	f.registers++
	if f.registerErr != nil {
		return nil, f.registerErr
	}
	return &statedir.Assignment{Hub: "hub-1.azure-devices.net", DeviceID: id.DeviceID(), RegistrationID: id.DeviceID()}, nil
}

func (f *fakeCloud) Connect(ctx context.Context, id *credential.Credential, a *statedir.Assignment, h Handlers) (HubConn, error) {
	f.mu.Lock()
	f.stuck()
	defer f.mu.Unlock()
	f.connects++
	if err := f.failNext; err != nil {
		f.failNext = nil
		return nil, err
	}
	if f.connectErr != nil {
		return nil, f.connectErr
	}
	c := &fakeConn{cloud: f, done: make(chan struct{}), h: h}
	f.conns = append(f.conns, c)
	return c, nil
}

func (f *fakeCloud) Classify(err error) ErrorClass {
	switch {
	case errors.Is(err, errAuth):
		return ClassAuth
	case errors.Is(err, errDisabled):
		return ClassRefused
	case errors.Is(err, errClock):
		return ClassClock
	case errors.Is(err, errTooBig):
		return ClassFatal
	}
	return ClassRetry
}

func (f *fakeCloud) set(fn func(f *fakeCloud)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeCloud) get() (registers, connects int, sent []Message) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.registers, f.connects, append([]Message(nil), f.sent...)
}

// drop kills the live connection, as a hub outage would.
func (f *fakeCloud) drop() {
	f.mu.Lock()
	c := f.conns[len(f.conns)-1]
	f.mu.Unlock()
	c.once.Do(func() { c.err = errNet; close(c.done) })
}

type fakeConn struct {
	cloud *fakeCloud
	h     Handlers
	done  chan struct{}
	once  sync.Once
	err   error
}

func (c *fakeConn) Send(ctx context.Context, m Message) error {
	select {
	case <-c.done:
		return c.err
	default:
	}
	c.cloud.mu.Lock()
	defer c.cloud.mu.Unlock()
	if c.cloud.refuse != nil {
		if err, drop := c.cloud.refuse(m); err != nil {
			if drop {
				c.once.Do(func() { c.err = err; close(c.done) })
			}
			return err
		}
	}
	if c.cloud.failSends > 0 && m.Properties["devid-health"] == "" {
		c.cloud.failSends--
		return errors.New("no PUBACK within the timeout")
	}
	if m.Properties["devid-health"] == "" {
		c.cloud.sent = append(c.cloud.sent, m)
	}
	return nil
}
func (c *fakeConn) Report(ctx context.Context, patch []byte) error { return nil }
func (c *fakeConn) Done() <-chan struct{}                          { return c.done }
func (c *fakeConn) Err() error                                     { return c.err }
func (c *fakeConn) Close()                                         { c.once.Do(func() { c.err = errors.New("closed"); close(c.done) }) }

type staticIdentity struct{ id *credential.Credential }

func (s staticIdentity) Load() (*credential.Credential, error) {
	if s.id == nil {
		return nil, ErrNoIdentity
	}
	return s.id, nil
}

func testIdentity(t *testing.T, notBefore time.Time) *credential.Credential {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "dev-1"},
		NotBefore: notBefore, NotAfter: notBefore.Add(365 * 24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &credential.Credential{Signer: key, Chain: []*x509.Certificate{cert}}
}

type harness struct {
	button  chan struct{}
	onState func(Status)
	// clockSynced is Options.ClockSynced (nil: not asked).
	clockSynced func() bool
	t           *testing.T
	a           *Agent
	cloud       *fakeCloud
	clock       *clocktest.Wall
	cfg         *config.Config
	// id is the identity start was given (a restart reuses it).
	id   *credential.Credential
	stop func()
}

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// newHarness prepares an agent on a fake cloud and a wall clock at t0.
// Call it inside a synctest bubble.
func newHarness(t *testing.T, stateDir string, mutate func(*config.Config)) *harness {
	t.Helper()
	cfg := config.Default()
	cfg.StateDir = stateDir
	cfg.DPS.IDScope = "0ne0000SIM1"
	cfg.LocalAPI.Socket = ""
	cfg.Health.Interval = 0
	cfg.Queue.Fsync = "always"
	cfg.Debug.AllowClockOverride = true
	// Path auto would ask DPS itself, past the fake cloud.
	cfg.Renewal.Path = "none"
	if mutate != nil {
		mutate(cfg)
	}
	h := &harness{t: t, cloud: &fakeCloud{jam: make(chan struct{})}, clock: clocktest.NewWall(t0), cfg: cfg}
	return h
}

func (h *harness) start(id *credential.Credential) {
	h.t.Helper()
	h.button = make(chan struct{}, 1)
	h.id = id
	a, err := New(Options{Config: h.cfg, Clock: h.clock, Cloud: h.cloud, Identity: staticIdentity{id}, Button: h.button, OnState: h.onState, ClockSynced: h.clockSynced,
		Logger: slog.New(slog.NewTextHandler(testWriter{h.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		h.t.Fatal(err)
	}
	h.a = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	h.stop = func() { cancel(); <-done }
	h.t.Cleanup(func() { h.stop() })
}

// newConnectedHarness starts an agent with a valid identity on a fresh
// state dir and waits until it is connected.
func newConnectedHarness(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
	return h
}

// provisionedThenStopped runs an agent on a fresh state dir until it is
// connected, then stops it: the dir holds a cached assignment. The
// harness's cloud counts what the next agent does.
func provisionedThenStopped(t *testing.T) (string, *harness) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "s")
	h := newHarness(t, dir, nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
	h.stop()
	return dir, h
}

// startFaultyHarness starts an agent with a valid identity on a fresh
// state dir against a fake cloud that has fault from the start.
func startFaultyHarness(t *testing.T, fault func(*fakeCloud)) *harness {
	t.Helper()
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
	h.cloud.set(fault)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	return h
}

// breakCloud applies fault to the fake cloud and drops the current
// connection, so the agent meets the fault on its next attempt.
func (h *harness) breakCloud(fault func(*fakeCloud)) {
	h.cloud.set(fault)
	h.cloud.drop()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// await lets the agent run on fake time until cond holds, looking each
// time the agent is idle after a step of limit/1000; it fails once limit
// has passed without cond. With limit 0 no time passes: cond must hold as
// soon as the agent has settled.
func (h *harness) await(what string, limit time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(limit)
	step := max(limit/1000, time.Millisecond)
	synctest.Wait()
	for !cond() {
		if !time.Now().Before(deadline) {
			h.t.Fatalf("%s: not within %v of fake time; status %+v", what, limit, h.a.Status())
		}
		clocktest.Step(step)
	}
}

// waitState is await for the agent's state.
func (h *harness) waitState(want State, limit time.Duration) {
	h.t.Helper()
	h.await("state "+want.String(), limit, func() bool { return h.a.Status().State == want.String() })
}

func TestProvisionConnectSend(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		h := newHarness(t, dir, nil)
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.waitState(Connected, 0)
		if s := h.a.Status(); s.DeviceID != "dev-1" {
			t.Errorf("status device ID %q, want dev-1", s.DeviceID)
		}
		for i := 0; i < 5; i++ {
			if _, err := h.a.Enqueue(Message{Body: []byte(fmt.Sprint(i))}); err != nil {
				t.Fatal(err)
			}
		}
		h.await("5 messages sent", 0, func() bool { _, _, s := h.cloud.get(); return len(s) == 5 })
		h.await("queue drained", 0, func() bool { return h.a.QueueStats().Depth == 0 })
		d, _ := statedir.Open(dir)
		as, err := d.LoadAssignment()
		if err != nil || as.Hub != "hub-1.azure-devices.net" || as.IDScope != "0ne0000SIM1" {
			t.Fatalf("assignment not cached: %+v %v", as, err)
		}
		st, _ := d.LoadState()
		if st.Name != "connected" || st.LastKnownGood.IsZero() {
			t.Fatalf("state record %+v", st)
		}
		// A restart uses the cached assignment: no second registration.
		h.stop()
		h2 := newHarness(t, dir, nil)
		h2.cloud = h.cloud
		h2.start(h.id) // the same device, restarted
		h2.waitState(Connected, 0)
		if r, c, _ := h.cloud.get(); r != 1 || c != 2 {
			t.Fatalf("registers %d connects %d; want 1 and 2", r, c)
		}
	})
}

func TestHubAuthRefusalReprovisions(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newConnectedHarness(t)
		h.breakCloud(func(f *fakeCloud) { f.failNext = errAuth })
		h.await("re-provisioned and connected", time.Minute, func() bool {
			r, c, _ := h.cloud.get()
			return r == 2 && c >= 3 && h.a.Status().State == "connected"
		})
		if r, _, _ := h.cloud.get(); r != 2 {
			t.Fatalf("registrations %d, want 2 (auth refusal must re-provision)", r)
		}
	})
}

func TestDisabledEnrollmentRevokedSlowRetry(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := startFaultyHarness(t, func(f *fakeCloud) { f.registerErr = errDisabled })
		h.waitState(Revoked, 0)
		st := h.a.Status()
		if wait := st.NextRetry.Sub(h.clock.Now()); wait < h.cfg.Retry.RevokedMin.D() {
			t.Fatalf("revoked retry in %v; must be at least %v", wait, h.cfg.Retry.RevokedMin)
		}
		// A minute later: no hammering.
		clocktest.Step(time.Minute)
		if r, _, _ := h.cloud.get(); r != 1 {
			t.Fatalf("%d registrations within a minute of revocation", r)
		}
		// Still disabled on the next slow retry: back to revoked, longer wait.
		clocktest.Step(h.cfg.Retry.RevokedMin.D() * 2)
		h.await("second registration", 0, func() bool { r, _, _ := h.cloud.get(); return r == 2 })
		h.waitState(Revoked, 0)
		// Re-enabled: the device comes back by itself.
		h.cloud.set(func(f *fakeCloud) { f.registerErr = nil })
		h.waitState(Connected, h.cfg.Retry.RevokedMax.D())
	})
}

func TestClockAt1970Waits(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir, h := provisionedThenStopped(t)
		before, _ := os.ReadDir(dir)

		h2 := newHarness(t, dir, nil)
		h2.cloud = h.cloud
		h2.clock = clocktest.NewWall(time.Unix(0, 0).UTC())
		h2.start(h.id) // the same device, restarted
		h2.await("clock wait reported", 0, func() bool {
			s := h2.a.Status()
			return s.State == "enrolled" && s.ClockWait != nil
		})
		// Way past max_wait, still at 1970: no TLS attempted, nothing deleted.
		clocktest.Step(h2.cfg.Clock.MaxWait.D() * 3)
		h2.await("clock wait exceeded", 0, func() bool { s := h2.a.Status(); return s.ClockWait != nil && s.ClockWait.Exceeded })
		if r, c, _ := h.cloud.get(); r != 1 || c != 1 {
			t.Fatalf("cloud contacted with a 1970 clock: registers %d connects %d", r, c)
		}
		after, _ := os.ReadDir(dir)
		names := map[string]bool{}
		for _, e := range after {
			names[e.Name()] = true
		}
		for _, e := range before {
			if !names[e.Name()] {
				t.Errorf("%s deleted during the clock wait", e.Name())
			}
		}
		// NTP steps the clock: the agent notices at its next check (at
		// most 32 s later) and connects with its cached assignment.
		h2.clock.Set(t0.Add(time.Hour))
		h2.waitState(Connected, time.Minute)
		if r, _, _ := h.cloud.get(); r != 1 {
			t.Fatalf("re-registered after the clock wait: %d", r)
		}
	})
}

func TestOutageQueuesThenDelivers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newConnectedHarness(t)
		h.breakCloud(func(f *fakeCloud) { f.connectErr = errNet })
		h.waitState(Backoff, 0)
		const n = 50
		for i := 0; i < n; i++ {
			h.a.Enqueue(Message{Body: []byte(fmt.Sprint(i))})
		}
		// Five simulated minutes of outage.
		end := h.clock.Now().Add(5 * time.Minute)
		for h.clock.Now().Before(end) {
			clocktest.Step(time.Second)
			// The agent has acted on the step: back in backoff, next retry armed.
			h.await("backoff re-armed", 0, func() bool {
				s := h.a.Status()
				return s.State == Backoff.String() && s.NextRetry.After(h.clock.Now())
			})
		}
		if d := h.a.QueueStats().Depth; d != n {
			t.Fatalf("queue depth %d during the outage, want %d", d, n)
		}
		if s := h.a.Status(); s.State == "reprovisioning" || s.HubFailures >= 10 {
			t.Fatalf("a 5-minute outage must not trigger re-provisioning: %+v", s)
		}
		h.cloud.set(func(f *fakeCloud) { f.connectErr = nil })
		h.waitState(Connected, 2*h.cfg.Retry.MaxDelay.D())
		h.await("all delivered", 0, func() bool { _, _, s := h.cloud.get(); return len(s) >= n })
		if r, _, _ := h.cloud.get(); r != 1 {
			t.Fatalf("outage caused %d registrations", r)
		}
	})
}

func TestTenHubFailuresReprovision(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newConnectedHarness(t)
		h.breakCloud(func(f *fakeCloud) { f.connectErr = errNet })
		// hub.max_failures failures, over at least hub.reprovision_after.
		h.await("re-registration after 10 hub failures", time.Hour, func() bool {
			r, _, _ := h.cloud.get()
			return r == 2
		})
		if _, c, _ := h.cloud.get(); c < 10 {
			t.Fatalf("re-provisioned after %d connects", c)
		}
	})
}

// TestNewIDScopeReprovisions: a config naming another DPS instance makes
// the cached assignment unusable (docs/field-problems.md, row 11: a new ID
// scope ignored).
func TestNewIDScopeReprovisions(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir, h := provisionedThenStopped(t)
		h2 := newHarness(t, dir, func(c *config.Config) { c.DPS.IDScope = "0ne0000OTHER" })
		h2.cloud = h.cloud
		h2.start(h.id) // the same device, restarted
		h2.waitState(Connected, 0)
		if r, _, _ := h.cloud.get(); r != 2 {
			t.Fatalf("registrations %d, want 2 after the ID scope changed", r)
		}
		as, _ := h2.a.dir.LoadAssignment()
		if as.IDScope != "0ne0000OTHER" {
			t.Fatalf("cached assignment still from the old scope: %+v", as)
		}
	})
}

// TestFactoryButton: the button enters factory mode from connected; with
// no factory port and an identity present the agent goes back to the
// field (cached assignment, no new registration).
func TestFactoryButton(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
		var states []string
		var mu sync.Mutex
		h.onState = func(s Status) { mu.Lock(); states = append(states, s.State); mu.Unlock() }
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.waitState(Connected, 0)
		mu.Lock()
		states = nil
		mu.Unlock()
		h.button <- struct{}{}
		h.await("factory and back", 0, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(states) > 0 && states[0] == "factory" && states[len(states)-1] == "connected"
		})
		if r, _, _ := h.cloud.get(); r != 1 {
			t.Fatalf("registrations %d", r)
		}
	})
}

// TestRevokedSurvivesReboot: a device rebooting while revoked resumes its
// slow retry instead of asking DPS at every boot.
func TestRevokedSurvivesReboot(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "s")
		h := newHarness(t, dir, nil)
		h.cloud.set(func(f *fakeCloud) { f.registerErr = errDisabled })
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.waitState(Revoked, 0)
		retry := h.a.Status().NextRetry
		for i := 0; i < 3; i++ {
			h.stop()
			h2 := newHarness(t, dir, nil)
			h2.cloud = h.cloud
			h2.clock = clocktest.NewWall(t0.Add(time.Duration(i+1) * time.Minute))
			h2.start(h.id) // the same device, restarted
			h2.waitState(Revoked, 0)
			if got := h2.a.Status().NextRetry; !got.Equal(retry) {
				t.Fatalf("reboot %d: next retry %v, want %v", i, got, retry)
			}
			h = h2
		}
		if r, _, _ := h.cloud.get(); r != 1 {
			t.Fatalf("%d registrations across 3 reboots while revoked, want 1", r)
		}
		h.cloud.set(func(f *fakeCloud) { f.registerErr = nil })
		h.waitState(Connected, h.cfg.Retry.RevokedMax.D())
	})
}

// TestLastKnownGoodRefreshed: while connected, the clock floor follows
// the clock (hourly), so a later boot with a clock far back waits.
func TestLastKnownGoodRefreshed(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "s")
		h := newHarness(t, dir, nil)
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.waitState(Connected, 0)
		d, _ := statedir.Open(dir)
		h.await("last_known_good a day later", 26*time.Hour, func() bool {
			st, err := d.LoadState()
			return err == nil && st.LastKnownGood.After(t0.Add(24*time.Hour))
		})
	})
}
