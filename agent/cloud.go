package agent

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/credential"
	"devid/hal/clock"
)

// DPSCloud is the production Cloud: devid/dps against Azure (or the
// simulator, through network.resolve).
type DPSCloud struct {
	cfg     *config.Config
	net     dps.Network
	clock   clock.Clock
	log     *slog.Logger
	version string
}

// NewDPSCloud builds the dps network settings from the config: trust
// bundle, resolve overrides, proxy, transport and the agent's clock for
// TLS verification.
func NewDPSCloud(cfg *config.Config, clk clock.Clock, log *slog.Logger, version string) (*DPSCloud, error) {
	n := dps.Network{
		Resolve:          cfg.Network.Resolve,
		Proxy:            cfg.Network.Proxy,
		WebSocket:        cfg.DPS.Transport == "websocket",
		Now:              clk.Now,
		HandshakeTimeout: cfg.Hub.ConnectTimeout.D(),
	}
	if cfg.DPS.TrustBundle != "" {
		b, err := os.ReadFile(cfg.DPS.TrustBundle)
		if err != nil {
			return nil, fmt.Errorf("dps.trust_bundle: %w", err)
		}
		roots, err := dps.ParseTrustBundle(b)
		if err != nil {
			return nil, fmt.Errorf("dps.trust_bundle %s: %w", cfg.DPS.TrustBundle, err)
		}
		if len(roots) == 0 {
			return nil, fmt.Errorf("dps.trust_bundle %s: no certificates", cfg.DPS.TrustBundle)
		}
		n.TrustBundle = roots
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DPSCloud{cfg: cfg, net: n, clock: clk, log: log, version: version}, nil
}

// sleepOn is c as dps's Sleep seam (dps imports no devid package, so it
// takes functions, not a clock.Clock).
func sleepOn(c clock.Clock) func(context.Context, time.Duration) error {
	return func(ctx context.Context, d time.Duration) error { return clock.Sleep(ctx, c, d) }
}

// Register runs one DPS registration.
func (c *DPSCloud) Register(ctx context.Context, id *credential.Credential) (*statedir.Assignment, error) {
	dc := dps.Config{
		Endpoint:      c.cfg.DPS.Endpoint,
		IDScope:       c.cfg.DPS.IDScope,
		Certificate:   id.TLSCertificate(),
		Network:       c.net,
		Timeout:       c.cfg.DPS.Timeout.D(),
		ClientVersion: "devid-agent/" + c.version,
		Now:           c.clock.Now,
		Sleep:         sleepOn(c.clock),
		Logger:        c.log,
	}
	if c.cfg.DPS.Payload != "" {
		dc.Payload = json.RawMessage(c.cfg.DPS.Payload)
	}
	res, err := dps.Register(ctx, dc)
	if err != nil {
		return nil, err
	}
	as := &statedir.Assignment{
		Hub:            res.AssignedHub,
		DeviceID:       res.DeviceID,
		RegistrationID: res.State.RegistrationID,
		Substatus:      res.State.Substatus,
		AssignedAt:     c.clock.Now().UTC(),
	}
	for _, cert := range res.IssuedChain {
		as.IssuedChainPEM += string(pemCert(cert.Raw))
	}
	return as, nil
}

// hubConn adapts *dps.Hub to HubConn.
type hubConn struct {
	h *dps.Hub
}

// The sender publishes through the hub client's pipeline (agent/sender.go).
var _ AsyncSender = (*hubConn)(nil)

func (c *hubConn) Send(ctx context.Context, m Message) error {
	return c.h.SendTelemetry(ctx, dpsMessage(m))
}

// SendAsync is Send through the hub client's publish pipeline.
func (c *hubConn) SendAsync(m Message, timeout time.Duration, done func(error)) {
	c.h.SendTelemetryAsync(dpsMessage(m), timeout, done)
}

// dpsMessage is m as the hub client takes it.
func dpsMessage(m Message) *dps.Message {
	return &dps.Message{
		Payload:         m.Body,
		MessageID:       m.MessageID,
		ContentType:     m.ContentType,
		ContentEncoding: m.ContentEncoding,
		Properties:      m.Properties,
	}
}

func (c *hubConn) Report(ctx context.Context, patch []byte) error {
	_, err := c.h.UpdateReported(ctx, json.RawMessage(patch))
	return err
}

func (c *hubConn) Done() <-chan struct{} { return c.h.Done() }
func (c *hubConn) Err() error            { return c.h.Err() }
func (c *hubConn) Close()                { c.h.Close() }

// AddMethod routes direct method name to fn on this connection.
func (c *hubConn) AddMethod(name string, fn func(name string, payload []byte) (int, []byte)) {
	c.h.HandleMethod(name, func(_ context.Context, req dps.MethodRequest) (int, []byte) {
		return fn(req.Name, req.Payload)
	})
}

// Connect opens one hub connection; reconnecting is the agent's job.
func (c *DPSCloud) Connect(ctx context.Context, id *credential.Credential, a *statedir.Assignment, h Handlers) (HubConn, error) {
	methods := map[string]dps.MethodHandler{}
	for _, name := range h.MethodNames {
		methods[name] = func(_ context.Context, req dps.MethodRequest) (int, []byte) {
			return h.Method(req.Name, req.Payload)
		}
	}
	hc := dps.HubConfig{
		Host:           a.Hub,
		DeviceID:       a.DeviceID,
		Certificate:    id.TLSCertificate(),
		Network:        c.net,
		KeepAlive:      c.cfg.Hub.KeepAlive.D(),
		ConnectTimeout: c.cfg.Hub.ConnectTimeout.D(),
		Methods:        methods,
		Sleep:          sleepOn(c.clock),
		Logger:         c.log,
	}
	if h.C2D != nil {
		hc.OnC2D = func(m *dps.C2DMessage) {
			props := map[string]string{}
			for _, p := range m.Properties {
				props[p.Name] = p.Value
			}
			h.C2D(Message{Body: m.Payload, MessageID: m.MessageID, ContentType: m.ContentType,
				ContentEncoding: m.ContentEncoding, Properties: props})
		}
	}
	if h.Desired != nil {
		hc.OnDesired = func(u dps.DesiredUpdate) { h.Desired(u.Patch) }
	}
	hub, err := dps.ConnectHub(ctx, hc)
	if err != nil {
		return nil, err
	}
	return &hubConn{h: hub}, nil
}

// Classify maps dps errors to the agent's reactions.
func (c *DPSCloud) Classify(err error) ErrorClass {
	var te *dps.TLSError
	switch {
	case errors.As(err, &te) && (te.Kind == dps.TLSNotYetValid || te.Kind == dps.TLSExpired):
		// Seen through our clock: a 1970 clock makes every server
		// certificate "not yet valid". Never blame the identity for it.
		return ClassClock
	case errors.Is(err, dps.ErrDisabled), errors.Is(err, dps.ErrFailed):
		return ClassRefused
	case errors.Is(err, dps.ErrNotAuthorized):
		return ClassAuth
	case errors.Is(err, dps.ErrConfig):
		return ClassFatal
	}
	return ClassRetry
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// Network returns the dps network settings (resolve overrides, trust
// bundle, proxy, transport, clock) for other dps users such as renewal.
func (c *DPSCloud) Network() dps.Network { return c.net }
