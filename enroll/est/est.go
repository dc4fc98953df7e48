// Package est is a client for the RFC 7030 (Enrollment over Secure
// Transport) subset that enterprise CAs serve to a factory station:
// /cacerts, /simpleenroll and /simplereenroll, with base64 PKCS#10
// requests and base64 certs-only PKCS#7 replies.
//
// The station authenticates with its own TLS client certificate, and the
// server certificate is always verified (NewHTTPClient). A Client is a
// jig.Issuer (enroll/station/jig), so `devid-jig program --est URL` signs
// through it.
// (github.com/globalsign/est cannot be built beside go-tpm v0.9, hence
// this small implementation.)
package est

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.mozilla.org/pkcs7"
)

// maxBody bounds a reply; a certs-only PKCS#7 with a chain is a few KB.
const maxBody = 1 << 20

// Sentinel errors callers branch on.
var (
	// ErrRefused: the server answered with an HTTP error.
	ErrRefused = errors.New("EST server refused the request")
	// ErrBadReply: the reply is not a usable certs-only PKCS#7.
	ErrBadReply = errors.New("malformed EST reply")
)

// PendingError is a 202 reply: the request awaits manual approval and
// should be repeated after RetryAfter (RFC 7030 section 4.2.3).
type PendingError struct{ RetryAfter time.Duration }

func (e *PendingError) Error() string {
	return fmt.Sprintf("EST enrollment pending approval; retry after %v", e.RetryAfter)
}

// Client talks to one EST server.
type Client struct {
	// URL is the server's base, e.g. "https://est.example.com:8443"; the
	// well-known path /.well-known/est[/Label] is appended.
	URL string
	// Label selects one of several CAs on the server (optional).
	Label string
	// HTTP must carry the station's client certificate and the roots that
	// verify the server (see NewHTTPClient).
	HTTP *http.Client
}

// NewHTTPClient returns an HTTP client that verifies the server against
// serverRoots and presents clientCert. TLS 1.2 is the floor.
func NewHTTPClient(serverRoots *x509.CertPool, clientCert tls.Certificate) *http.Client {
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{
				RootCAs:      serverRoots,
				Certificates: []tls.Certificate{clientCert},
				MinVersion:   tls.VersionTLS12,
			},
			ForceAttemptHTTP2: true,
		},
	}
}

func (c *Client) endpoint(op string) string {
	u := strings.TrimRight(c.URL, "/") + "/.well-known/est"
	if c.Label != "" {
		u += "/" + c.Label
	}
	return u + "/" + op
}

// CACerts fetches /cacerts: the CA certificates the server issues under.
func (c *Client) CACerts(ctx context.Context) ([]*x509.Certificate, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint("cacerts"), nil)
	if err != nil {
		return nil, err
	}
	return c.roundTrip(req, "cacerts")
}

// Enroll posts a CSR to /simpleenroll and returns the chain, leaf first,
// completed with intermediates from /cacerts (without the root).
func (c *Client) Enroll(ctx context.Context, csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return c.enroll(ctx, "simpleenroll", csr)
}

// Reenroll posts to /simplereenroll; the HTTP client must present the
// certificate being renewed (RFC 7030 section 4.2.2).
func (c *Client) Reenroll(ctx context.Context, csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return c.enroll(ctx, "simplereenroll", csr)
}

// Issue is Enroll; it makes Client a jig.Issuer.
func (c *Client) Issue(ctx context.Context, csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return c.Enroll(ctx, csr)
}

func (c *Client) enroll(ctx context.Context, op string, csr *x509.CertificateRequest) ([]*x509.Certificate, error) {
	body := base64.StdEncoding.EncodeToString(csr.Raw)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint(op), strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Content-Transfer-Encoding", "base64")
	certs, err := c.roundTrip(req, op)
	if err != nil {
		return nil, err
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	var leaf *x509.Certificate
	for _, cert := range certs {
		if k, ok := cert.PublicKey.(equaler); ok && k.Equal(csr.PublicKey) {
			leaf = cert
		}
	}
	if leaf == nil {
		return nil, fmt.Errorf("%w: %s: no certificate for the CSR's key among %d returned", ErrBadReply, op, len(certs))
	}
	cas, err := c.CACerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("complete chain: %w", err)
	}
	return BuildChain(leaf, append(certs, cas...)), nil
}

// BuildChain orders leaf and the intermediates from pool that lead from it
// towards a root, leaf first, stopping before a self-signed certificate.
func BuildChain(leaf *x509.Certificate, pool []*x509.Certificate) []*x509.Certificate {
	chain := []*x509.Certificate{leaf}
	for cur := leaf; len(chain) < 8; {
		var next *x509.Certificate
		for _, c := range pool {
			if c.IsCA && bytes.Equal(c.RawSubject, cur.RawIssuer) && cur.CheckSignatureFrom(c) == nil {
				next = c
				break
			}
		}
		if next == nil || bytes.Equal(next.RawSubject, next.RawIssuer) {
			break
		}
		chain = append(chain, next)
		cur = next
	}
	return chain
}

func (c *Client) roundTrip(req *http.Request, op string) ([]*x509.Certificate, error) {
	if c.HTTP == nil {
		return nil, errors.New("EST client has no HTTP client (NewHTTPClient)")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("EST %s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("EST %s: read reply: %w", op, err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("%w: %s reply larger than %d bytes", ErrBadReply, op, maxBody)
	}
	switch {
	case resp.StatusCode == http.StatusAccepted:
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return nil, &PendingError{RetryAfter: time.Duration(max(secs, 1)) * time.Second}
	case resp.StatusCode != http.StatusOK:
		msg := strings.TrimSpace(string(b))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return nil, fmt.Errorf("%w: %s: HTTP %d: %s", ErrRefused, op, resp.StatusCode, msg)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/pkcs7-mime" {
		return nil, fmt.Errorf("%w: %s: Content-Type %q, want application/pkcs7-mime", ErrBadReply, op, resp.Header.Get("Content-Type"))
	}
	return ParseCertsOnly(b)
}

var pkcs7Mu sync.Mutex

// ParseCertsOnly decodes a base64 certs-only PKCS#7 (line breaks allowed).
func ParseCertsOnly(b []byte) (certs []*x509.Certificate, err error) {
	// go.mozilla.org/pkcs7's BER reader panics on some truncated input
	// (found by FuzzParseCertsOnly): a reply from the network must not
	// crash the jig, so turn that into an error.
	defer func() {
		if r := recover(); r != nil {
			certs, err = nil, fmt.Errorf("%w: PKCS#7: %v", ErrBadReply, r)
		}
	}()
	clean := bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, b)
	der, err := base64.StdEncoding.DecodeString(string(clean))
	if err != nil {
		return nil, fmt.Errorf("%w: not base64: %v", ErrBadReply, err)
	}
	// pkcs7's BER converter bumps an unguarded package-level counter, so
	// concurrent Parse calls race (seen with -race): serialise them.
	p7, err := func() (*pkcs7.PKCS7, error) {
		pkcs7Mu.Lock()
		defer pkcs7Mu.Unlock() // also when Parse panics
		return pkcs7.Parse(der)
	}()
	if err != nil {
		return nil, fmt.Errorf("%w: PKCS#7: %v", ErrBadReply, err)
	}
	if len(p7.Certificates) == 0 {
		return nil, fmt.Errorf("%w: PKCS#7 carries no certificate", ErrBadReply)
	}
	return p7.Certificates, nil
}
