package est_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"devid/enroll/csr"
	"devid/enroll/est"
	"devid/enroll/internal/pkitest"
	simest "devid/simulator/est"
)

type rig struct {
	srv      *httptest.Server
	ca       *pkitest.CA // issues devices and the server cert
	stations *pkitest.CA // issues station client certs
	sim      *simest.Server
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{ca: pkitest.NewCA("est"), stations: pkitest.NewCA("stations")}
	var err error
	r.sim, err = simest.New(simest.Config{Issuer: r.ca.Issuer, Key: r.ca.IssuerKey, CACerts: []*x509.Certificate{r.ca.Issuer, r.ca.Root}})
	if err != nil {
		t.Fatal(err)
	}
	sk := pkitest.Key()
	r.srv = httptest.NewUnstartedServer(r.sim)
	r.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{r.ca.ServerCert(sk.Public()).Raw, r.ca.Issuer.Raw}, PrivateKey: sk}},
		ClientCAs:    r.stations.Pool(),
		ClientAuth:   tls.VerifyClientCertIfGiven,
	}
	r.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some tests
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	return r
}

// client returns an EST client presenting a certificate from ca (nil: none).
func (r *rig) client(from *pkitest.CA, cn string, serverRoots *x509.CertPool) *est.Client {
	var cert tls.Certificate
	if from != nil {
		k := pkitest.Key()
		leaf := from.Leaf(k.Public(), cn, nil)
		cert = tls.Certificate{Certificate: [][]byte{leaf.Raw, from.Issuer.Raw}, PrivateKey: k, Leaf: leaf}
	}
	return &est.Client{URL: r.srv.URL, HTTP: est.NewHTTPClient(serverRoots, cert)}
}

func newCSR(t *testing.T, id string) *x509.CertificateRequest {
	der, err := csr.Create(pkitest.Key(), id)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := csr.Parse(der)
	return req
}

func TestEnroll(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	c := r.client(r.stations, "station-1", r.ca.Pool())
	ctx := context.Background()
	cas, err := c.CACerts(ctx)
	if err != nil || len(cas) != 2 {
		t.Fatalf("cacerts: %d, %v", len(cas), err)
	}
	req := newCSR(t, "dev-1")
	chain, err := c.Issue(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || chain[0].Subject.CommonName != "dev-1" || !chain[1].Equal(r.ca.Issuer) {
		t.Fatalf("chain: %d certs, leaf %v", len(chain), chain[0].Subject)
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: r.ca.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if len(r.sim.Issued()) != 1 {
		t.Fatal("server did not record the issuance")
	}
}

func TestEnrollRefusals(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	ctx := context.Background()
	req := newCSR(t, "dev-2")

	// No station certificate: the server refuses.
	if _, err := r.client(nil, "", r.ca.Pool()).Enroll(ctx, req); !errors.Is(err, est.ErrRefused) || !strings.Contains(err.Error(), "401") {
		t.Errorf("no client cert: %v", err)
	}
	// A server we do not trust: TLS fails (the client always verifies).
	if _, err := r.client(r.stations, "s", pkitest.NewCA("other").Pool()).CACerts(ctx); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted server: %v", err)
	}
	// simplereenroll must come from the certificate being renewed.
	if _, err := r.client(r.stations, "station-1", r.ca.Pool()).Reenroll(ctx, req); !errors.Is(err, est.ErrRefused) || !strings.Contains(err.Error(), "403") {
		t.Errorf("reenroll with another subject: %v", err)
	}
}

func TestReenrollWithDeviceCert(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	// The device renews with its current certificate (issued by the EST CA,
	// which the server trusts for client auth here).
	r.srv.TLS.ClientCAs.AddCert(r.ca.Root)
	k := pkitest.Key()
	leaf := r.ca.Leaf(k.Public(), "dev-3", nil)
	c := &est.Client{URL: r.srv.URL, HTTP: est.NewHTTPClient(r.ca.Pool(),
		tls.Certificate{Certificate: [][]byte{leaf.Raw, r.ca.Issuer.Raw}, PrivateKey: k})}
	chain, err := c.Reenroll(context.Background(), newCSR(t, "dev-3"))
	if err != nil || chain[0].Subject.CommonName != "dev-3" {
		t.Fatalf("reenroll: %v", err)
	}
}

func TestServerRejectsJunk(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	hc := r.client(r.stations, "s", r.ca.Pool()).HTTP
	for _, body := range []string{"!!!", "aGVsbG8="} {
		resp, err := hc.Post(r.srv.URL+"/.well-known/est/simpleenroll", "application/pkcs10", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %q: HTTP %d, want 400", body, resp.StatusCode)
		}
	}
}

func FuzzParseCertsOnly(f *testing.F) {
	f.Add([]byte("MIIB"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := est.ParseCertsOnly(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificates")
		}
	})
}
