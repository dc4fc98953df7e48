package ca_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/csr"
	"devid/enroll/est"
	"devid/enroll/internal/pkitest"
	"devid/enroll/station/ca"
	"devid/enroll/station/ca/pgtest"
	simest "devid/simulator/est"
)

// estRig is the simulator's EST server over real TLS with a station
// client certificate, the way `devid-jig program --est` reaches it.
type estRig struct {
	ca     *pkitest.CA
	sim    *simest.Server
	client *est.Client
}

func newESTRig(t *testing.T) *estRig {
	t.Helper()
	r := &estRig{ca: pkitest.NewCA("est")}
	stations := pkitest.NewCA("stations")
	var err error
	r.sim, err = simest.New(simest.Config{Issuer: r.ca.Issuer, Key: r.ca.IssuerKey, CACerts: []*x509.Certificate{r.ca.Issuer, r.ca.Root}})
	if err != nil {
		t.Fatal(err)
	}
	sk := pkitest.Key()
	srv := httptest.NewUnstartedServer(r.sim)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{r.ca.ServerCert(sk.Public()).Raw, r.ca.Issuer.Raw}, PrivateKey: sk}},
		ClientCAs:    stations.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ck := pkitest.Key()
	leaf := stations.Leaf(ck.Public(), "station-1", nil)
	r.client = &est.Client{URL: srv.URL, HTTP: est.NewHTTPClient(r.ca.Pool(),
		tls.Certificate{Certificate: [][]byte{leaf.Raw, stations.Issuer.Raw}, PrivateKey: ck, Leaf: leaf})}
	return r
}

// failingSigner refuses every request, as an EST server that is down.
type failingSigner struct{}

func (failingSigner) Issue(context.Context, *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return nil, errors.New("EST server down")
}

// blockingSigner lets the test look at the ledger while the EST request
// is in flight.
type blockingSigner struct {
	ca.ExternalSigner
	inFlight func()
}

func (b blockingSigner) Issue(ctx context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error) {
	b.inFlight()
	return b.ExternalSigner.Issue(ctx, req)
}

// testExternal runs the rules of an external (EST) issuance on ledger:
// pg says whether it reserves before the request (PostgreSQL).
func testExternal(t *testing.T, ledger ca.Ledger, pg bool) {
	testExternalWith(t, newESTRig(t), ledger, pg)
}

