package renewal

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"devid/agent/statedir"
	"devid/dps"
	"devid/enroll/rotate"
	"devid/hal/clock"
)

// DPSIssuer is path a): DPS certificate issuance. It registers with DPS
// using the onboarding credential (the factory certificate, which stays
// as it is) and a CSR, with api-version 2025-07-01-preview; DPS answers
// with issuedCertificateChain, which becomes the operational credential
// for the hub.
type DPSIssuer struct {
	// Config is the registration config with the onboarding certificate,
	// endpoint, scope and network; its CSR is set per request.
	Config dps.Config
	// OnAssigned, if set, receives the registration result (the hub the
	// device is assigned to may have changed).
	OnAssigned func(*dps.Result)
}

var _ rotate.Issuer = (*DPSIssuer)(nil)

// Name implements rotate.Issuer.
func (d *DPSIssuer) Name() string { return rotate.PathDPS }

// Issue implements rotate.Issuer.
func (d *DPSIssuer) Issue(ctx context.Context, req rotate.IssueRequest) ([]*x509.Certificate, error) {
	cfg := d.Config
	cfg.CSR = req.CSR
	if cfg.RegistrationID == "" {
		cfg.RegistrationID = req.RegistrationID
	}
	res, err := dps.Register(ctx, cfg)
	var st *dps.StatusError
	switch {
	case errors.Is(err, dps.ErrNotIssued) && res != nil:
		// Assigned, without a certificate: the assignment stands.
		if d.OnAssigned != nil {
			d.OnAssigned(res)
		}
		return nil, fmt.Errorf("%w: %w", rotate.ErrNotOffered, err)
	case errors.As(err, &st) && st.Status == 400:
		// DPS refused the request with its CSR (docs/dps.md: what DPS
		// answers to a CSR that the enrollment cannot issue for is not
		// documented; a 400 is one of the two variants).
		return nil, fmt.Errorf("%w: %w", rotate.ErrNotOffered, err)
	case err != nil:
		return nil, err
	}
	if d.OnAssigned != nil {
		d.OnAssigned(res)
	}
	if len(res.IssuedChain) == 0 {
		return nil, fmt.Errorf("%w: %w", rotate.ErrNotOffered, dps.ErrNotIssued)
	}
	return res.IssuedChain, nil
}

// HubIssuer renews an operational certificate through the IoT Hub
// credentials topic (preview, hub api-version 2025-08-01-preview; wire
// forms in docs/dps.md): it connects with the current operational
// credential, posts the CSR to issueCertificate and waits for the chain.
// It needs a current credential that the hub still accepts; when that is
// gone (revoked, expired) DPSIssuer is the way back.
type HubIssuer struct {
	// Config names the hub (Host, DeviceID) and the network; Certificate
	// and CertificateRenewal are set per request.
	Config dps.HubConfig
	// Log, if set, notes a lost request being replaced.
	Log *slog.Logger
}

var _ rotate.Issuer = (*HubIssuer)(nil)

// Name implements rotate.Issuer.
func (h *HubIssuer) Name() string { return rotate.PathHub }

