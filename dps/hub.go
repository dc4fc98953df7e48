package dps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strconv"
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
	Host       string
	DeviceID   string
	Credential Credential
	Network    Network
	// APIVersion defaults to 2021-04-12.
	APIVersion string
	// ModelID is an optional Plug and Play model ID (&model-id=).
	ModelID string
	// CleanSession false (the default) keeps the hub session so C2D
	// messages queued while offline are delivered on reconnect.
	CleanSession bool
	// KeepAlive defaults to 240 s and is capped at 1177 s.
	KeepAlive time.Duration
	// MaxInFlight bounds unacknowledged telemetry; SendTelemetry blocks
	// while the window is full. Default 32.
	MaxInFlight int
	// ConnectTimeout bounds one connection attempt (dial, TLS, CONNECT,
	// SUBSCRIBE). Default 30 s.
	ConnectTimeout time.Duration
	// RequestTimeout bounds one twin request/response exchange on a
	// connection before it is retried. Default 30 s.
	RequestTimeout time.Duration

	// DisableReconnect: when the connection drops, Done() closes with
	// the cause instead of reconnecting (the caller runs its own loop).
	DisableReconnect bool
	// Backoff between reconnect attempts. Default base 1 s, max 120 s,
	// full jitter.
	Backoff Backoff
	// AuthRefusalLimit is how many consecutive CONNACK refusals
	// (not authorized) a reconnect loop takes before giving up with
	// Err() matching ErrNotAuthorized. Default 1: the hub no longer
	// knows this identity, so re-provision.
	AuthRefusalLimit int
	// ReprovisionAfter consecutive failed reconnects sets
	// StateEvent.Reprovision (the SDK guidance is 10). The loop keeps
	// trying; the caller decides.
	ReprovisionAfter int

	// OnC2D receives cloud-to-device messages; the message is
	// acknowledged (PUBACK) when OnC2D returns. Without it, no C2D
	// subscription is made and messages stay queued in the hub.
	OnC2D func(*C2DMessage)
	// OnDesired receives desired-property patches, and after every
	// (re)connect the full desired document if its $version changed.
	OnDesired func(DesiredUpdate)
	// Methods are direct-method handlers by name; more can be added with
	// HandleMethod.
	Methods map[string]MethodHandler
	// CertificateRenewal enables Hub.RequestCertificate: it subscribes
	// to $iothub/credentials/res/# (the fifth and last subscription) and
	// defaults APIVersion to 2025-08-01-preview, which that preview API
	// requires.
	CertificateRenewal bool
	// OnState reports connection state changes. It runs on the
	// connection goroutine; do not block in it.
	OnState func(StateEvent)

	// Now and Sleep are the time source of the waits (nil: real time);
	// Sleep waits d or until ctx is done, returning ctx.Err(). Tests pass
	// virtual time, the agent its clock. Plain functions, because dps
	// imports no devid package (the agent's clock is hal/clock).
	Now    func() time.Time
	Sleep  func(ctx context.Context, d time.Duration) error
	Rand   func() float64
	Logger *slog.Logger
}

// ConnState is the hub connection state.
type ConnState int

const (
	StateConnecting ConnState = iota
	StateConnected
	StateDisconnected
	// StateUnauthorized: the hub refused the identity (CONNACK 5). The
	// caller should re-provision through DPS.
	StateUnauthorized
	// StateClosed: the client stopped (Close, a terminal error, or
	// DisableReconnect). Err() says why.
	StateClosed
)

func (s ConnState) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateDisconnected:
		return "disconnected"
	case StateUnauthorized:
		return "unauthorized"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("ConnState(%d)", int(s))
}

// StateEvent is one connection state change.
type StateEvent struct {
	State ConnState
	Err   error
	// Failures is the number of consecutive failed connection attempts.
	Failures int
	// Reprovision is set when the guidance says to go back to DPS: the
	// hub refused the identity, or ReprovisionAfter attempts failed.
	Reprovision bool
}

