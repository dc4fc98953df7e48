// Package est is the simulator's EST (RFC 7030) server: the subset
// /cacerts, /simpleenroll and /simplereenroll under /.well-known/est/,
// with base64 PKCS#10 requests and base64 certs-only PKCS#7 replies.
//
// Use:
//
//	h, err := est.New(est.Config{Issuer: cert, Key: key, CACerts: []*x509.Certificate{cert, root}})
//	srv := &http.Server{Handler: h, TLSConfig: &tls.Config{
//		Certificates: []tls.Certificate{serverCert},
//		ClientCAs:    stationCAs, // who may enroll
//		ClientAuth:   tls.VerifyClientCertIfGiven,
//	}}
//
// TLS client authentication is the server's job: the handler refuses
// /simpleenroll from a client that presented no verified certificate, and
// /simplereenroll unless the client certificate's subject equals the
// CSR's (RFC 7030 section 4.2.2). /cacerts is open. The package imports
// nothing of devid's, so it checks the enroll/est client independently.
package est

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.mozilla.org/pkcs7"
)

// Config is the EST server's CA.
type Config struct {
	// Issuer signs leaves with Key.
	Issuer *x509.Certificate
	Key    crypto.Signer
	// CACerts is what /cacerts returns (issuer first, then up to the root).
	CACerts []*x509.Certificate
	// Validity of issued leaves; 0 means 30 days.
	Validity time.Duration
	// Authorize, if set, may refuse an enrollment (HTTP 403 with its error).
	Authorize func(r *http.Request, csr *x509.CertificateRequest) error
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// maxBody bounds an enrollment request: a base64 CSR is a few KiB.
const maxBody = 64 << 10

// Server is the EST handler. Issued records every leaf it signed.
type Server struct {
	cfg Config
	mu  sync.Mutex
	log []*x509.Certificate
}

// New returns the EST handler for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Issuer == nil || cfg.Key == nil {
		return nil, errors.New("est: Config needs Issuer and Key")
	}
	if len(cfg.CACerts) == 0 {
		cfg.CACerts = []*x509.Certificate{cfg.Issuer}
	}
	if cfg.Validity <= 0 {
		cfg.Validity = 30 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg}, nil
}

// Issued returns the leaves signed so far.
func (s *Server) Issued() []*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*x509.Certificate(nil), s.log...)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/.well-known/est/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	// An optional CA label segment is accepted and ignored: one CA here.
	op := rest[strings.LastIndex(rest, "/")+1:]
	switch op {
	case "cacerts":
		if r.Method != http.MethodGet {
			http.Error(w, "use GET", http.StatusMethodNotAllowed)
			return
		}
		s.reply(w, s.cfg.CACerts)
	case "simpleenroll", "simplereenroll":
		if r.Method != http.MethodPost {
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		s.enroll(w, r, op == "simplereenroll")
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) enroll(w http.ResponseWriter, r *http.Request, re bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.VerifiedChains) == 0 {
		http.Error(w, "a verified TLS client certificate is required", http.StatusUnauthorized)
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/pkcs10") {
		http.Error(w, fmt.Sprintf("Content-Type %q, want application/pkcs10", ct), http.StatusUnsupportedMediaType)
		return
	}
	// A body over the limit is refused whole, never cut and then parsed.
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if len(b) > maxBody {
		http.Error(w, fmt.Sprintf("request body over %d KiB", maxBody>>10), http.StatusRequestEntityTooLarge)
		return
	}
	der, err := base64.StdEncoding.DecodeString(strings.Map(func(c rune) rune {
		if c == '\r' || c == '\n' || c == ' ' {
			return -1
		}
		return c
	}, string(b)))
	if err != nil {
		http.Error(w, "body is not base64: "+err.Error(), http.StatusBadRequest)
		return
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		http.Error(w, "body is not a PKCS#10 CSR: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := csr.CheckSignature(); err != nil {
		http.Error(w, "CSR signature: "+err.Error(), http.StatusBadRequest)
		return
	}
	if re {
		if peer := r.TLS.PeerCertificates[0]; string(peer.RawSubject) != string(csr.RawSubject) {
			http.Error(w, "simplereenroll: CSR subject differs from the client certificate's", http.StatusForbidden)
			return
		}
	}
	if s.cfg.Authorize != nil {
		if err := s.cfg.Authorize(r, csr); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	now := s.cfg.Now()
	notAfter := now.Add(s.cfg.Validity)
	if notAfter.After(s.cfg.Issuer.NotAfter) {
		notAfter = s.cfg.Issuer.NotAfter
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: sn.Add(sn, big.NewInt(1)),
		Subject:      csr.Subject,
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, s.cfg.Issuer, csr.PublicKey, s.cfg.Key)
	if err != nil {
		http.Error(w, "sign: "+err.Error(), http.StatusInternalServerError)
		return
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	s.mu.Lock()
	s.log = append(s.log, leaf)
	s.mu.Unlock()
	s.reply(w, []*x509.Certificate{leaf})
}

// reply writes a base64 certs-only PKCS#7 (RFC 7030 sections 4.1.3, 4.2.3).
func (s *Server) reply(w http.ResponseWriter, certs []*x509.Certificate) {
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	p7, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		http.Error(w, "encode PKCS#7: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	enc := base64.StdEncoding.EncodeToString(p7)
	// 64-character lines, as RFC 7030 servers commonly send.
	for len(enc) > 64 {
		io.WriteString(w, enc[:64]+"\r\n")
		enc = enc[64:]
	}
	io.WriteString(w, enc+"\r\n")
}
