package rotate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"

	"devid/dps"
	"devid/enroll/est"
)

// DPSIssuer is path a): DPS certificate issuance. It registers with DPS
// using the onboarding credential (the factory certificate, which stays
// as it is) and a csr, with api-version 2025-07-01-preview; DPS answers
// with issuedCertificateChain, which becomes the operational credential
// for the hub.
type DPSIssuer struct {
	// Config is the registration config with the onboarding Credential,
	// endpoint, scope and network; its CSR is set per request.
	Config dps.Config
	// OnAssigned, if set, receives the registration result, so the agent
	// can update its cached assignment (the hub may have changed).
	OnAssigned func(*dps.Result)
}

var _ Issuer = (*DPSIssuer)(nil)

// Name implements Issuer.
func (d *DPSIssuer) Name() string { return PathDPS }

// Issue implements Issuer.
func (d *DPSIssuer) Issue(ctx context.Context, req IssueRequest) ([]*x509.Certificate, error) {
	cfg := d.Config
	cfg.CSR = req.CSR
	if cfg.RegistrationID == "" {
		cfg.RegistrationID = req.RegistrationID
	}
	res, err := dps.Register(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if d.OnAssigned != nil {
		d.OnAssigned(res)
	}
	if len(res.IssuedChain) == 0 {
		return nil, errors.New("DPS assigned the device but returned no issuedCertificateChain (is certificate issuance enabled on the enrollment?)")
	}
	return res.IssuedChain, nil
}

// ESTIssuer is path b): EST /simplereenroll, authenticated by TLS with
// the certificate being renewed. With key rotation the CSR carries the
// new key while TLS still proves the old one (RFC 7030 section 4.2.2).
type ESTIssuer struct {
	// URL is the EST server's base URL; Label selects a CA (optional).
	URL   string
	Label string
	// ServerRoots verify the EST server; nil means the system roots.
	ServerRoots *x509.CertPool
	// Transport, if set, builds the HTTP transport from the TLS config
	// (the agent applies its resolve and proxy settings there).
	Transport func(*tls.Config) http.RoundTripper
}

var _ Issuer = (*ESTIssuer)(nil)

// Name implements Issuer.
func (e *ESTIssuer) Name() string { return PathEST }

// Issue implements Issuer.
func (e *ESTIssuer) Issue(ctx context.Context, req IssueRequest) ([]*x509.Certificate, error) {
	if req.Current.Signer == nil || len(req.Current.Chain) == 0 {
		return nil, errors.New("EST re-enrollment authenticates with the current certificate, and there is none")
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	hc := est.NewHTTPClient(e.ServerRoots, req.Current.TLSCertificate())
	if e.Transport != nil {
		tr := hc.Transport.(*http.Transport)
		hc.Transport = e.Transport(tr.TLSClientConfig)
	}
	// Each attempt authenticates with the credential of the moment, so the
	// client is not reused; close its idle connection rather than keep one
	// open per renewal attempt.
	defer hc.CloseIdleConnections()
	c := &est.Client{URL: e.URL, Label: e.Label, HTTP: hc}
	return c.Reenroll(ctx, csr)
}

// HubIssuer renews an operational certificate through the IoT Hub
// credentials topic (preview, hub api-version 2025-08-01-preview; wire
// forms in docs/dps.md): it connects with the current operational
// credential, posts the CSR to issueCertificate and waits for the chain.
// It needs a current credential that the hub still accepts; when that is
// gone (revoked, expired) DPSIssuer is the way back.
type HubIssuer struct {
	// Config names the hub (Host, DeviceID) and the network; Credential
	// and CertificateRenewal are set per request.
	Config dps.HubConfig
}

var _ Issuer = (*HubIssuer)(nil)

// Name implements Issuer.
func (h *HubIssuer) Name() string { return PathHub }

// Issue implements Issuer.
func (h *HubIssuer) Issue(ctx context.Context, req IssueRequest) ([]*x509.Certificate, error) {
	if req.Current.Signer == nil || len(req.Current.Chain) == 0 {
		return nil, errors.New("hub certificate renewal authenticates with the current operational certificate, and there is none")
	}
	cfg := h.Config
	cfg.Credential = dps.Credential{Signer: req.Current.Signer, Chain: req.Current.Chain}
	cfg.CertificateRenewal = true
	hub, err := dps.ConnectHub(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer hub.Close()
	return hub.RequestCertificate(ctx, req.CSR)
}

// IssuerFunc adapts a function to Issuer, for paths the agent composes
// itself.
type IssuerFunc struct {
	Path string
	Fn   func(ctx context.Context, req IssueRequest) ([]*x509.Certificate, error)
}

// Name implements Issuer.
func (f IssuerFunc) Name() string { return f.Path }

// Issue implements Issuer.
func (f IssuerFunc) Issue(ctx context.Context, req IssueRequest) ([]*x509.Certificate, error) {
	return f.Fn(ctx, req)
}