// DesiredUpdate is a desired-properties patch, or (Full) the whole
// desired document fetched after a reconnect.
type DesiredUpdate struct {
	Version int64
	Patch   json.RawMessage
	Full    bool
}

// MethodRequest is a direct-method invocation.
type MethodRequest struct {
	Name    string
	RID     string
	Payload []byte
}

// MethodHandler answers a direct method with a status (any integer) and
// an optional JSON payload. ctx ends when the hub client closes.
type MethodHandler func(ctx context.Context, req MethodRequest) (status int, payload []byte)

// Twin is a full twin document from GET.
type Twin struct {
	Desired         json.RawMessage `json:"desired"`
	Reported        json.RawMessage `json:"reported"`
	DesiredVersion  int64           `json:"-"`
	ReportedVersion int64           `json:"-"`
}

// HubStats are counters for status output and benchmarks.
type HubStats struct {
	Connects   int64 // successful connections
	Sent       int64 // telemetry acknowledged by PUBACK
	Resent     int64 // telemetry publishes repeated after a connection loss
	C2D        int64
	Methods    int64
	Desired    int64
	InFlight   int64
	AuthRefuse int64
}

// Hub is a connection to an IoT Hub with reconnect, at-least-once
// telemetry, C2D, twin and direct methods. Its methods are safe for
// concurrent use.
type Hub struct {
	cfg  HubConfig
	host string // cfg.Host without a port
	log  *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	window chan struct{}

	mu      sync.Mutex
	cur     *session
	up      chan struct{} // closed while cur != nil
	methods map[string]MethodHandler
	waiters map[string]chan twinReply
	err     error
	done    chan struct{}
	exited  chan struct{}

	rid            atomic.Uint64
	desiredVersion atomic.Int64
	stats          struct {
		connects, sent, resent, c2d, methods, desired, inflight, authRefuse atomic.Int64
	}
}

type twinReply struct {
	resp Response
	body []byte
}

var deviceIDRe = regexp.MustCompile(`^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$`)

func (cfg *HubConfig) defaults() error {
	if cfg.Host == "" || strings.ContainsAny(cfg.Host, "/#+? \t") {
		return &ConfigError{Field: "hub host", Err: fmt.Errorf("%q is not a host name", cfg.Host)}
	}
	if !deviceIDRe.MatchString(cfg.DeviceID) {
		return &ConfigError{Field: "device_id", Err: fmt.Errorf("%q: want 1-128 of A-Z a-z 0-9 - . %% _ * ? ! ( ) , : = @ $ '", cfg.DeviceID)}
	}
	if err := cfg.Credential.validate(); err != nil {
		return err
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = hubAPIVersion
		if cfg.CertificateRenewal {
			cfg.APIVersion = hubCSRAPIVersion
		}
	}
	sharedDefaults(&cfg.KeepAlive, &cfg.Backoff, 120*time.Second, &cfg.Now, &cfg.Sleep, &cfg.Rand, &cfg.Logger)
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 32
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 30 * time.Second
	}
	if cfg.AuthRefusalLimit <= 0 {
		cfg.AuthRefusalLimit = 1
	}
	if cfg.ReprovisionAfter <= 0 {
		cfg.ReprovisionAfter = 10
	}
	return nil
}

// ConnectHub connects to the hub and returns once the device is
// connected and subscribed, or with a typed error: errors.Is(err,
// ErrNotAuthorized) means the hub refused the identity (re-provision).
// After that, the connection is kept up in the background (unless
// DisableReconnect).
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
		window:  make(chan struct{}, cfg.MaxInFlight),
		up:      make(chan struct{}),
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
	h.emit(StateEvent{State: StateConnecting})
	s, err := h.connect(ctx)
	if err != nil {
		h.cancel()
		close(h.exited)
		return nil, err
	}
	h.setSession(s)
	h.emit(StateEvent{State: StateConnected})
	go h.afterConnect(s)
	go h.supervise(s)
	return h, nil
}