// Issue implements rotate.Issuer.
func (h *HubIssuer) Issue(ctx context.Context, req rotate.IssueRequest) ([]*x509.Certificate, error) {
	if req.Current.Signer == nil || len(req.Current.Chain) == 0 {
		return nil, errors.New("hub certificate renewal authenticates with the current operational certificate, and there is none")
	}
	cfg := h.Config
	cfg.Certificate = req.Current.TLSCertificate()
	cfg.CertificateRenewal = true
	hub, err := dps.ConnectHub(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	chain, err := hub.RequestCertificate(ctx, req.CSR)
	var active *dps.RequestActiveError
	if errors.As(err, &active) {
		// This issuer waits for every answer it asks for, so an active
		// request is one this device lost (a reboot, a dropped
		// connection): its answer can never reach us. Replace it rather
		// than wait until it expires (409005; docs/dps.md).
		if h.Log != nil {
			h.Log.Info("renewal: the hub holds a certificate request this device lost; replacing it", "request", active.RequestID, "expires", active.Expires)
		}
		chain, err = hub.RequestCertificateWithOptions(ctx, req.CSR, dps.CertificateRequestOptions{Replace: "*"})
	}
	return chain, err
}

// pathIssuer is paths dps and hub as the agent runs them. Path dps
// issues through DPS with the onboarding credential and a CSR. Path hub
// renews over the hub's credentials topic (docs/dps.md, certificate
// renewal, preview), authenticated with the current operational
// certificate; without one (first issuance), for a registration
// (dpsOnly), or when the hub cannot issue (no preview support, a
// transient failure), it issues through DPS, which needs only the
// factory credential.
type pathIssuer struct {
	r       *Renewal
	path    string // recorded with each rotation: rotate.PathDPS or rotate.PathHub
	dpsOnly bool
}

// Name implements rotate.Issuer.
func (p *pathIssuer) Name() string { return p.path }

// Issue implements rotate.Issuer.
func (p *pathIssuer) Issue(ctx context.Context, req rotate.IssueRequest) ([]*x509.Certificate, error) {
	if p.path != rotate.PathHub || p.dpsOnly {
		return p.r.issueDPS(ctx, req)
	}
	return p.r.issueHub(ctx, req)
}

// issueDPS is path a): register with the onboarding credential and a CSR.
func (r *Renewal) issueDPS(ctx context.Context, req rotate.IssueRequest) ([]*x509.Certificate, error) {
	// The DPS config is built per attempt: the onboarding identity exists
	// only once the device is enrolled.
	id, err := r.identity.Load()
	if err != nil {
		return nil, fmt.Errorf("onboarding credential: %w", err)
	}
	defer id.Close()
	r.log.Info("renewal: DPS certificate issuance", "registration_id", id.DeviceID())
	cfg := r.cfg
	d := &DPSIssuer{
		Config: dps.Config{
			Endpoint: cfg.DPS.Endpoint, IDScope: cfg.DPS.IDScope, Certificate: id.TLSCertificate(),
			Network: r.network, Timeout: cfg.DPS.Timeout.D(), Payload: payloadOf(cfg.DPS.Payload),
			Now: r.clock.Now, Sleep: sleepOn(r.clock), Logger: r.log.With("component", "dps"),
		},
		OnAssigned: r.onAssigned,
	}
	req.RegistrationID = id.DeviceID()
	return d.Issue(ctx, req)
}

// issueHub renews over the hub connection, falling back to DPS (see
// pathIssuer).
func (r *Renewal) issueHub(ctx context.Context, req rotate.IssueRequest) ([]*x509.Certificate, error) {
	as := r.hubAssignment()
	if req.Current.Signer == nil || as == nil {
		return r.issueDPS(ctx, req)
	}
	r.log.Info("renewal: hub certificate issuance", "hub", as.Hub, "device_id", as.DeviceID)
	h := &HubIssuer{Config: dps.HubConfig{Host: as.Hub, DeviceID: as.DeviceID, Network: r.network,
		KeepAlive: r.cfg.Hub.KeepAlive.D(), ConnectTimeout: r.cfg.Hub.ConnectTimeout.D(), Sleep: sleepOn(r.clock),
		Logger: r.log.With("component", "hub-renewal")}, Log: r.log}
	chain, err := h.Issue(ctx, req)
	if err == nil || ctx.Err() != nil {
		return chain, err
	}
	r.log.Warn("renewal: the hub did not issue a certificate; issuing through DPS", "err", err)
	return r.issueDPS(ctx, req)
}

func (r *Renewal) onAssigned(res *dps.Result) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.assigned = &statedir.Assignment{Hub: res.AssignedHub, DeviceID: res.DeviceID, RegistrationID: res.DeviceID}
}

func payloadOf(s string) json.RawMessage {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return json.RawMessage(s)
}

// sleepOn is c as dps's Sleep seam (dps imports no devid package, so it
// takes functions, not a clock.Clock).
func sleepOn(c clock.Clock) func(context.Context, time.Duration) error {
	return func(ctx context.Context, d time.Duration) error { return clock.Sleep(ctx, c, d) }
}

// estRoots verify the EST server: the DPS trust bundle when one is
// configured (a private PKI, or the simulator), else the system roots.
func (r *Renewal) estRoots() *x509.CertPool {
	if r.cfg.DPS.TrustBundle == "" {
		return nil
	}
	b, err := os.ReadFile(r.cfg.DPS.TrustBundle)
	if err != nil {
		return nil
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

// estTransport applies network.resolve and network.proxy to EST.
func (r *Renewal) estTransport(tc *tls.Config) http.RoundTripper {
	resolve := r.cfg.Network.Resolve
	d := &net.Dialer{Timeout: 30 * time.Second}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, _, err := net.SplitHostPort(addr); err == nil {
				if to, ok := resolve[host]; ok {
					addr = to
				}
			}
			return d.DialContext(ctx, network, addr)
		}}
	if p := r.cfg.Network.Proxy; p != "" {
		if u, err := url.Parse(p); err == nil {
			tr.Proxy = http.ProxyURL(u)
		}
	}
	return tr
}
