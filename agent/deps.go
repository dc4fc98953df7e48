package agent

import (
	"context"
	"errors"
	"time"

	"devid/agent/statedir"
	"devid/enroll/credential"
)

// ErrNoIdentity means there is no key or no certificate yet.
var ErrNoIdentity = errors.New("no device identity (key and certificate) yet")

// IdentitySource loads the device's factory credential (key and
// certificate chain) from the key backend and certificate store. Load
// returns an error wrapping ErrNoIdentity when there is none. The caller
// closes what it returns.
type IdentitySource interface {
	Load() (*credential.Credential, error)
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

// AsyncSender is an optional HubConn ability: Send without waiting.
// done is called once, never on the caller's goroutine, with what Send
// would return; no PUBACK within timeout while the connection stays up
// is an error. Publishes go out in call order.
type AsyncSender interface {
	SendAsync(m Message, timeout time.Duration, done func(error))
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
	Register(ctx context.Context, id *credential.Credential) (*statedir.Assignment, error)
	// Connect opens a hub connection; it returns after CONNACK.
	Connect(ctx context.Context, id *credential.Credential, a *statedir.Assignment, h Handlers) (HubConn, error)
	// Classify says what an error from Register or Connect means.
	Classify(err error) ErrorClass
}
