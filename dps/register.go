package dps

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// DefaultEndpoint is the global DPS device endpoint.
const DefaultEndpoint = "global.azure-devices-provisioning.net:8883"

// Config configures Register. Only IDScope and Certificate are required.
type Config struct {
	// Endpoint is host[:port]; default DefaultEndpoint (port 443 with
	// Network.WebSocket).
	Endpoint string
	IDScope  string
	// RegistrationID defaults to the leaf certificate's CN, which DPS
	// requires it to equal.
	RegistrationID string
	// Certificate is the device's credential: its key (a crypto.Signer)
	// and chain, leaf first, then every intermediate up to but not
	// including the CA the service knows.
	Certificate tls.Certificate
	Network     Network

	// Payload is optional custom JSON sent as "payload" (custom
	// allocation webhooks, {"modelId":...}).
	Payload json.RawMessage
	// CSR is an optional DER PKCS#10 request whose CN is the
	// registration ID; DPS (api-version 2025-07-01-preview) then returns
	// the issued chain in Result.IssuedChain, or, for an enrollment that
	// does not issue, the Result with ErrNotIssued.
	CSR []byte
	// APIVersion overrides the api-version in the user name (default
	// 2019-03-31, or 2025-07-01-preview with a CSR).
	APIVersion string
	// ClientVersion is appended to the user name as &ClientVersion=.
	ClientVersion string

	// Timeout bounds the whole registration when ctx has no earlier
	// deadline. Default 5 minutes; a registration never runs unbounded.
	Timeout time.Duration
	// ResponseTimeout bounds each request/response exchange. Default 30 s.
	ResponseTimeout time.Duration
	// PollInterval is the wait between status polls when a 202 carries
	// no retry-after. Default 2 s.
	PollInterval time.Duration
	// MinPollInterval floors the wait between status polls whatever
	// retry-after says: max(retry-after, 2 s), as the C# SDK does, which
	// also keeps a device well inside DPS's 5 polls per 10 s. Default 2 s;
	// a negative value honours retry-after exactly (benchmarks only).
	MinPollInterval time.Duration
	// MaxRetryAfter clamps the service's retry-after. Default 300 s.
	MaxRetryAfter time.Duration
	// Backoff for 429, 5xx and transport failures. Default base 1 s,
	// max 60 s, full jitter.
	Backoff Backoff
	// KeepAlive for the DPS connection. Default 240 s, at most 1177 s.
	KeepAlive time.Duration

	// Now and Sleep are the time source of the waits (nil: real time);
	// Sleep waits d or until ctx is done, returning ctx.Err(). Tests pass
	// virtual time, the agent its clock. Plain functions, because dps
	// imports no devid package (the agent's clock is hal/clock).
	Now    func() time.Time
	Sleep  func(ctx context.Context, d time.Duration) error
	Rand   func() float64 // [0,1); default math/rand/v2
	Logger *slog.Logger
}

// Result is a successful registration.
type Result struct {
	AssignedHub string
	DeviceID    string
	OperationID string
	State       RegistrationState
	// IssuedChain is the chain DPS issued for Config.CSR, leaf first.
	IssuedChain []*x509.Certificate
	// RoundTrips counts request/response exchanges (register, polls,
	// retries).
	RoundTrips int
	// Connects counts MQTT connections made.
	Connects int
}

const (
	pollLimit  = 5
	pollWindow = 10 * time.Second
)

