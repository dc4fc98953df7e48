package dps

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// session is one MQTT connection: one paho client over one connection
// we dialled ourselves (so every dial failure is typed). A new session
// is made for every connection; paho's own reconnect is off because its
// backoff has no jitter and its client may not be reused after
// Disconnect.
type session struct {
	cli  mqtt.Client
	host string

	lostOnce sync.Once
	lost     chan struct{}
	lostErr  error

	// pipe carries SendTelemetryAsync's publishes, started by the first.
	pipeOnce sync.Once
	pipe     *pipe
}

type sessionOptions struct {
	clientID     string
	username     string
	cleanSession bool
	keepAlive    time.Duration
	// onMessage receives every inbound PUBLISH. It runs on its own
	// goroutine (paho OrderMatters=false); paho acknowledges a QoS 1
	// message when it returns.
	onMessage func(topic string, payload []byte)
}

// openSession dials, sends CONNECT and waits for CONNACK, all bounded by
// ctx.
func openSession(ctx context.Context, nw *Network, endpoint string, cred *tls.Certificate, o sessionOptions) (*session, error) {
	host, _, err := nw.splitEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	raw, err := nw.dial(ctx, endpoint, cred)
	if err != nil {
		return nil, err
	}
	s := &session{host: host, lost: make(chan struct{})}
	// paho writes each packet on its own; batchConn gathers the packets
	// written while one TLS write is under way, and reports a failed
	// socket to the session even where paho does not (batchconn.go).
	conn := newBatchConn(raw, func(err error) { s.markLost(classifyConnErr(host, "session", err)) })

	connectTimeout := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d < connectTimeout {
			connectTimeout = max(d, time.Millisecond)
		}
	}
	handed := false
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + net.JoinHostPort(host, "0")). // unused: we hand paho the connection
		SetClientID(o.clientID).
		SetUsername(o.username).
		SetCleanSession(o.cleanSession).
		SetKeepAlive(o.keepAlive).
		SetPingTimeout(30 * time.Second).
		SetProtocolVersion(4). // explicit: no silent fallback to MQTT 3.1 on a refusal
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetConnectTimeout(connectTimeout).
		SetWriteTimeout(writeTimeout).
		SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
			if handed {
				return nil, errors.New("connection already used")
			}
			handed = true
			return conn, nil
		}).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			if o.onMessage != nil {
				o.onMessage(m.Topic(), m.Payload())
			}
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			s.markLost(classifyConnErr(host, "session", err))
		})
	s.cli = mqtt.NewClient(opts)
	tok := s.cli.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		conn.Close()
		<-tok.Done()
		if tok.Error() == nil {
			// CONNACK won the race with ctx: paho now runs its keepalive
			// and comms workers, and only Disconnect stops them.
			s.cli.Disconnect(0)
		}
		return nil, ctxError(ctx, "mqtt connect "+host, 0, nil)
	}
	if err := tok.Error(); err != nil {
		conn.Close()
		rc := tok.(*mqtt.ConnectToken).ReturnCode()
		if rc >= 1 && rc <= 5 {
			return nil, &ConnackError{Host: host, Code: rc}
		}
		if rc != packets.Accepted && rc != packets.ErrNetworkError && rc < 0x80 {
			return nil, &ConnackError{Host: host, Code: rc}
		}
		if ctx.Err() != nil {
			return nil, ctxError(ctx, "mqtt connect "+host, 0, classifyConnErr(host, "connect", err))
		}
		return nil, classifyConnErr(host, "connect", err)
	}
	return s, nil
}

func (s *session) markLost(err error) {
	s.lostOnce.Do(func() {
		s.lostErr = err
		close(s.lost)
	})
}

// wait waits for a paho token, the connection dropping, or ctx.
func (s *session) wait(ctx context.Context, tok mqtt.Token, phase string) error {
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return classifyConnErr(s.host, phase, err)
		}
		return nil
	case <-s.lost:
		return s.lostErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// subscribe subscribes to filters at QoS 1 and checks the SUBACK.
func (s *session) subscribe(ctx context.Context, filters ...string) error {
	m := make(map[string]byte, len(filters))
	for _, f := range filters {
		m[f] = 1
	}
	tok := s.cli.SubscribeMultiple(m, nil)
	if err := s.wait(ctx, tok, "subscribe"); err != nil {
		return err
	}
	for topic, code := range tok.(*mqtt.SubscribeToken).Result() {
		if code == 0x80 {
			return &ProtocolError{What: "SUBACK", Raw: topic, Err: errors.New("subscription refused (0x80)")}
		}
	}
	return nil
}

// publishAsync starts a publish and returns a token that completes with
// its outcome (for QoS 1, when the PUBACK came). paho's Publish can
// block for up to its write timeout when the connection dies under it,
// so it runs on its own goroutine and the caller stays free to watch
// ctx and s.lost; if the connection is lost, the token may never
// complete.
func (s *session) publishAsync(topic string, qos byte, payload []byte) mqtt.Token {
	pt := &pubToken{done: make(chan struct{})}
	go func() {
		// A Publish that starts after the session is gone would sit in
		// paho for up to writeTimeout on a channel nobody reads.
		select {
		case <-s.lost:
			return
		default:
		}
		tok := s.cli.Publish(topic, qos, false, payload)
		select {
		case <-tok.Done():
			pt.err = tok.Error()
			close(pt.done)
		case <-s.lost:
		}
	}()
	return pt
}

// writeTimeout bounds each paho write. A Publish racing a Close can hold
// its goroutine in paho for this long (paho offers no way to cancel it);
// the leak tests allow for it.
const writeTimeout = 30 * time.Second

// pubToken is the mqtt.Token publishAsync returns.
type pubToken struct {
	done chan struct{}
	err  error
}

func (t *pubToken) Wait() bool { <-t.done; return true }
func (t *pubToken) WaitTimeout(d time.Duration) bool {
	select {
	case <-t.done:
		return true
	case <-time.After(d):
		return false
	}
}
func (t *pubToken) Done() <-chan struct{} { return t.done }
func (t *pubToken) Error() error {
	select {
	case <-t.done:
		return t.err
	default:
		return nil
	}
}

var _ mqtt.Token = (*pubToken)(nil)

// close sends DISCONNECT (waiting briefly) and drops the connection.
func (s *session) close() {
	s.markLost(&ClosedError{Host: s.host, Phase: "session", Err: errors.New("closed by client")})
	s.cli.Disconnect(250)
}

// ctxError is the error for an operation stopped by ctx: the caller's
// cancellation as is, a deadline as a TimeoutError keeping the last
// cause.
func ctxError(ctx context.Context, op string, attempts int, last error) error {
	if errors.Is(ctx.Err(), context.Canceled) && context.Cause(ctx) == context.Canceled {
		return ctx.Err()
	}
	return &TimeoutError{Op: op, Attempts: attempts, Last: last, Err: context.DeadlineExceeded}
}