// connect makes one session: dial, CONNECT, SUBSCRIBE.
func (h *Hub) connect(ctx context.Context) (*session, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.ConnectTimeout)
	defer cancel()
	s, err := openSession(ctx, &h.cfg.Network, h.cfg.Host, &h.cfg.Credential, sessionOptions{
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
	h.stats.connects.Add(1)
	return s, nil
}

func (h *Hub) setSession(s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cur = s
	if s != nil {
		close(h.up)
	} else {
		h.up = make(chan struct{})
	}
}

func (h *Hub) emit(ev StateEvent) {
	h.log.Info("hub state", "state", ev.State.String(), "err", ev.Err, "failures", ev.Failures, "reprovision", ev.Reprovision)
	if h.cfg.OnState != nil {
		h.cfg.OnState(ev)
	}
}

// supervise watches the session and reconnects with jittered backoff.
func (h *Hub) supervise(s *session) {
	defer close(h.exited)
	for {
		started := h.cfg.Now()
		select {
		case <-h.ctx.Done():
			return
		case <-s.lost:
		}
		lostErr := s.lostErr
		h.setSession(nil)
		if h.ctx.Err() != nil {
			return
		}
		h.emit(StateEvent{State: StateDisconnected, Err: lostErr})
		if h.cfg.DisableReconnect {
			h.finish(lostErr)
			return
		}
		failures := 0
		if h.cfg.Now().Sub(started) < time.Minute {
			// It dropped soon after connecting: do not reconnect at once
			// (repeated immediate disconnects must back off).
			failures = 1
		}
		refusals := 0
		for {
			d := h.cfg.Backoff.Delay(failures, h.cfg.Rand)
			if err := h.cfg.Sleep(h.ctx, d); err != nil {
				return
			}
			h.emit(StateEvent{State: StateConnecting, Failures: failures})
			ns, err := h.connect(h.ctx)
			if err == nil {
				s = ns
				h.setSession(s)
				h.emit(StateEvent{State: StateConnected})
				go h.afterConnect(s)
				break
			}
			if h.ctx.Err() != nil {
				return
			}
			failures++
			if errors.Is(err, ErrNotAuthorized) {
				refusals++
				h.stats.authRefuse.Add(1)
				h.emit(StateEvent{State: StateUnauthorized, Err: err, Failures: failures, Reprovision: true})
				if refusals >= h.cfg.AuthRefusalLimit {
					h.finish(err)
					return
				}
				continue
			}
			refusals = 0
			if !Retryable(err) {
				h.finish(err)
				return
			}
			h.emit(StateEvent{State: StateDisconnected, Err: err, Failures: failures, Reprovision: failures >= h.cfg.ReprovisionAfter})
		}
	}
}

// finish stops the client with err (terminal).
func (h *Hub) finish(err error) {
	h.mu.Lock()
	if h.err == nil {
		h.err = err
	}
	h.mu.Unlock()
	h.emit(StateEvent{State: StateClosed, Err: err, Reprovision: errors.Is(err, ErrNotAuthorized)})
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

// afterConnect re-reads the twin so desired changes made while offline
// are not missed (the hub only pushes patches to connected devices).
func (h *Hub) afterConnect(s *session) {
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

// Done is closed when the client stops for good: Close, a terminal
// error, or a drop with DisableReconnect. Err says why.
func (h *Hub) Done() <-chan struct{} { return h.done }

// Err is the reason the client stopped, or nil while it runs.
func (h *Hub) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// Connected reports whether a session is up right now.
func (h *Hub) Connected() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur != nil
}

// Stats returns counters.
func (h *Hub) Stats() HubStats {
	return HubStats{
		Connects: h.stats.connects.Load(), Sent: h.stats.sent.Load(), Resent: h.stats.resent.Load(),
		C2D: h.stats.c2d.Load(), Methods: h.stats.methods.Load(), Desired: h.stats.desired.Load(),
		InFlight: h.stats.inflight.Load(), AuthRefuse: h.stats.authRefuse.Load(),
	}
}

// Close disconnects (sending DISCONNECT) and stops reconnecting.
// Pending SendTelemetry calls return ErrHubClosed.
func (h *Hub) Close() error {
	h.mu.Lock()
	running := h.err == nil
	if running {
		h.err = ErrHubClosed
	}
	s := h.cur
	h.mu.Unlock()
	h.cancel()
	if s != nil {
		s.close()
	}
	<-h.exited
	h.closeDone()
	if running {
		h.emit(StateEvent{State: StateClosed, Err: ErrHubClosed})
	}
	return nil
}

// session waits for a connected session.
func (h *Hub) session(ctx context.Context) (*session, error) {
	for {
		h.mu.Lock()
		s, up, err := h.cur, h.up, h.err
		h.mu.Unlock()
		if err != nil {
			return nil, err
		}
		if s != nil {
			return s, nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-h.done:
		}
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

// SendTelemetry publishes m at QoS 1 and returns when the hub has
// acknowledged it (PUBACK). If the connection drops first, the message
// is published again on the next connection (at-least-once: the hub may
// see a duplicate, never a loss). It blocks while MaxInFlight messages
// are unacknowledged. A ctx that ends first returns ctx.Err(); the
// message may or may not have arrived.
func (h *Hub) SendTelemetry(ctx context.Context, m *Message) error {
	topic := TelemetryTopic(h.cfg.DeviceID, m)
	if n := len(topic) + len(m.Payload); n > MaxTelemetrySize {
		return &ConfigError{Field: "telemetry message", Err: fmt.Errorf("%w: %d bytes with topic, limit %d", ErrTooLarge, n, MaxTelemetrySize)}
	}
	select {
	case h.window <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-h.done:
		return h.stopped()
	}
	h.stats.inflight.Add(1)
	defer func() {
		<-h.window
		h.stats.inflight.Add(-1)
	}()
	for attempt := 0; ; attempt++ {
		s, err := h.session(ctx)
		if err != nil {
			return err
		}
		if attempt > 0 {
			h.stats.resent.Add(1)
		}
		tok := s.publishAsync(topic, 1, m.Payload)
		select {
		case <-tok.Done():
			if tok.Error() == nil {
				h.stats.sent.Add(1)
				return nil
			}
			// Not connected / connection lost while publishing: wait for
			// the supervisor to notice, then resend.
			select {
			case <-s.lost:
			case <-ctx.Done():
				return ctx.Err()
			case <-h.done:
				return h.stopped()
			}
		case <-s.lost:
		case <-ctx.Done():
			return ctx.Err()
		case <-h.done:
			return h.stopped()
		}
	}
}

// GetTwin fetches the full twin.
func (h *Hub) GetTwin(ctx context.Context) (*Twin, error) {
	_, body, err := h.twinRequest(ctx, "twin get", twinGetFmt, nil)
	if err != nil {
		return nil, err
	}
	return ParseTwin(body)
}

// ParseTwin decodes a twin GET body and the two $version numbers.
func ParseTwin(body []byte) (*Twin, error) {
	var t Twin
	if err := json.Unmarshal(body, &t); err != nil {
		return nil, &ProtocolError{What: "twin body", Raw: string(body), Err: err}
	}
	var v struct {
		Version *int64 `json:"$version"`
	}
	if len(t.Desired) > 0 {
		if err := json.Unmarshal(t.Desired, &v); err != nil {
			return nil, &ProtocolError{What: "twin desired", Raw: string(t.Desired), Err: err}
		}
		if v.Version != nil {
			t.DesiredVersion = *v.Version
		}
	}
	v.Version = nil
	if len(t.Reported) > 0 {
		if err := json.Unmarshal(t.Reported, &v); err != nil {
			return nil, &ProtocolError{What: "twin reported", Raw: string(t.Reported), Err: err}
		}
		if v.Version != nil {
			t.ReportedVersion = *v.Version
		}
	}
	return &t, nil
}

// UpdateReported sends a reported-properties patch (members set to null
// are deleted) and returns the new reported $version.
func (h *Hub) UpdateReported(ctx context.Context, patch any) (int64, error) {
	var body []byte
	switch p := patch.(type) {
	case json.RawMessage:
		body = p
	case []byte:
		body = p
	default:
		var err error
		if body, err = json.Marshal(patch); err != nil {
			return 0, fmt.Errorf("reported patch: %w", err)
		}
	}
	if !json.Valid(body) || !strings.HasPrefix(strings.TrimSpace(string(body)), "{") {
		return 0, &ConfigError{Field: "reported patch", Err: errors.New("must be a JSON object")}
	}
	resp, _, err := h.twinRequest(ctx, "twin patch", twinPatchFmt, body)
	if err != nil {
		return 0, err
	}
	return resp.Version, nil
}

// twinRequest runs one twin exchange, retrying on connection loss,
// response timeout, 429 and 5xx until ctx ends.
func (h *Hub) twinRequest(ctx context.Context, op, format string, body []byte) (Response, []byte, error) {
	failures := 0
	var last error
	for {
		s, err := h.session(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return Response{}, nil, ctxError(ctx, op, failures, last)
			}
			return Response{}, nil, err
		}
		rid := strconv.FormatUint(h.rid.Add(1), 10)
		ch := make(chan twinReply, 1)
		h.mu.Lock()
		h.waiters[rid] = ch
		h.mu.Unlock()
		resp, rbody, err := h.twinExchange(ctx, s, fmt.Sprintf(format, rid), body, ch)
		h.mu.Lock()
		delete(h.waiters, rid)
		h.mu.Unlock()
		if err == nil {
			if resp.Status < 300 {
				return resp, rbody, nil
			}
			err = parseStatusError(op, resp, rbody)
		}
		if ctx.Err() != nil {
			return Response{}, nil, ctxError(ctx, op, failures, err)
		}
		if !Retryable(err) {
			return Response{}, nil, err
		}
		last = err
		d := h.cfg.Backoff.Delay(failures, h.cfg.Rand)
		var se *StatusError
		if errors.As(err, &se) && se.RetryAfter > 0 {
			d = max(d, clampRetryAfter(se.RetryAfter, 0, 300*time.Second))
		}
		failures++
		if err := h.cfg.Sleep(ctx, d); err != nil {
			return Response{}, nil, ctxError(ctx, op, failures, last)
		}
	}
}

func (h *Hub) twinExchange(ctx context.Context, s *session, topic string, body []byte, ch <-chan twinReply) (Response, []byte, error) {
	tctx, cancel := context.WithTimeout(ctx, h.cfg.RequestTimeout)
	defer cancel()
	if body == nil {
		body = []byte{}
	}
	s.publishAsync(topic, 0, body)
	select {
	case r := <-ch:
		return r.resp, r.body, nil
	case <-s.lost:
		return Response{}, nil, s.lostErr
	case <-h.done:
		return Response{}, nil, h.stopped()
	case <-tctx.Done():
		if ctx.Err() != nil {
			return Response{}, nil, ctx.Err()
		}
		return Response{}, nil, &TimeoutError{Op: "hub response to " + topic, Err: ErrNoResponse}
	}
}

// HandleMethod registers (or with nil, removes) a direct-method handler.
func (h *Hub) HandleMethod(name string, fn MethodHandler) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if fn == nil {
		delete(h.methods, name)
		return
	}
	h.methods[name] = fn
}

// deliver hands a response to the request waiting on its $rid without
// blocking the dispatcher. It reports false when no request waits.
func (h *Hub) deliver(resp Response, payload []byte) bool {
	h.mu.Lock()
	ch := h.waiters[resp.RID]
	h.mu.Unlock()
	if ch == nil {
		return false
	}
	select {
	case ch <- twinReply{resp, append([]byte(nil), payload...)}:
	default:
	}
	return true
}

// dispatch routes one inbound PUBLISH. It runs on its own goroutine.
func (h *Hub) dispatch(topic string, payload []byte) {
	switch {
	case strings.HasPrefix(topic, twinResPrefix):
		resp, err := ParseTwinResponseTopic(topic)
		if err != nil {
			h.log.Warn("bad twin response", "err", err)
			return
		}
		if !h.deliver(resp, payload) {
			h.log.Debug("twin response for no request", "topic", topic)
		}
	case strings.HasPrefix(topic, credentialsResPrefix):
		resp, err := parseResponseTopic(topic, credentialsResPrefix)
		if err != nil {
			h.log.Warn("bad credentials response", "err", err)
			return
		}
		if !h.deliver(resp, payload) {
			h.log.Info("credentials response for no request", "topic", topic)
		}
	case strings.HasPrefix(topic, twinDesiredPrefix):
		v, ok, err := parseDesiredTopic(topic)
		if err != nil {
			h.log.Warn("bad desired patch topic", "err", err)
		}
		if !ok {
			// The version is also in the body.
			var b struct {
				Version *int64 `json:"$version"`
			}
			if json.Unmarshal(payload, &b) == nil && b.Version != nil {
				v = *b.Version
			}
		}
		h.desiredVersion.Store(v)
		h.stats.desired.Add(1)
		if h.cfg.OnDesired != nil {
			h.cfg.OnDesired(DesiredUpdate{Version: v, Patch: append(json.RawMessage(nil), payload...)})
		}
	case strings.HasPrefix(topic, methodsPrefix):
		h.handleMethod(topic, payload)
	case strings.HasPrefix(topic, "devices/"):
		m, err := ParseC2DTopic(h.cfg.DeviceID, topic)
		if err != nil {
			h.log.Warn("bad c2d topic", "err", err)
			return
		}
		m.Payload = append([]byte(nil), payload...)
		h.stats.c2d.Add(1)
		if h.cfg.OnC2D != nil {
			h.cfg.OnC2D(m)
		}
	default:
		h.log.Warn("message on unexpected topic", "topic", topic)
	}
}

func (h *Hub) handleMethod(topic string, payload []byte) {
	mt, err := parseMethodTopic(topic)
	if err != nil {
		h.log.Warn("bad method topic", "err", err)
		return
	}
	h.stats.methods.Add(1)
	h.mu.Lock()
	fn := h.methods[mt.Name]
	h.mu.Unlock()
	status, body := 501, []byte(`{"message":"method not implemented on this device"}`)
	if fn != nil {
		status, body = h.callMethod(fn, MethodRequest{Name: mt.Name, RID: mt.RID, Payload: append([]byte(nil), payload...)})
	}
	if body == nil {
		body = []byte{}
	}
	h.mu.Lock()
	s := h.cur
	h.mu.Unlock()
	if s == nil {
		h.log.Warn("method response dropped: not connected", "method", mt.Name, "rid", mt.RID)
		return
	}
	s.publishAsync(fmt.Sprintf(methodResFmt, status, mt.RID), 0, body)
}

// callMethod runs a handler; a panic answers 500 instead of taking the
// whole agent down with it.
func (h *Hub) callMethod(fn MethodHandler, req MethodRequest) (status int, body []byte) {
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("direct method handler panicked", "method", req.Name, "panic", fmt.Sprint(p))
			status, body = 500, []byte(`{"message":"method handler failed on the device"}`)
		}
	}()
	return fn(h.ctx, req)
}