func (cfg *Config) defaults() error {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
		if cfg.Network.WebSocket {
			cfg.Endpoint = "global.azure-devices-provisioning.net:443"
		}
	}
	if cfg.IDScope == "" {
		return &ConfigError{Field: "id_scope", Err: errors.New("empty")}
	}
	if strings.ContainsAny(cfg.IDScope, "/#+ ") {
		return &ConfigError{Field: "id_scope", Err: fmt.Errorf("%q contains / # + or space", cfg.IDScope)}
	}
	leaf, err := checkCertificate(&cfg.Certificate)
	if err != nil {
		return err
	}
	cn := leaf.Subject.CommonName
	if cfg.RegistrationID == "" {
		cfg.RegistrationID = cn
	}
	if err := checkWireID("registration_id", cfg.RegistrationID); err != nil {
		return err
	}
	if !strings.EqualFold(cfg.RegistrationID, cn) {
		return &ConfigError{Field: "registration_id", Err: fmt.Errorf("%q differs from the certificate CN %q; DPS requires them equal", cfg.RegistrationID, cn)}
	}
	if len(cfg.Payload) > 0 && !json.Valid(cfg.Payload) {
		return &ConfigError{Field: "payload", Err: errors.New("not valid JSON")}
	}
	if len(cfg.CSR) > 0 {
		csr, err := x509.ParseCertificateRequest(cfg.CSR)
		if err != nil {
			return &ConfigError{Field: "csr", Err: err}
		}
		if err := csr.CheckSignature(); err != nil {
			return &ConfigError{Field: "csr", Err: err}
		}
		if csr.Subject.CommonName != cfg.RegistrationID {
			return &ConfigError{Field: "csr", Err: fmt.Errorf("CN %q must equal the registration ID %q", csr.Subject.CommonName, cfg.RegistrationID)}
		}
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = dpsAPIVersion
		if len(cfg.CSR) > 0 {
			cfg.APIVersion = dpsCSRAPIVersion
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	if cfg.ResponseTimeout <= 0 {
		cfg.ResponseTimeout = 30 * time.Second
	}
	if cfg.MinPollInterval == 0 {
		cfg.MinPollInterval = 2 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 2 * time.Second
	}
	if cfg.MaxRetryAfter <= 0 {
		cfg.MaxRetryAfter = 300 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	sharedDefaults(&cfg.KeepAlive, &cfg.Backoff, 60*time.Second, &cfg.Sleep, &cfg.Rand, &cfg.Logger)
	return nil
}

type registerBody struct {
	RegistrationID string          `json:"registrationId"`
	Payload        json.RawMessage `json:"payload,omitempty"`
	CSR            string          `json:"csr,omitempty"`
}

type inbound struct {
	topic   string
	payload []byte
}

// registration is the state of one Register call.
type registration struct {
	cfg      Config
	log      *slog.Logger
	rid      atomic.Uint64
	opID     string
	failures int // consecutive retryable failures, for backoff
	lastErr  error
	restarts int // re-registers after a poll 404
	limiter  pollLimiter
	res      Result
}

// Register provisions the device with DPS over MQTT and returns its
// assignment. It honours retry-after (clamped to [0, MaxRetryAfter]),
// backs off with full jitter on 429/5xx and transport failures, keeps
// status polls within 5 per 10 s, and stops at ctx's deadline or
// Config.Timeout, whichever is earlier, with a *TimeoutError carrying
// the last failure. Terminal failures (see Retryable) return at once.
// With a CSR that DPS did not issue for, it returns the assignment and
// ErrNotIssued.
func Register(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	r := &registration{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "dps", "registration_id", cfg.RegistrationID),
		limiter: pollLimiter{limit: pollLimit, window: pollWindow},
	}
	return r.run(ctx)
}

func (r *registration) run(ctx context.Context) (*Result, error) {
	for {
		if ctx.Err() != nil {
			return nil, ctxError(ctx, "dps register", r.attempts(), r.lastErr)
		}
		res, err := r.session(ctx)
		if res != nil || (err != nil && !Retryable(err)) {
			return res, err
		}
		if ctx.Err() != nil {
			return nil, ctxError(ctx, "dps register", r.attempts(), r.lastErr)
		}
		if err != nil {
			r.lastErr = err
			d := r.cfg.Backoff.Delay(r.failures, r.cfg.Rand)
			r.failures++
			r.log.Info("dps connection failed; backing off", "err", err, "retry_in", d)
			if err := r.cfg.Sleep(ctx, d); err != nil {
				return nil, ctxError(ctx, "dps register", r.attempts(), r.lastErr)
			}
		}
	}
}

// session runs the exchange over one MQTT connection. It returns a
// result, a terminal error, or a retryable error after which the caller
// reconnects.
func (r *registration) session(ctx context.Context) (*Result, error) {
	cfg := &r.cfg
	in := make(chan inbound, 16)
	r.res.Connects++
	s, err := openSession(ctx, &cfg.Network, cfg.Endpoint, &cfg.Certificate, sessionOptions{
		clientID:     cfg.RegistrationID,
		username:     DPSUsername(cfg.IDScope, cfg.RegistrationID, cfg.APIVersion, cfg.ClientVersion),
		cleanSession: true,
		keepAlive:    cfg.KeepAlive,
		onMessage: func(topic string, payload []byte) {
			select {
			case in <- inbound{topic, payload}:
			default: // a flood of stale replies; the one we want will be re-requested
			}
		},
	})
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := s.subscribe(ctx, dpsResSubscribe); err != nil {
		return nil, err
	}
	for {
		topic, body, op := r.nextRequest()
		if op == "poll" {
			if d := r.limiter.wait(cfg.Now()); d > 0 {
				r.log.Debug("poll limit reached; waiting", "wait", d)
				if err := cfg.Sleep(ctx, d); err != nil {
					return nil, ctxError(ctx, "dps register", r.attempts(), r.lastErr)
				}
			}
			r.limiter.record(cfg.Now())
		}
		rid := ridOf(topic)
		r.res.RoundTrips++
		r.log.Debug("dps request", "op", op, "topic", topic)
		resp, payload, err := r.exchange(ctx, s, in, topic, body, rid)
		if err != nil {
			return nil, err
		}
		done, res, err := r.handle(op, resp, payload)
		if done {
			return res, err
		}
		if err != nil && !Retryable(err) {
			return nil, err
		}
		var wait time.Duration
		if err != nil { // 429 / 5xx: same request again after a wait
			r.lastErr = err
			wait = r.cfg.Backoff.Delay(r.failures, r.cfg.Rand)
			r.failures++
			if resp.HasRetry {
				wait = max(wait, clampRetryAfter(resp.RetryAfter, 0, cfg.MaxRetryAfter))
			}
			r.log.Info("dps busy; retrying", "status", resp.Status, "retry_in", wait)
		} else { // still assigning
			r.failures = 0
			wait = cfg.PollInterval
			if resp.HasRetry {
				wait = clampRetryAfter(resp.RetryAfter, 0, cfg.MaxRetryAfter)
			}
			wait = max(wait, cfg.MinPollInterval)
		}
		if err := cfg.Sleep(ctx, wait); err != nil {
			return nil, ctxError(ctx, "dps register", r.attempts(), r.lastErr)
		}
	}
}

func ridOf(topic string) string {
	_, q, _ := strings.Cut(topic, "?$rid=")
	rid, _, _ := strings.Cut(q, "&")
	return rid
}

// nextRequest builds the register request, or a status poll once an
// operationId is known.
func (r *registration) nextRequest() (topic string, body []byte, op string) {
	rid := strconv.FormatUint(r.rid.Add(1), 10)
	if r.opID != "" {
		return dpsPollTopic(rid, r.opID), nil, "poll"
	}
	b := registerBody{RegistrationID: r.cfg.RegistrationID, Payload: r.cfg.Payload}
	if len(r.cfg.CSR) > 0 {
		b.CSR = base64.StdEncoding.EncodeToString(r.cfg.CSR)
	}
	body, _ = json.Marshal(b)
	return dpsRegisterTopic(rid), body, "register"
}

// exchange publishes one request and waits for the response with the
// same $rid.
func (r *registration) exchange(ctx context.Context, s *session, in <-chan inbound, topic string, body []byte, rid string) (Response, []byte, error) {
	tctx, cancel := context.WithTimeout(ctx, r.cfg.ResponseTimeout)
	defer cancel()
	tok := s.publishAsync(topic, 1, body)
	for {
		select {
		case m := <-in:
			resp, err := ParseDPSResponseTopic(m.topic)
			if err != nil {
				r.log.Warn("ignoring unexpected message", "topic", m.topic, "err", err)
				continue
			}
			if resp.RID != rid {
				r.log.Debug("ignoring stale response", "topic", m.topic, "want_rid", rid)
				continue
			}
			return resp, m.payload, nil
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				return Response{}, nil, classifyConnErr(s.host, "publish", err)
			}
			tok = doneToken{}
		case <-s.lost:
			return Response{}, nil, s.lostErr
		case <-tctx.Done():
			if ctx.Err() != nil {
				return Response{}, nil, ctxError(ctx, "dps register", r.attempts(), r.lastErr)
			}
			return Response{}, nil, &TimeoutError{Op: "dps response to " + topic, Err: ErrNoResponse}
		}
	}
}

