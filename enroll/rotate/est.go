package rotate

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"

	"devid/enroll/est"
)

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
