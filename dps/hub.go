package dps

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Hub limits and defaults (docs/dps.md).
const (
	DefaultKeepAlive = 240 * time.Second
	// MaxKeepAlive keeps the hub's 1.5× timeout under Azure's load
	// balancer idle limit (1767 s).
	MaxKeepAlive = 1177 * time.Second
	// MaxTelemetrySize is the D2C limit (256 KB), topic included.
	MaxTelemetrySize = 256 * 1024
)

// HubConfig configures a hub connection. Host and DeviceID come from
// the DPS result (Result.AssignedHub, Result.DeviceID).
type HubConfig struct {
	// Host is the assigned hub, "name.azure-devices.net", optionally
	// with ":port" (default 8883, 443 with Network.WebSocket).
	Host     string
	DeviceID string
	// Certificate is the device's key and chain, as in Config.
	Certificate tls.Certificate
	Network     Network
	// APIVersion defaults to 2021-04-12.
	APIVersion string
	// ModelID is an optional Plug and Play model ID (&model-id=).
	ModelID string
	// CleanSession false (the default) keeps the hub session so C2D
	// messages queued while offline are delivered on the next connection.
	CleanSession bool
	// KeepAlive defaults to 240 s and is capped at 1177 s.
	KeepAlive time.Duration
	// ConnectTimeout bounds the connection attempt (dial, TLS, CONNECT,
	// SUBSCRIBE). Default 30 s.
	ConnectTimeout time.Duration
	// RequestTimeout bounds one twin request/response exchange before it
	// is retried. Default 30 s.
	RequestTimeout time.Duration
	// Backoff between twin request retries (429, 5xx, no response).
	// Default base 1 s, max 120 s, full jitter.
	Backoff Backoff

	// OnC2D receives cloud-to-device messages; the message is
	// acknowledged (PUBACK) when OnC2D returns. Without it, no C2D
	// subscription is made and messages stay queued in the hub.
	OnC2D func(*C2DMessage)
	// OnDesired receives desired-property patches, and once connected
	// the full desired document.
	OnDesired func(DesiredUpdate)
	// Methods are direct-method handlers by name; more can be added with
	// HandleMethod.
	Methods map[string]MethodHandler
	// CertificateRenewal enables Hub.RequestCertificate: it subscribes
	// to $iothub/credentials/res/# (the fifth and last subscription) and
	// defaults APIVersion to 2025-08-01-preview, which that preview API
	// requires.
	CertificateRenewal bool

	// Sleep is the time source of the retry waits (nil: real time); it
	// waits d or until ctx is done, returning ctx.Err(). Tests pass
	// virtual time, the agent its clock. A plain function, because dps
	// imports no devid package (the agent's clock is hal/clock).
	Sleep  func(ctx context.Context, d time.Duration) error
	Rand   func() float64
	Logger *slog.Logger
}

// HubStats are counters for status output and benchmarks.
type HubStats struct {
	Sent     int64 // telemetry acknowledged by PUBACK
	C2D      int64
	Methods  int64
	Desired  int64
	InFlight int64 // SendTelemetry calls waiting for their PUBACK
}

// Hub is one connection to an IoT Hub: at-least-once telemetry, C2D,
// twin and direct methods. It does not reconnect: when the connection
// drops, Done closes and Err says why, and the caller decides when to
// connect again (the agent's state machine owns reconnect, backoff,
// re-provisioning and resending, docs/agent.md). Its methods are safe
// for concurrent use.
type Hub struct {
	cfg  HubConfig
	host string // cfg.Host without a port
	log  *slog.Logger
	s    *session // set once, under mu, when ConnectHub has connected

	// ctx ends at Close or when the connection drops; handlers and the
	// twin fetch after connecting run under it.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	methods map[string]MethodHandler
	waiters map[string]chan twinReply
	err     error
	done    chan struct{}
	exited  chan struct{}

	rid            atomic.Uint64
	desiredVersion atomic.Int64
	stats          struct {
		sent, c2d, methods, desired, inflight atomic.Int64
	}
}

