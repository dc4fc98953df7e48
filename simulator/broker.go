package simulator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"devid/simulator/simapi"
)

// tlsConfig builds the server TLS config for one endpoint. Client
// certificates are required but verified by the simulator itself: DPS
// decides per enrollment, and an untrusted device must see DPS's 401, not
// a TLS alert. No acceptable-CA list is sent, so Go clients always send
// their certificate.
func (s *Sim) tlsConfig(maxVer string, requireClientCert bool) *tls.Config {
	c := &tls.Config{
		Certificates: []tls.Certificate{s.PKI.ServerCert},
		MinVersion:   tls.VersionTLS12,
		MaxVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequireAnyClientCert,
	}
	if !requireClientCert {
		c.ClientAuth = tls.VerifyClientCertIfGiven
	}
	if maxVer == "1.3" {
		c.MaxVersion = tls.VersionTLS13
	}
	if s.cfg.Switches.RequireSNI {
		c.GetConfigForClient = func(hi *tls.ClientHelloInfo) (*tls.Config, error) {
			if hi.ServerName == "" {
				return nil, errors.New("client sent no SNI")
			}
			return nil, nil
		}
	}
	return c
}

// listen opens a TCP listener whose connections Close ends; with
// connectDeadline set, each must complete TLS and CONNECT within
// connectTimeout.
func (s *Sim) listen(addr string, connectDeadline bool) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	tl := &trackedListener{Listener: l, open: s.open}
	if connectDeadline {
		tl.deadline = connectTimeout
	}
	s.listeners = append(s.listeners, tl)
	return tl, nil
}

// connectTimeout bounds the TLS handshake and CONNECT of a new MQTT
// connection; mochi replaces the deadline with the keep-alive once the
// CONNECT is read. Without it a connection that never sends CONNECT
// would hold a goroutine (and Close) forever.
const connectTimeout = 30 * time.Second

// openConns is the set of accepted connections not yet closed. Close
// ends them all: mochi's own shutdown waits for every connection it
// accepted, including those still in the TLS handshake or before CONNECT,
// which it cannot close.
type openConns struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func newOpenConns() *openConns { return &openConns{conns: map[net.Conn]struct{}{}} }

// add records c, or closes it when the set was closed already.
func (o *openConns) add(c net.Conn) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		_ = c.Close()
		return false
	}
	o.conns[c] = struct{}{}
	return true
}

func (o *openConns) remove(c net.Conn) {
	o.mu.Lock()
	delete(o.conns, c)
	o.mu.Unlock()
}

// closeAll closes every open connection and every one added later.
func (o *openConns) closeAll() {
	o.mu.Lock()
	o.closed = true
	conns := o.conns
	o.conns = map[net.Conn]struct{}{}
	o.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

// trackedListener records its connections in open and gives each the
// CONNECT deadline (when deadline > 0).
type trackedListener struct {
	net.Listener
	open     *openConns
	deadline time.Duration
}

func (l *trackedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, open: l.open}
		if !l.open.add(c) {
			continue
		}
		if l.deadline > 0 {
			_ = c.SetDeadline(time.Now().Add(l.deadline))
		}
		return tc, nil
	}
}

// trackedConn leaves the open set when it is closed.
type trackedConn struct {
	net.Conn
	open *openConns
}

func (c *trackedConn) Close() error {
	c.open.remove(c.Conn)
	return c.Conn.Close()
}

const (
	roleDPS      = "dps"
	listenerDPS  = "dps"
	hubPrefixLst = "hub:"
)

func (s *Sim) startBroker() error {
	capab := mqtt.NewDefaultServerCapabilities()
	capab.MaximumQos = 2              // so QoS 2 publishes reach the hook and can be refused
	capab.MaximumPacketSize = 1 << 20 // hard cap; service limits are checked in hooks
	// The simulator writes to clients directly (sendTo); mochi's per-client
	// outbound queue is unused, so keep it small: it costs 8 bytes a slot
	// per connection.
	capab.MaximumClientWritesPending = 64
	capab.ReceiveMaximum = 1024
	capab.MaximumInflight = 1024
	capab.Compatibilities.ObscureNotAuthorized = false
	brokerLog := slog.New(&quietHandler{next: s.log.Handler()})
	s.broker = mqtt.New(&mqtt.Options{Capabilities: capab, Logger: brokerLog, InlineClient: false})
	if err := s.broker.AddHook(&hook{s: s}, nil); err != nil {
		return err
	}
	sw := s.cfg.Switches
	addr, wsAddr, err := s.addListeners(listenerDPS, "DPS", s.cfg.DPSAddr, s.cfg.DPSWSAddr, sw.DPSMaxTLS)
	if err != nil {
		return err
	}
	s.ready.DPS = simapi.Endpoint{Host: s.cfg.DPSHost, Addr: addr, WSAddr: wsAddr}
	for _, h := range s.reg.hubs {
		if h.Addr, h.WSAddr, err = s.addListeners(hubPrefixLst+h.Name, "hub "+h.Name, h.Addr, h.WSAddr, sw.HubMaxTLS); err != nil {
			return err
		}
		s.ready.Hubs = append(s.ready.Hubs, simapi.Hub{Name: h.Name, Host: h.Host, Addr: h.Addr, WSAddr: h.WSAddr})
	}
	s.ready.IDScope = s.cfg.IDScope
	return s.broker.Serve()
}

