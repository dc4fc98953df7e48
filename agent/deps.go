package agent

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"sync"
	"time"

	"devid/agent/statedir"
)

// Identity is the device credential: the key (software or TPM) and the
// certificate chain, leaf first.
type Identity struct {
	DeviceID string
	Key      crypto.Signer
	Backend  string
	Chain    []*x509.Certificate
	// Fingerprint is the hex SHA-256 of the leaf, to tie the cached
	// assignment to the certificate that obtained it.
	Fingerprint string
	// Operational, when set, is the credential for the hub (a DPS-issued
	// or renewed operational certificate); the fields above stay the
	// DPS onboarding credential.
	Operational *Identity
}

// Close releases the key handles (a TPM key is loaded into the TPM until
// closed; the TPM holds only a few objects). Nil-safe.
func (id *Identity) Close() {
	if id == nil {
		return
	}
	for _, x := range []*Identity{id, id.Operational} {
		if x == nil {
			continue
		}
		if c, ok := x.Key.(interface{ Close() error }); ok {
			c.Close()
		}
	}
}

// ErrNoIdentity means there is no key or no certificate yet.
var ErrNoIdentity = errors.New("no device identity (key and certificate) yet")

// IdentitySource loads the identity from the key backend and certificate
// store. Load returns an error wrapping ErrNoIdentity when there is none.
type IdentitySource interface {
	Load() (*Identity, error)
}

// Message is one telemetry or C2D message.
type Message struct {
	Body            []byte            `json:"body"`
	ContentType     string            `json:"content_type,omitempty"`
	ContentEncoding string            `json:"content_encoding,omitempty"`
	MessageID       string            `json:"message_id,omitempty"`
	Properties      map[string]string `json:"properties,omitempty"`
}

// Handlers receive what the hub pushes. They may block (the cloud
// adapter calls them on their own goroutines).
type Handlers struct {
	// MethodNames are the direct methods routed to Method; others get 501.
	MethodNames []string
	C2D         func(Message)
	Method      func(name string, payload []byte) (status int, response []byte)
	Desired     func(patch []byte)
}

// HubConn is one live hub connection.
type HubConn interface {
	// Send publishes telemetry at QoS 1 and returns after the PUBACK.
	Send(ctx context.Context, m Message) error
	// Report patches reported properties.
	Report(ctx context.Context, patch []byte) error
	// Done is closed when the connection is lost; Err then says why.
	Done() <-chan struct{}
	Err() error
	// Close disconnects gracefully.
	Close()
}

// MethodAdder is an optional HubConn ability: route one more direct
// method on a live connection (a local app subscribed to it).
type MethodAdder interface {
	AddMethod(name string, fn func(name string, payload []byte) (int, []byte))
}

// ErrorClass is how the agent reacts to a cloud error.
type ErrorClass int

// Error classes.
const (
	// Retry: network, 5xx, throttling: back off and retry the same thing.
	ClassRetry ErrorClass = iota
	// ClassAuth: the hub refused the credential (CONNACK 5 / 401).
	ClassAuth
	// ClassRefused: DPS says the enrollment is disabled or failed.
	ClassRefused
	// ClassClock: TLS failed because of the local clock (server
	// certificate "not yet valid"/"expired" seen through a wrong clock).
	ClassClock
	// ClassFatal: configuration or identity an operator must fix.
	ClassFatal
)

// Cloud is DPS plus IoT Hub, as the agent needs them. The production
// implementation wraps devid/dps; tests may use anything.
type Cloud interface {
	// Register runs one DPS registration (polls included) under ctx.
	Register(ctx context.Context, id *Identity) (*statedir.Assignment, error)
	// Connect opens a hub connection; it returns after CONNACK.
	Connect(ctx context.Context, id *Identity, a *statedir.Assignment, h Handlers) (HubConn, error)
	// Classify says what an error from Register or Connect means.
	Classify(err error) ErrorClass
}

// Clock is the agent's time source. Tests inject a simulated clock.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d; stop cancels it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// SystemClock is the real clock.
type SystemClock struct{}

// Now returns time.Now.
func (SystemClock) Now() time.Time { return time.Now() }

// AfterFunc wraps time.AfterFunc.
func (SystemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// FakeClock is a manually advanced clock for tests and simulations.
// It is safe for concurrent use.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

// NewFakeClock starts a fake clock at t.
func NewFakeClock(t time.Time) *FakeClock { return &FakeClock{now: t} }

// Now returns the fake time.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc schedules f at Now()+d.
func (c *FakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock forward by d and fires every timer due.
func (c *FakeClock) Advance(d time.Duration) {
	c.Set(c.Now().Add(d))
}

// Set moves the clock to t (forwards or backwards) and fires every timer due.
func (c *FakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	var due []*fakeTimer
	keep := c.timers[:0]
	for _, tm := range c.timers {
		switch {
		case tm.stopped:
		case !tm.at.After(t):
			tm.stopped = true
			due = append(due, tm)
		default:
			keep = append(keep, tm)
		}
	}
	c.timers = keep
	c.mu.Unlock()
	for _, tm := range due {
		go tm.f()
	}
}

// Pending reports how many timers are scheduled (for tests that wait
// until the agent has armed its next timer).
func (c *FakeClock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}