func (cfg *HubConfig) defaults() error {
	if cfg.Host == "" || strings.ContainsAny(cfg.Host, "/#+? \t") {
		return &ConfigError{Field: "hub host", Err: fmt.Errorf("%q is not a host name", cfg.Host)}
	}
	if err := checkWireID("device_id", cfg.DeviceID); err != nil {
		return err
	}
	if _, err := checkCertificate(&cfg.Certificate); err != nil {
		return err
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = hubAPIVersion
		if cfg.CertificateRenewal {
			cfg.APIVersion = hubCSRAPIVersion
		}
	}
	sharedDefaults(&cfg.KeepAlive, &cfg.Backoff, 120*time.Second, &cfg.Sleep, &cfg.Rand, &cfg.Logger)
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	return nil
}

// ConnectHub connects to the hub and returns once the device is
// connected and subscribed, or with a typed error: errors.Is(err,
// ErrNotAuthorized) means the hub refused the identity (re-provision).
func ConnectHub(ctx context.Context, cfg HubConfig) (*Hub, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	host := cfg.Host
	if h, _, err := net.SplitHostPort(cfg.Host); err == nil {
		host = h
	}
	h := &Hub{
		cfg:     cfg,
		host:    host,
		log:     cfg.Logger.With("component", "hub", "hub", host, "device_id", cfg.DeviceID),
		methods: map[string]MethodHandler{},
		waiters: map[string]chan twinReply{},
		done:    make(chan struct{}),
		exited:  make(chan struct{}),
	}
	for k, v := range cfg.Methods {
		h.methods[k] = v
	}
	h.desiredVersion.Store(-1)
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.logState("connecting", nil)
	s, err := h.connect(ctx)
	if err != nil {
		h.cancel()
		return nil, err
	}
	h.mu.Lock()
	h.s = s // messages may be dispatched already (see session)
	h.mu.Unlock()
	h.logState("connected", nil)
	go h.afterConnect()
	go h.watch()
	return h, nil
}

// connect makes the session: dial, CONNECT, SUBSCRIBE.
func (h *Hub) connect(ctx context.Context) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.ConnectTimeout)
	defer cancel()
	s, err := openSession(ctx, &h.cfg.Network, h.cfg.Host, &h.cfg.Certificate, sessionOptions{
		clientID:     h.cfg.DeviceID,
		username:     HubUsername(h.host, h.cfg.DeviceID, h.cfg.APIVersion, h.cfg.ModelID),
		cleanSession: h.cfg.CleanSession,
		keepAlive:    h.cfg.KeepAlive,
		onMessage:    h.dispatch,
	})
	if err != nil {
		return nil, err
	}
	filters := []string{twinResSubscribe, methodsSubscribe}
	if h.cfg.OnC2D != nil {
		filters = append(filters, c2dSubscribe(h.cfg.DeviceID))
	}
	if h.cfg.OnDesired != nil {
		filters = append(filters, twinDesiredSubscribe)
	}
	if h.cfg.CertificateRenewal {
		filters = append(filters, credentialsSubscribe)
	}
	if err := s.subscribe(ctx, filters...); err != nil {
		s.close()
		if ctx.Err() != nil {
			return nil, ctxError(ctx, "hub subscribe", 0, err)
		}
		return nil, err
	}
	return s, nil
}

func (h *Hub) logState(state string, err error) {
	h.log.Info("hub state", "state", state, "err", err)
}

// watch stops the client when the connection drops: Done closes with the
// cause, for the caller to reconnect.
func (h *Hub) watch() {
	defer close(h.exited)
	select {
	case <-h.ctx.Done():
		return
	case <-h.s.lost:
	}
	if h.ctx.Err() != nil {
		return
	}
	h.logState("disconnected", h.s.lostErr)
	h.mu.Lock()
	if h.err == nil {
		h.err = h.s.lostErr
	}
	h.mu.Unlock()
	h.logState("closed", h.s.lostErr)
	h.cancel()
	h.closeDone()
}

func (h *Hub) closeDone() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.done:
	default:
		close(h.done)
	}
}