// addListeners opens an MQTT/TLS and an MQTT/WSS listener for one
// endpoint (listener IDs id and id+"-ws") and returns their addresses.
func (s *Sim) addListeners(id, what, addr, wsAddr, maxTLS string) (string, string, error) {
	l, err := s.listen(addr, true)
	if err != nil {
		return "", "", fmt.Errorf("%s listener %s: %w", what, addr, err)
	}
	if err := s.broker.AddListener(listeners.NewNet(id, tls.NewListener(l, s.tlsConfig(maxTLS, true)))); err != nil {
		return "", "", err
	}
	wl, err := s.listen(wsAddr, false) // the WebSocket handler sets the CONNECT deadline after the upgrade
	if err != nil {
		return "", "", fmt.Errorf("%s websocket listener %s: %w", what, wsAddr, err)
	}
	if err := s.broker.AddListener(newWSListener(id+"-ws", wl, s.tlsConfig(maxTLS, true))); err != nil {
		return "", "", err
	}
	return l.Addr().String(), wl.Addr().String(), nil
}

// roleOf maps a listener ID to "dps" or a hub name.
func roleOf(listener string) string {
	listener = strings.TrimSuffix(listener, "-ws")
	if strings.HasPrefix(listener, hubPrefixLst) {
		return strings.TrimPrefix(listener, hubPrefixLst)
	}
	return roleDPS
}

// quietHandler drops mochi's per-disconnect EOF warnings and other
// expected connection-level noise.
type quietHandler struct{ next slog.Handler }

func (q *quietHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && q.next.Enabled(ctx, l)
}

func (q *quietHandler) Handle(ctx context.Context, r slog.Record) error {
	noisy := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			if e, ok := a.Value.Any().(error); ok && (errors.Is(e, io.EOF) || errors.Is(e, net.ErrClosed) || errors.Is(e, io.ErrUnexpectedEOF)) {
				noisy = true
			}
			v := a.Value.String()
			if strings.Contains(v, "EOF") || strings.Contains(v, "use of closed network connection") ||
				strings.Contains(v, "connection reset") || strings.Contains(v, "tls:") || strings.Contains(v, "not authorized") ||
				strings.Contains(v, "i/o timeout") || strings.Contains(v, "broken pipe") || strings.Contains(v, "simulator:") {
				noisy = true
			}
		}
		return true
	})
	// Connection-establishment failures are logged by mochi with an empty
	// message; the simulator logs its own reason for each refusal.
	if noisy || r.Message == "error processing packet" || r.Message == "" {
		return nil
	}
	return q.next.Handle(ctx, r)
}

func (q *quietHandler) WithAttrs(a []slog.Attr) slog.Handler {
	return &quietHandler{q.next.WithAttrs(a)}
}
func (q *quietHandler) WithGroup(n string) slog.Handler { return &quietHandler{q.next.WithGroup(n)} }

// peerState returns the TLS state of a client connection.
func peerState(c net.Conn) (tls.ConnectionState, bool) {
	type stater interface{ ConnectionState() tls.ConnectionState }
	if st, ok := c.(stater); ok {
		return st.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// sendTo delivers one PUBLISH to exactly one client (the services never
// fan out: every device's response topic is private to its connection).
func sendTo(cl *mqtt.Client, topic string, payload []byte, qos byte) (uint16, error) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
		Created:     time.Now().Unix(),
	}
	if qos > 0 {
		// The simulator tracks its own QoS 1 deliveries (PUBACKs are seen
		// in OnPacketRead): mochi's inflight store mixes both directions'
		// packet identifiers, which MQTT keeps independent.
		id, err := cl.NextPacketID()
		if err != nil {
			return 0, err
		}
		pk.PacketID = uint16(id)
	}
	return pk.PacketID, cl.WritePacket(pk)
}

// subscribedQoS returns the granted QoS of filter for cl.
func subscribedQoS(cl *mqtt.Client, filter string) (byte, bool) {
	sub, ok := cl.State.Subscriptions.Get(filter)
	if !ok {
		return 0, false
	}
	q := sub.Qos
	if q > 1 {
		q = 1
	}
	return q, true
}