// handle interprets one response. done reports that Register should
// return (res, err).
func (r *registration) handle(op string, resp Response, payload []byte) (done bool, res *Result, err error) {
	switch {
	case resp.Status == 429 || resp.Status >= 500:
		return false, nil, parseStatusError("dps "+op, resp, payload)
	case resp.Status == 404 && op == "poll" && r.restarts < 3:
		// The operation expired or is unknown: start over.
		r.restarts++
		r.log.Info("dps operation not found; registering again", "operation_id", r.opID)
		r.opID = ""
		return false, nil, nil
	case resp.Status >= 300 || resp.Status < 200:
		return true, nil, parseStatusError("dps "+op, resp, payload)
	}
	st, err := ParseOperationStatus(payload)
	if err != nil {
		return true, nil, err
	}
	if st.OperationID != "" {
		r.opID = st.OperationID
	}
	switch st.Status {
	case StatusAssigned:
		res, err := r.assigned(st)
		return true, res, err
	case StatusFailed, StatusDisabled, statusBlacklist:
		re := &RegistrationError{RegistrationID: r.cfg.RegistrationID, OperationID: st.OperationID, Status: st.Status, State: st.RegistrationState}
		if re.Status == statusBlacklist {
			re.Status = StatusFailed
		}
		if rs := st.RegistrationState; rs != nil {
			re.ErrorCode, re.ErrorMessage = int(rs.ErrorCode), rs.ErrorMessage
		}
		return true, nil, re
	}
	// assigning / unassigned: poll (re-register if no operationId yet).
	return false, nil, nil
}

