package ca_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/csr"
	"devid/enroll/internal/pkitest"
	"devid/enroll/station/ca"
)

func newCA(t *testing.T) (string, *ca.Local) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	l, err := ca.Open(dir, "st-1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return dir, l
}

func request(t *testing.T, id string) *x509.CertificateRequest {
	t.Helper()
	der, err := csr.Create(pkitest.Key(), id)
	if err != nil {
		t.Fatal(err)
	}
	r, err := csr.Parse(der)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestInitLayout(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	for name, mode := range map[string]os.FileMode{
		ca.RootKeyFile: 0o600, ca.IssuingKeyFile: 0o600, ca.RootCertFile: 0o644, ca.IssuingCertFile: 0o644, ca.LedgerFile: 0o600,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, %v; want %v", name, fi.Mode().Perm(), err, mode)
		}
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("CA dir mode %v", di.Mode().Perm())
	}
	if err := ca.Init(dir, ca.InitOptions{}); !errors.Is(err, ca.ErrExists) {
		t.Fatalf("second init: %v", err)
	}
	if !l.Root().IsCA || l.Chain()[0].CheckSignatureFrom(l.Root()) != nil {
		t.Fatal("issuing CA not signed by root")
	}
}

func TestIssueRecordsFirst(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	req := request(t, "dev-1")
	chain, err := l.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	roots := x509.NewCertPool()
	roots.AddCert(l.Root())
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "dev-1" || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("leaf %v %v", leaf.Subject, leaf.KeyUsage)
	}
	// The ledger line is on disk by the time Issue returned.
	b, _ := os.ReadFile(filepath.Join(dir, ca.LedgerFile))
	var r ca.Record
	if err := json.Unmarshal([]byte(strings.TrimSpace(string(b))), &r); err != nil {
		t.Fatal(err)
	}
	fp, _ := csr.KeyFingerprint(req.PublicKey)
	if r.Op != ca.OpIssue || r.DeviceID != "dev-1" || r.KeySHA256 != fp || r.Station != "st-1" || r.V != ca.LedgerVersion ||
		!strings.EqualFold(strings.TrimLeft(r.Serial, "0"), leaf.SerialNumber.Text(16)) { // the ledger keeps leading zeros

		t.Fatalf("ledger record %+v", r)
	}
	// Same key again: fine. Another key for the same ID: refused until revoked.
	if _, err := l.Issue(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Issue(context.Background(), request(t, "dev-1")); !errors.Is(err, ca.ErrIDTaken) {
		t.Fatalf("other key: %v, want ErrIDTaken", err)
	}
	serials, err := l.Revoke("dev-1", "rework")
	if err != nil || len(serials) != 2 {
		t.Fatalf("revoke: %v %v", serials, err)
	}
	if _, err := l.Revoke("dev-1", "again"); !errors.Is(err, ca.ErrNotIssued) {
		t.Fatalf("second revoke: %v", err)
	}
	crlPEM, err := os.ReadFile(filepath.Join(dir, ca.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(crlPEM)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil || crl.CheckSignatureFrom(chain[1]) != nil || len(crl.RevokedCertificateEntries) != 2 {
		t.Fatalf("CRL: %v, %d entries", err, len(crl.RevokedCertificateEntries))
	}
	if _, err := l.Issue(context.Background(), request(t, "dev-1")); err != nil {
		t.Fatalf("new key after revocation: %v", err)
	}
}

func TestPolicy(t *testing.T) {
	t.Parallel()
	dir, _ := newCA(t)
	p := filepath.Join(dir, ca.PolicyFile)
	os.WriteFile(p, []byte("validity = \"24h\"\nbackdate = \"0s\"\nallowed_id = 'line7-[0-9]+'\ncrl_validity = \"1h\"\n"), 0o644)
	l, err := ca.Open(dir, "st")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Issue(context.Background(), request(t, "line8-1")); !errors.Is(err, ca.ErrPolicy) {
		t.Fatalf("ID outside allowed_id: %v", err)
	}
	chain, err := l.Issue(context.Background(), request(t, "line7-1"))
	if err != nil {
		t.Fatal(err)
	}
	if d := chain[0].NotAfter.Sub(chain[0].NotBefore); d != 24*60*60*1e9 {
		t.Fatalf("validity %v, want 24h", d)
	}
	for _, bad := range []string{
		"validity = \"forever\"\nbackdate = \"0s\"\nallowed_id = 'x'\ncrl_validity = \"1h\"\n",
		"validity = \"24h\"\nbackdate = \"0s\"\nallowed_id = '('\ncrl_validity = \"1h\"\n",
		"validity = \"24h\"\nbackdate = \"0s\"\nallowed_id = 'x'\ncrl_validity = \"1h\"\ntypo = 1\n",
	} {
		os.WriteFile(p, []byte(bad), 0o644)
		if _, err := ca.Open(dir, "st"); err == nil || !strings.Contains(err.Error(), "policy") {
			t.Errorf("bad policy %q: %v", bad, err)
		}
	}
}

func TestLedgerTornTailAndCorruption(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	if _, err := l.Issue(context.Background(), request(t, "a")); err != nil {
		t.Fatal(err)
	}
	l.Close()
	ledger := filepath.Join(dir, ca.LedgerFile)
	good, _ := os.ReadFile(ledger)

	// A crash mid-append leaves a line without its newline.
	os.WriteFile(ledger, append(append([]byte(nil), good...), `{"v":1,"op":"issue","ser`...), 0o600)
	l2, err := ca.Open(dir, "st")
	if err != nil {
		t.Fatalf("open with torn tail: %v", err)
	}
	if b, _ := os.ReadFile(ledger); string(b) != string(good) {
		t.Fatalf("torn tail not cut: %q", b)
	}
	if torn, err := os.ReadFile(ledger + ".torn"); err != nil || !strings.Contains(string(torn), "ser") {
		t.Fatalf("torn tail not kept for forensics: %q %v", torn, err)
	}
	if recs, _ := l2.Issued("a"); len(recs) != 1 {
		t.Fatalf("records %+v", recs)
	}
	// The ID stays bound to its key after reopening.
	if _, err := l2.Issue(context.Background(), request(t, "a")); !errors.Is(err, ca.ErrIDTaken) {
		t.Fatalf("after reopen: %v", err)
	}
	l2.Close()

	// Damage before the last line is not a torn write: refuse to run.
	os.WriteFile(ledger, append([]byte("garbage\n"), good...), 0o600)
	if _, err := ca.Open(dir, "st"); !errors.Is(err, ca.ErrLedgerCorrupt) || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("corrupt ledger: %v", err)
	}
}

func TestOpenRefusesLooseKey(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	l.Close()
	os.Chmod(filepath.Join(dir, ca.IssuingKeyFile), 0o644)
	if _, err := ca.Open(dir, "st"); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable CA key accepted: %v", err)
	}
}