// afterConnect reads the twin so desired changes made while the device
// was offline are not missed (the hub only pushes patches to connected
// devices).
func (h *Hub) afterConnect() {
	if h.cfg.OnDesired == nil {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, h.cfg.RequestTimeout)
	defer cancel()
	tw, err := h.GetTwin(ctx)
	if err != nil {
		h.log.Warn("twin get after connect", "err", err)
		return
	}
	if old := h.desiredVersion.Load(); tw.DesiredVersion != old {
		h.desiredVersion.Store(tw.DesiredVersion)
		h.stats.desired.Add(1)
		h.cfg.OnDesired(DesiredUpdate{Version: tw.DesiredVersion, Patch: tw.Desired, Full: true})
	}
}

// Done is closed when the client stops: Close, or the connection
// dropped. Err says why.
func (h *Hub) Done() <-chan struct{} { return h.done }

// Err is the reason the client stopped, or nil while it runs. A dropped
// connection is usually Retryable; ErrHubClosed follows Close.
func (h *Hub) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// Connected reports whether the connection is up.
func (h *Hub) Connected() bool {
	_, err := h.session()
	return err == nil
}

// Stats returns counters.
func (h *Hub) Stats() HubStats {
	return HubStats{
		Sent: h.stats.sent.Load(), C2D: h.stats.c2d.Load(), Methods: h.stats.methods.Load(),
		Desired: h.stats.desired.Load(), InFlight: h.stats.inflight.Load(),
	}
}

// Close disconnects (sending DISCONNECT). Pending calls return
// ErrHubClosed.
func (h *Hub) Close() error {
	h.mu.Lock()
	running := h.err == nil
	if running {
		h.err = ErrHubClosed
	}
	h.mu.Unlock()
	h.cancel()
	h.s.close()
	<-h.exited
	h.closeDone()
	if running {
		h.logState("closed", ErrHubClosed)
	}
	return nil
}

// errConnecting: a message arrived between SUBACK and ConnectHub's
// return; its answer cannot be sent yet.
var errConnecting = errors.New("dps: hub connection not set up yet")

// session returns the connected session, or why there is none.
func (h *Hub) session() (*session, error) {
	h.mu.Lock()
	s, err := h.s, h.err
	h.mu.Unlock()
	switch {
	case err != nil:
		return nil, err
	case s == nil:
		return nil, errConnecting
	}
	select {
	case <-s.lost:
		return nil, s.lostErr
	default:
		return s, nil
	}
}

func (h *Hub) stopped() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return h.err
	}
	return ErrHubClosed
}

// telemetryTopic is m's publish topic, or the error for a message over
// the hub's size limit.
func (h *Hub) telemetryTopic(m *Message) (string, error) {
	topic := TelemetryTopic(h.cfg.DeviceID, m)
	if n := len(topic) + len(m.Payload); n > MaxTelemetrySize {
		return "", &ConfigError{Field: "telemetry message", Err: fmt.Errorf("%w: %d bytes with topic, limit %d", ErrTooLarge, n, MaxTelemetrySize)}
	}
	return topic, nil
}

// SendTelemetry publishes m at QoS 1 and returns when the hub has
// acknowledged it (PUBACK). If the connection drops first it returns the
// cause and the message may or may not have arrived: the caller sends it
// again on its next connection (at-least-once, as the agent's queue
// does). A ctx that ends first returns ctx.Err(), with the same
// uncertainty. The caller bounds how many calls run at once.
func (h *Hub) SendTelemetry(ctx context.Context, m *Message) error {
	topic, err := h.telemetryTopic(m)
	if err != nil {
		return err
	}
	s, err := h.session()
	if err != nil {
		return err
	}
	h.stats.inflight.Add(1)
	defer h.stats.inflight.Add(-1)
	tok := s.publishAsync(topic, 1, m.Payload)
	select {
	case <-tok.Done():
		if tok.Error() == nil {
			h.stats.sent.Add(1)
			return nil
		}
		// Not connected / connection lost while publishing: report the
		// loss, not paho's wording of it.
		select {
		case <-s.lost:
			return s.lostErr
		case <-ctx.Done():
			return ctx.Err()
		case <-h.done:
			return h.stopped()
		}
	case <-s.lost:
		return s.lostErr
	case <-ctx.Done():
		return ctx.Err()
	case <-h.done:
		return h.stopped()
	}
}
