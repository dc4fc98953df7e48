package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/internal/pkitest"
	"devid/enroll/station/ca"
	"devid/enroll/station/ca/pgtest"
	"devid/hal/serial/serialtest"
	simest "devid/simulator/est"
)

// estFixture is the simulator's EST server over TLS and the station's
// files to reach it.
type estFixture struct {
	url, certFile, keyFile, rootFile string
	ca                               *pkitest.CA
	sim                              *simest.Server
}

func newESTFixture(t *testing.T) *estFixture {
	t.Helper()
	dir := t.TempDir()
	estCA, stations := pkitest.NewCA("est"), pkitest.NewCA("stations")
	sim, err := simest.New(simest.Config{Issuer: estCA.Issuer, Key: estCA.IssuerKey, CACerts: []*x509.Certificate{estCA.Issuer, estCA.Root}})
	if err != nil {
		t.Fatal(err)
	}
	sk := pkitest.Key()
	srv := httptest.NewUnstartedServer(sim)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{estCA.ServerCert(sk.Public()).Raw, estCA.Issuer.Raw}, PrivateKey: sk}},
		ClientCAs:    stations.Pool(), ClientAuth: tls.RequireAndVerifyClientCert,
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	write := func(name string, blocks ...*pem.Block) string {
		var b []byte
		for _, blk := range blocks {
			b = append(b, pem.EncodeToMemory(blk)...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ck := pkitest.Key()
	ckDER, _ := x509.MarshalPKCS8PrivateKey(ck)
	certFile := write("station.pem", &pem.Block{Type: "CERTIFICATE", Bytes: stations.Leaf(ck.Public(), "station-1", nil).Raw},
		&pem.Block{Type: "CERTIFICATE", Bytes: stations.Issuer.Raw})
	keyFile := write("station.key", &pem.Block{Type: "PRIVATE KEY", Bytes: ckDER})
	rootFile := write("est-root.pem", &pem.Block{Type: "CERTIFICATE", Bytes: estCA.Root.Raw})
	return &estFixture{url: srv.URL, certFile: certFile, keyFile: keyFile, rootFile: rootFile, ca: estCA, sim: sim}
}

// TestProgramESTLedger: `devid-jig program --est URL --ledger URL` records
// each EST issuance in the shared PostgreSQL ledger, and refuses a board
// whose device ID the ledger binds to another key before the EST server
// is asked.
func TestProgramESTLedger(t *testing.T) {
	f := newESTFixture(t)
	estCA, sim, srv, certFile, keyFile, rootFile := f.ca, f.sim, struct{ URL string }{f.url}, f.certFile, f.keyFile, f.rootFile
	url := pgtest.Start(t).NewDatabase(t)

	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		code := Main(ctx, Build{}, append([]string{"program", "--station", "est-st", "--est", srv.URL, "--est-cert", certFile,
			"--est-key", keyFile, "--est-ca", rootFile}, args...), &out, &errOut)
		return out.String(), errOut.String(), code
	}
	var obj struct {
		OK            bool
		Serial, Error string
	}
	link := serialtest.NewLink(t)
	serveBoardRoots(t, link.DeviceTTY, "est-board-1", estCA.Pool(), nil)
	out, errOut, code := run("--port", link.JigTTY, "--ledger", url, "--json")
	if code != 0 || json.Unmarshal([]byte(out), &obj) != nil || !obj.OK {
		t.Fatalf("program --est --ledger: exit %d\n%s%s", code, out, errOut)
	}
	l, err := ca.OpenLedger(context.Background(), url, estCA.Issuer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rec, err := l.IssuedSerial(context.Background(), obj.Serial)
	if err != nil || rec.DeviceID != "est-board-1" || rec.Station != "est-st" || rec.Status != ca.StatusIssued {
		t.Fatalf("ledger record of serial %s: %+v, %v", obj.Serial, rec, err)
	}

	// Another board (another key) with the same device ID: refused by
	// the ledger, the EST server not asked.
	asked := len(sim.Issued())
	link = serialtest.NewLink(t)
	serveBoardRoots(t, link.DeviceTTY, "est-board-1", estCA.Pool(), nil)
	out, errOut, code = run("--port", link.JigTTY, "--ledger", url)
	if code != 1 || !strings.Contains(out, "FAIL sign: "+ca.ErrIDTaken.Error()) || len(sim.Issued()) != asked {
		t.Fatalf("same ID, other key: exit %d, EST issued %d (was %d)\n%s%s", code, len(sim.Issued()), asked, out, errOut)
	}
	// Without --ledger the EST path keeps no ledger, as before.
	link = serialtest.NewLink(t)
	serveBoardRoots(t, link.DeviceTTY, "est-board-1", estCA.Pool(), nil)
	if out, errOut, code = run("--port", link.JigTTY); code != 0 {
		t.Fatalf("program --est without a ledger: exit %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code = run("--port", link.JigTTY, "--ledger", "file"); code != 2 || !strings.Contains(errOut, "postgres://") {
		t.Fatalf("--est --ledger file: exit %d %q", code, errOut)
	}
}

// TestLedgerPendingIssuer: `ledger pending --issuer FILE --ledger URL`
// lists the placeholder of an EST issuance whose answer was never
// recorded, without a CA directory.
func TestLedgerPendingIssuer(t *testing.T) {
	estCA := pkitest.NewCA("est")
	url := pgtest.Start(t).NewDatabase(t)
	issFile := filepath.Join(t.TempDir(), "issuing.pem")
	if err := os.WriteFile(issFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: estCA.Issuer.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		code := Main(context.Background(), Build{}, append([]string{"ledger", "pending"}, args...), &out, &errOut)
		return out.String(), errOut.String(), code
	}
	if out, errOut, code := run("--issuer", issFile, "--ledger", url); code != 0 || !strings.Contains(out, "no pending") {
		t.Fatalf("empty ledger: exit %d %q %q", code, out, errOut)
	}
	l, err := ca.OpenLedger(context.Background(), url, estCA.Issuer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// The station stops while the EST server answers: sign never returns
	// to record the leaf (the context ends inside it).
	ctx, cancel := context.WithCancel(context.Background())
	err = l.IssueExternal(ctx, ca.Record{Time: time.Now().UTC(), DeviceID: "est-crash-1", KeySHA256: strings.Repeat("ab", 32), Station: "est-st"},
		func() (*x509.Certificate, error) {
			cancel()
			return estCA.Leaf(pkitest.Key().Public(), "est-crash-1", nil), nil
		})
	if err == nil {
		t.Fatal("IssueExternal recorded the leaf after its context ended")
	}
	out, errOut, code := run("--issuer", issFile, "--ledger", url)
	if code != 1 || !strings.Contains(out, "device est-crash-1") || !strings.Contains(out, ca.ExternalPending) {
		t.Fatalf("pending after a lost EST answer: exit %d %q %q", code, out, errOut)
	}
	if _, errOut, code := run("--issuer", issFile); code != 2 || !strings.Contains(errOut, "--ledger") {
		t.Fatalf("--issuer without --ledger: exit %d %q", code, errOut)
	}
}

// TestStationEST: a station whose station.toml names an EST server signs
// through it and records every board in the shared PostgreSQL ledger.
func TestStationEST(t *testing.T) {
	f := newESTFixture(t)
	url := pgtest.Start(t).NewDatabase(t)
	dir := t.TempDir()
	byID := filepath.Join(dir, "serial", "by-id")
	if err := os.MkdirAll(byID, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		link := serialtest.NewLink(t)
		serveBoardRoots(t, link.DeviceTTY, fmt.Sprintf("est-st-%d", i), f.ca.Pool(), nil)
		if err := os.Symlink(link.JigTTY, filepath.Join(byID, fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(dir, "station.toml")
	write := func(ledger string) {
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(`station = "est-line"
est_url = %q
est_cert = %q
est_key = %q
est_ca = %q
ledger = %q
serial_dir = "serial"
watch = "poll"
scan_interval = "50ms"
[[slot]]
port = "by-id/1"
[[slot]]
port = "by-id/2"
`, f.url, f.certFile, f.keyFile, f.rootFile, ledger)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	write("")
	if code := Main(ctx, Build{}, []string{"station", "--config", conf, "--boards", "2"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "est_url needs ledger") {
		t.Fatalf("EST station without a ledger: exit %d %s", code, stderr.String())
	}
	write(url)
	stdout.Reset()
	stderr.Reset()
	if code := Main(ctx, Build{}, []string{"station", "--config", conf, "--boards", "2"}, &stdout, &stderr); code != 0 ||
		!strings.Contains(stdout.String(), "2 boards: 2 programmed") {
		t.Fatalf("EST station: exit %d %s\n%s", code, stderr.String(), stdout.String())
	}
	l, err := ca.OpenLedger(ctx, url, f.ca.Issuer, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 1; i <= 2; i++ {
		recs, err := l.Issued(ctx, fmt.Sprintf("est-st-%d", i))
		if err != nil || len(recs) != 1 || recs[0].Station != "est-line" || recs[0].Status != ca.StatusIssued || recs[0].Attestation != "not-offered" {
			t.Fatalf("ledger for est-st-%d: %+v, %v", i, recs, err)
		}
	}
	if len(f.sim.Issued()) != 2 {
		t.Fatalf("the EST server issued %d certificates, want 2", len(f.sim.Issued()))
	}
}