// FuzzLedger opens a CA whose ledger holds arbitrary bytes: it must either
// refuse with an error or come up with a ledger that ends on a record
// boundary (a torn tail cut off), never panic.
func FuzzLedger(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "ca")
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		f.Fatal(err)
	}
	good := `{"v":1,"op":"issue","time":"2026-01-01T00:00:00Z","serial":"0a","device_id":"d","key_sha256":"00"}` + "\n"
	f.Add([]byte(good))
	f.Add([]byte(good + `{"v":1,"op":"revoke","time":"2026-01-01T00:00:00Z","serial":"0a","device_id":"d"}` + "\n"))
	f.Add([]byte(good + `{"v":1,"op":"iss`))
	f.Add([]byte("\x00\x00\x00"))
	f.Add([]byte(`{"v":2,"op":"issue","serial":"1"}` + "\n"))
	f.Add([]byte(good + `{"v":1,"op":"refuse","time":"2026-01-01T00:00:00Z","serial":"-","device_id":"d","attestation":"refused:nonce","ek_sha256":"ab"}` + "\n"))
	ledger := filepath.Join(dir, ca.LedgerFile)
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(ledger, b, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := ca.Open(dir, "fuzz")
		if err != nil {
			return
		}
		l.Close()
		after, _ := os.ReadFile(ledger)
		if len(after) > 0 && after[len(after)-1] != '\n' {
			t.Fatalf("ledger left without a final newline: %q", after)
		}
	})
}

func TestRevokeSerial(t *testing.T) {
	t.Parallel()
	dir, l := newCA(t)
	testRevokeSerial(t, dir, l)
}

// testRevokeSerial revokes one of a device's two certificates by serial
// (the file and the PostgreSQL ledger run it).
func testRevokeSerial(t *testing.T, dir string, l *ca.Local) {
	t.Helper()
	req := request(t, "dev-rs")
	c1, err := l.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := l.Issue(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.RevokeSerial(c1[0].SerialNumber.Text(16), "superseded"); err != nil {
		t.Fatal(err)
	}
	if err := l.RevokeSerial(c1[0].SerialNumber.Text(16), "again"); err != nil {
		t.Fatalf("second revoke of the serial (a rerun is not an error): %v", err)
	}
	if err := l.RevokeSerial("zz", "x"); err == nil || !strings.Contains(err.Error(), "hexadecimal") {
		t.Fatalf("bad serial: %v", err)
	}
	recs, _ := l.Issued("dev-rs")
	if len(recs) != 2 || recs[0].Status != ca.StatusRevoked && recs[1].Status != ca.StatusRevoked {
		t.Fatalf("records %+v", recs)
	}
	b, _ := os.ReadFile(filepath.Join(dir, ca.CRLFile))
	blk, _ := pem.Decode(b)
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil || len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(c1[0].SerialNumber) != 0 {
		t.Fatalf("CRL %v", err)
	}
	// The other certificate stays live: the ID keeps its key.
	if serials, err := l.Revoke("dev-rs", "rma"); err != nil || len(serials) != 1 || serials[0] != fmt.Sprintf("%x", c2[0].SerialNumber.Bytes()) {
		t.Fatalf("revoke the rest: %v %v", serials, err)
	}
}
