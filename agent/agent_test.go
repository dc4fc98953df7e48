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
	"time"

	"devid/agent/config"
	"devid/agent/statedir"
)

var errAuth = errors.New("connack 5: not authorized")
var errDisabled = errors.New("registration disabled")
var errNet = errors.New("connection refused")
var errClock = errors.New("tls: server certificate not yet valid")

type fakeCloud struct {
	mu          sync.Mutex
	registers   int
	connects    int
	registerErr error
	connectErr  error
	failNext    error // fails the next connect only
	failSends   int   // fails this many sends, the connection staying up
	conns       []*fakeConn
	sent        []Message
}

func (f *fakeCloud) Register(ctx context.Context, id *Identity) (*statedir.Assignment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registers++
	if f.registerErr != nil {
		return nil, f.registerErr
	}
	return &statedir.Assignment{Hub: "hub-1.azure-devices.net", DeviceID: id.DeviceID, RegistrationID: id.DeviceID}, nil
}

func (f *fakeCloud) Connect(ctx context.Context, id *Identity, a *statedir.Assignment, h Handlers) (HubConn, error) {
	f.mu.Lock()
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

type staticIdentity struct{ id *Identity }

func (s staticIdentity) Load() (*Identity, error) {
	if s.id == nil {
		return nil, ErrNoIdentity
	}
	return s.id, nil
}

func testIdentity(t *testing.T, notBefore time.Time) *Identity {
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
	return &Identity{DeviceID: "dev-1", Key: key, Backend: "file", Chain: []*x509.Certificate{cert}, Fingerprint: "fp"}
}

type harness struct {
	button  chan struct{}
	onState func(Status)
	// clockSynced is Options.ClockSynced (nil: not asked).
	clockSynced func() bool
	t           *testing.T
	a           *Agent
	cloud       *fakeCloud
	clock       *FakeClock
	cfg         *config.Config
	stop        func()
}

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func newHarness(t *testing.T, stateDir string, mutate func(*config.Config)) *harness {
	t.Helper()
	cfg := config.Default()
	cfg.StateDir = stateDir
	cfg.DPS.IDScope = "0ne0000SIM1"
	cfg.LocalAPI.Socket = ""
	cfg.Health.Interval = 0
	cfg.Queue.Fsync = "always"
	cfg.Debug.AllowClockOverride = true
	if mutate != nil {
		mutate(cfg)
	}
	h := &harness{t: t, cloud: &fakeCloud{}, clock: NewFakeClock(t0), cfg: cfg}
	return h
}

func (h *harness) start(id *Identity) {
	h.t.Helper()
	h.button = make(chan struct{}, 1)
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

// waitState waits (in real time, bounded) for the agent to reach state,
// advancing the fake clock when advance is set so backoff timers fire.
func (h *harness) waitState(want State, advance time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if h.a.Status().State == want.String() {
			return
		}
		if advance > 0 {
			h.clock.Advance(advance)
		}
		time.Sleep(2 * time.Millisecond)
	}
	h.t.Fatalf("state %s not reached; status %+v", want, h.a.Status())
}

func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; status %+v", what, h.a.Status())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestProvisionConnectSend(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state")
	h := newHarness(t, dir, nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
	for i := 0; i < 5; i++ {
		if _, err := h.a.Enqueue(Message{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("5 messages sent", func() bool { _, _, s := h.cloud.get(); return len(s) == 5 })
	h.waitFor("queue drained", func() bool { return h.a.QueueStats().Depth == 0 })
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
	h2.start(testIdentity(t, t0.Add(-time.Hour)))
	h2.waitState(Connected, 0)
	if r, c, _ := h.cloud.get(); r != 1 || c != 2 {
		t.Fatalf("registers %d connects %d; want 1 and 2", r, c)
	}
}

func TestHubAuthRefusalReprovisions(t *testing.T) {
	t.Parallel()
	h := newConnectedHarness(t)
	h.breakCloud(func(f *fakeCloud) { f.failNext = errAuth })
	h.waitFor("re-provisioned and connected", func() bool {
		h.clock.Advance(time.Second)
		r, c, _ := h.cloud.get()
		return r == 2 && c >= 3 && h.a.Status().State == "connected"
	})
	if r, _, _ := h.cloud.get(); r != 2 {
		t.Fatalf("registrations %d, want 2 (auth refusal must re-provision)", r)
	}
}

func TestDisabledEnrollmentRevokedSlowRetry(t *testing.T) {
	t.Parallel()
	h := startFaultyHarness(t, func(f *fakeCloud) { f.registerErr = errDisabled })
	h.waitState(Revoked, 0)
	st := h.a.Status()
	if wait := st.NextRetry.Sub(h.clock.Now()); wait < h.cfg.Retry.RevokedMin.D() {
		t.Fatalf("revoked retry in %v; must be at least %v", wait, h.cfg.Retry.RevokedMin)
	}
	// A minute later: no hammering.
	h.clock.Advance(time.Minute)
	if r, _, _ := h.cloud.get(); r != 1 {
		t.Fatalf("%d registrations within a minute of revocation", r)
	}
	// Still disabled on the next slow retry: back to revoked, longer wait.
	h.clock.Advance(h.cfg.Retry.RevokedMin.D() * 2)
	h.waitFor("second registration", func() bool { r, _, _ := h.cloud.get(); return r == 2 })
	h.waitState(Revoked, 0)
	// Re-enabled: the device comes back by itself.
	h.cloud.set(func(f *fakeCloud) { f.registerErr = nil })
	h.waitState(Connected, 10*time.Minute)
}

func TestClockAt1970Waits(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "s")
	h := newHarness(t, dir, nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
	h.stop()
	before, _ := os.ReadDir(dir)

	h2 := newHarness(t, dir, nil)
	h2.cloud = h.cloud
	h2.clock = NewFakeClock(time.Unix(0, 0).UTC())
	h2.start(testIdentity(t, t0.Add(-time.Hour)))
	h2.waitFor("clock wait reported", func() bool {
		s := h2.a.Status()
		return s.State == "enrolled" && s.ClockWait != nil
	})
	// Way past max_wait, still at 1970: no TLS attempted, nothing deleted.
	h2.clock.Advance(h2.cfg.Clock.MaxWait.D() * 3)
	h2.waitFor("clock wait exceeded", func() bool { s := h2.a.Status(); return s.ClockWait != nil && s.ClockWait.Exceeded })
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
	// NTP fixes the clock: the agent connects with its cached assignment.
	h2.clock.Set(t0.Add(time.Hour))
	h2.waitState(Connected, 0)
	if r, _, _ := h.cloud.get(); r != 1 {
		t.Fatalf("re-registered after the clock wait: %d", r)
	}
}

func TestOutageQueuesThenDelivers(t *testing.T) {
	t.Parallel()
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
		h.clock.Advance(time.Second)
		// Let the agent act on the step: back in backoff, next retry armed.
		h.waitFor("backoff re-armed", func() bool {
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
	h.waitState(Connected, time.Second)
	h.waitFor("all delivered", func() bool { _, _, s := h.cloud.get(); return len(s) >= n })
	if r, _, _ := h.cloud.get(); r != 1 {
		t.Fatalf("outage caused %d registrations", r)
	}
}

func TestTenHubFailuresReprovision(t *testing.T) {
	t.Parallel()
	h := newConnectedHarness(t)
	h.breakCloud(func(f *fakeCloud) { f.connectErr = errNet })
	h.waitFor("re-registration after 10 hub failures", func() bool {
		h.clock.Advance(10 * time.Second)
		time.Sleep(time.Millisecond)
		r, _, _ := h.cloud.get()
		return r == 2
	})
	if _, c, _ := h.cloud.get(); c < 10 {
		t.Fatalf("re-provisioned after %d connects", c)
	}
}

// TestNewIDScopeReprovisions: a config naming another DPS instance makes
// the cached assignment unusable (anchors B-11: a new ID scope ignored).
func TestNewIDScopeReprovisions(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "s")
	h := newHarness(t, dir, nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
	h.stop()
	h2 := newHarness(t, dir, func(c *config.Config) { c.DPS.IDScope = "0ne0000OTHER" })
	h2.cloud = h.cloud
	h2.start(testIdentity(t, t0.Add(-time.Hour)))
	h2.waitState(Connected, 0)
	if r, _, _ := h.cloud.get(); r != 2 {
		t.Fatalf("registrations %d, want 2 after the ID scope changed", r)
	}
	as, _ := h2.a.dir.LoadAssignment()
	if as.IDScope != "0ne0000OTHER" {
		t.Fatalf("cached assignment still from the old scope: %+v", as)
	}
}

// TestFactoryButton: the button enters factory mode from connected; with
// no factory port and an identity present the agent goes back to the
// field (cached assignment, no new registration).
func TestFactoryButton(t *testing.T) {
	t.Parallel()
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
	h.waitFor("factory and back", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) > 0 && states[0] == "factory" && states[len(states)-1] == "connected"
	})
	if r, _, _ := h.cloud.get(); r != 1 {
		t.Fatalf("registrations %d", r)
	}
}

// TestRevokedSurvivesReboot: a device rebooting while revoked resumes its
// slow retry instead of asking DPS at every boot.
func TestRevokedSurvivesReboot(t *testing.T) {
	t.Parallel()
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
		h2.clock = NewFakeClock(t0.Add(time.Duration(i+1) * time.Minute))
		h2.start(testIdentity(t, t0.Add(-time.Hour)))
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
	h.waitState(Connected, time.Minute)
}

// TestLastKnownGoodRefreshed: while connected, the clock floor follows
// the clock (hourly), so a later boot with a clock far back waits.
func TestLastKnownGoodRefreshed(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "s")
	h := newHarness(t, dir, nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
	d, _ := statedir.Open(dir)
	h.waitFor("last_known_good a day later", func() bool {
		h.clock.Advance(time.Hour)
		st, err := d.LoadState()
		return err == nil && st.LastKnownGood.After(t0.Add(24*time.Hour))
	})
}