func (r *registration) assigned(st *OperationStatus) (*Result, error) {
	rs := st.RegistrationState
	r.res.AssignedHub = rs.AssignedHub
	r.res.DeviceID = rs.DeviceID
	r.res.OperationID = st.OperationID
	r.res.State = *rs
	res := r.res
	r.log.Info("dps assigned", "hub", rs.AssignedHub, "device_id", rs.DeviceID, "round_trips", res.RoundTrips)
	if p := rs.ConnectionProfile; p != "" && !strings.EqualFold(p, "classic") {
		// A draft API: a hub that speaks MQTT 5 is not supported.
		r.log.Warn("dps assigned a hub with a connection profile this client does not speak", "connection_profile", p)
	}
	if len(r.cfg.CSR) == 0 {
		return &res, nil
	}
	if len(rs.IssuedCertificateChain) == 0 {
		return &res, fmt.Errorf("registration %q assigned to %s: %w", rs.RegistrationID, rs.AssignedHub, ErrNotIssued)
	}
	chain, err := ParseIssuedChain(rs.IssuedCertificateChain)
	if err != nil {
		return &res, err
	}
	csr, _ := x509.ParseCertificateRequest(r.cfg.CSR)
	type eq interface{ Equal(crypto.PublicKey) bool }
	if k, ok := chain[0].PublicKey.(eq); !ok || !k.Equal(csr.PublicKey) {
		return &res, &ProtocolError{What: "issuedCertificateChain[0]", Raw: chain[0].Subject.String(), Err: errors.New("public key differs from the CSR's")}
	}
	res.IssuedChain = chain
	return &res, nil
}

// doneToken stands in for a paho token that already completed, so the
// select above does not spin on a closed Done channel.
type doneToken struct{}

func (doneToken) Wait() bool                     { return true }
func (doneToken) WaitTimeout(time.Duration) bool { return true }
func (doneToken) Done() <-chan struct{}          { return nil }
func (doneToken) Error() error                   { return nil }

// attempts counts connection attempts and requests sent, for errors.
func (r *registration) attempts() int { return r.res.Connects + r.res.RoundTrips }