func testExternalWith(t *testing.T, r *estRig, ledger ca.Ledger, pg bool) {
	t.Helper()
	ctx := context.Background()
	rec := &ca.Recorded{Signer: r.client, Ledger: ledger, Issuer: r.ca.Issuer, Station: "est-st"}
	reqA, _ := newRequest("dev-e1")
	chain, err := rec.Issue(ctx, reqA)
	if err != nil {
		t.Fatal(err)
	}
	serial := hex.EncodeToString(chain[0].SerialNumber.Bytes())
	got, err := rec.IssuedSerial(serial)
	if err != nil || got == nil || got.DeviceID != "dev-e1" || got.Status != ca.StatusIssued || got.Station != "est-st" ||
		!got.NotAfter.Equal(chain[0].NotAfter.UTC()) {
		t.Fatalf("ledger record of the EST serial %s: %+v, %v", serial, got, err)
	}
	if recs, _ := rec.Issued("dev-e1"); len(recs) != 1 || recs[0].Serial != serial {
		t.Fatalf("Issued(dev-e1) = %+v, want the EST serial only (no placeholder)", recs)
	}
	// The same device ID with another key is refused before the EST
	// server is asked.
	asked := len(r.sim.Issued())
	reqB, _ := newRequest("dev-e1")
	if _, err := rec.Issue(ctx, reqB); !errors.Is(err, ca.ErrIDTaken) {
		t.Fatalf("dev-e1 with another key: %v, want ErrIDTaken", err)
	}
	if n := len(r.sim.Issued()); n != asked {
		t.Fatalf("the EST server was asked for a device bound to another key (%d issued, was %d)", n, asked)
	}
	// The same key again is a second certificate (a reprogrammed board).
	if _, err := rec.Issue(ctx, reqA); err != nil {
		t.Fatalf("dev-e1 again with its key: %v", err)
	}
	if revoked, err := rec.SerialRevoked(serial); err != nil || revoked {
		t.Fatalf("SerialRevoked(%s) = %v, %v", serial, revoked, err)
	}
	if _, err := ledger.Revoke(ctx, "dev-e1", "est-st", "rma", rec.Issuer.NotBefore); err != nil {
		t.Fatal(err)
	}
	if revoked, err := rec.SerialRevoked(serial); err != nil || !revoked {
		t.Fatalf("SerialRevoked(%s) after revoke = %v, %v", serial, revoked, err)
	}
	// Now revoked, the device ID may take the other key.
	if _, err := rec.Issue(ctx, reqB); err != nil {
		t.Fatalf("dev-e1 with a new key after revocation: %v", err)
	}

	// While the EST request is in flight the issuance is visible.
	reqC, _ := newRequest("dev-e2")
	var during []ca.Record
	bs := blockingSigner{ExternalSigner: r.client, inFlight: func() {
		during, err = ledger.Pending(ctx)
		if err != nil {
			t.Error(err)
		}
	}}
	if _, err := (&ca.Recorded{Signer: bs, Ledger: ledger, Issuer: r.ca.Issuer, Station: "est-st"}).Issue(ctx, reqC); err != nil {
		t.Fatal(err)
	}
	if pg && (len(during) != 1 || during[0].DeviceID != "dev-e2" || during[0].Reason != ca.ExternalPending) {
		t.Fatalf("pending while the EST server answers: %+v, want dev-e2's placeholder", during)
	}
	if after, _ := ledger.Pending(ctx); len(after) != 0 {
		t.Fatalf("pending after the answer was recorded: %+v", after)
	}
	// A failed request leaves no live row, nor a pending one.
	reqD, _ := newRequest("dev-e3")
	if _, err := (&ca.Recorded{Signer: failingSigner{}, Ledger: ledger, Issuer: r.ca.Issuer}).Issue(ctx, reqD); err == nil || !strings.Contains(err.Error(), "down") {
		t.Fatalf("failing EST server: %v", err)
	}
	if recs, _ := ledger.Issued(ctx, "dev-e3"); len(recs) != 0 {
		t.Fatalf("records after a failed EST request: %+v", recs)
	}
	if after, _ := ledger.Pending(ctx); len(after) != 0 {
		t.Fatalf("pending after a failed EST request: %+v", after)
	}
	// A leaf under another issuing CA than the ledger's is not released.
	other := pkitest.NewCA("other")
	reqE, _ := newRequest("dev-e4")
	if _, err := (&ca.Recorded{Signer: r.client, Ledger: ledger, Issuer: other.Issuer}).Issue(ctx, reqE); err == nil ||
		!strings.Contains(err.Error(), "not the issuing CA the ledger is bound to") {
		t.Fatalf("leaf from another CA: %v", err)
	}
	if got, err := rec.IssuedSerial("0123456789abcdef"); got != nil || err != nil {
		t.Fatalf("unknown serial: %+v, %v", got, err)
	}
}

func TestExternalFile(t *testing.T) {
	t.Parallel()
	_, l := newCA(t)
	testExternal(t, ca.LedgerOf(l), false)
}

func TestExternalPG(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	r := newESTRig(t)
	l, err := ca.OpenLedger(context.Background(), url, r.ca.Issuer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	testExternalWith(t, r, l, true)
	if _, err := ca.OpenLedger(context.Background(), "file", r.ca.Issuer, 0); err == nil {
		t.Fatal("OpenLedger(file) without a CA directory succeeded")
	}
	// A database bound to one issuing CA refuses another.
	if l2, err := ca.OpenLedger(context.Background(), url, pkitest.NewCA("x").Issuer, 0); err == nil {
		l2.Close()
		t.Fatal("a ledger bound to one issuing CA opened for another")
	}
}

// TestIssuedSerial: the serial lookup of the station's web page, on the
// file ledger and on PostgreSQL.
func TestIssuedSerial(t *testing.T) {
	check := func(t *testing.T, l *ca.Local) {
		req := request(t, "dev-sn")
		chain, err := l.Issue(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		sn := chain[0].SerialNumber.Text(16)
		got, err := l.IssuedSerial(strings.ToUpper(sn))
		if err != nil || got == nil || got.DeviceID != "dev-sn" || got.Status != ca.StatusIssued {
			t.Fatalf("IssuedSerial(%s) = %+v, %v", sn, got, err)
		}
		if _, err := l.Revoke("dev-sn", "rma"); err != nil {
			t.Fatal(err)
		}
		if got, err := l.IssuedSerial(sn); err != nil || got == nil || got.Status != ca.StatusRevoked {
			t.Fatalf("IssuedSerial after revoke = %+v, %v", got, err)
		}
		if got, err := l.IssuedSerial("7f"); got != nil || err != nil {
			t.Fatalf("unknown serial: %+v, %v", got, err)
		}
		if _, err := l.IssuedSerial("xyz"); err == nil {
			t.Fatal("IssuedSerial(xyz) is not an error")
		}
	}
	t.Run("file", func(t *testing.T) { _, l := newCA(t); check(t, l) })
	t.Run("pg", func(t *testing.T) { _, _, l := pgCA(t, pgtest.Start(t)); check(t, l) })
}

// estKillChild records an external issuance whose signer (standing for
// the EST server) answers, prints "answered" and waits for SIGKILL: the
// station dies between the EST answer and the ledger record.
func estKillChild() int {
	fail := func(err error) int { fmt.Fprintln(os.Stderr, err); return 1 }
	certPEM, err := os.ReadFile(os.Getenv("ISSUER_CERT"))
	if err != nil {
		return fail(err)
	}
	keyPEM, err := os.ReadFile(os.Getenv("ISSUER_KEY"))
	if err != nil {
		return fail(err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return fail(errors.New("issuer PEM files"))
	}
	iss, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fail(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return fail(err)
	}
	l, err := ca.OpenLedger(context.Background(), os.Getenv("LEDGER"), iss, 0)
	if err != nil {
		return fail(err)
	}
	b, err := os.ReadFile(os.Getenv("CSR_FILE"))
	if err != nil {
		return fail(err)
	}
	req, err := csr.Parse(b)
	if err != nil {
		return fail(err)
	}
	signer := answerThenHang{ca: &pkitest.CA{Issuer: iss, IssuerKey: key.(*ecdsa.PrivateKey)}}
	_, err = (&ca.Recorded{Signer: signer, Ledger: l, Issuer: iss, Station: "est-victim"}).Issue(context.Background(), req)
	fmt.Fprintln(os.Stderr, "not killed:", err)
	return 1
}

type answerThenHang struct{ ca *pkitest.CA }

func (a answerThenHang) Issue(_ context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error) {
	a.ca.Leaf(req.PublicKey, req.Subject.CommonName, nil)
	fmt.Println("answered")
	select {} // SIGKILL arrives here
}

// TestExternalKill: a station killed (SIGKILL) between the EST answer and
// the ledger record leaves the placeholder reserved, which Pending
// reports; the board's rerun with the same key is recorded, another key
// is refused until the device is revoked.
func TestExternalKill(t *testing.T) {
	url := pgtest.Start(t).NewDatabase(t)
	estCA := pkitest.NewCA("est")
	tmp := t.TempDir()
	keyDER, _ := x509.MarshalPKCS8PrivateKey(estCA.IssuerKey)
	files := map[string][]byte{
		"iss.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: estCA.Issuer.Raw}),
		"iss.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	k := pkitest.Key()
	der, _ := csr.Create(k, "est-victim-1")
	files["csr.der"] = der
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=estkill", "LEDGER="+url, "ISSUER_CERT="+filepath.Join(tmp, "iss.pem"),
		"ISSUER_KEY="+filepath.Join(tmp, "iss.key"), "CSR_FILE="+filepath.Join(tmp, "csr.der"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	cmd.Process.Kill() // SIGKILL
	cmd.Wait()
	if line != "answered\n" {
		t.Fatalf("estkill child: %q %v\n%s", line, err, stderr.String())
	}
	l, err := ca.OpenLedger(context.Background(), url, estCA.Issuer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	pend, err := l.Pending(ctx)
	if err != nil || len(pend) != 1 || pend[0].DeviceID != "est-victim-1" || pend[0].Station != "est-victim" ||
		pend[0].Reason != ca.ExternalPending || pend[0].Status != ca.StatusReserved {
		t.Fatalf("pending after the kill: %+v, %v", pend, err)
	}
	sign := func(req *x509.CertificateRequest) ([]*x509.Certificate, error) {
		return []*x509.Certificate{estCA.Leaf(req.PublicKey, req.Subject.CommonName, nil)}, nil
	}
	rec := &ca.Recorded{Signer: signerFunc(sign), Ledger: l, Issuer: estCA.Issuer, Station: "est-2"}
	req, _ := csr.Parse(der)
	if _, err := rec.Issue(ctx, req); err != nil {
		t.Fatalf("rerun with the same key after the kill: %v", err)
	}
	other, _ := newRequest("est-victim-1")
	if _, err := rec.Issue(ctx, other); !errors.Is(err, ca.ErrIDTaken) {
		t.Fatalf("another key while the placeholder is reserved: %v", err)
	}
	if _, err := l.Revoke(ctx, "est-victim-1", "est-2", "station crashed", time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	if pend, _ := l.Pending(ctx); len(pend) != 0 {
		t.Fatalf("pending after revoking the device: %+v", pend)
	}
	if _, err := rec.Issue(ctx, other); err != nil {
		t.Fatalf("another key after revocation: %v", err)
	}
}

type signerFunc func(*x509.CertificateRequest) ([]*x509.Certificate, error)

func (f signerFunc) Issue(_ context.Context, req *x509.CertificateRequest) ([]*x509.Certificate, error) {
	return f(req)
}
