package certstore_test

import (
	"bytes"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/internal/pkitest"
)

// snapshot returns every file in dir with its content, to prove a refused
// install changed nothing.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		out[e.Name()] = string(b)
	}
	return out
}

func TestInstallChecks(t *testing.T) {
	t.Parallel()
	ca, other := pkitest.NewCA("factory"), pkitest.NewCA("foreign")
	key, otherKey := pkitest.Key(), pkitest.Key()
	const id = "board-1"
	chain := func(leaf *x509.Certificate, c *pkitest.CA) []byte { return certstore.EncodePEM(leaf, c.Issuer) }
	good := chain(ca.Leaf(key.Public(), id, nil), ca)

	bad := []struct {
		name   string
		pem    []byte
		reason certstore.Reason
	}{
		{"other key", chain(ca.Leaf(otherKey.Public(), id, nil), ca), certstore.ReasonKeyMismatch},
		{"other CN", chain(ca.Leaf(key.Public(), "board-2", nil), ca), certstore.ReasonCNMismatch},
		{"untrusted CA", chain(other.Leaf(key.Public(), id, nil), other), certstore.ReasonUntrusted},
		{"missing intermediate", certstore.EncodePEM(ca.Leaf(key.Public(), id, nil)), certstore.ReasonUntrusted},
		{"expired", chain(ca.Leaf(key.Public(), id, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().AddDate(-2, 0, 0), time.Now().AddDate(-1, 0, 0)
		}), ca), certstore.ReasonExpired},
		{"not yet valid", chain(ca.Leaf(key.Public(), id, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().AddDate(0, 1, 0), time.Now().AddDate(1, 0, 0)
		}), ca), certstore.ReasonNotYetValid},
		{"absurd lifetime", chain(ca.Leaf(key.Public(), id, func(c *x509.Certificate) {
			c.NotAfter = time.Now().AddDate(200, 0, 0)
		}), ca), certstore.ReasonValidity},
		{"no digitalSignature", chain(ca.Leaf(key.Public(), id, func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageKeyEncipherment
		}), ca), certstore.ReasonKeyUsage},
		{"serverAuth only", chain(ca.Leaf(key.Public(), id, func(c *x509.Certificate) {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}), ca), certstore.ReasonKeyUsage},
		{"garbage", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), certstore.ReasonMalformed},
		{"a key, not a cert", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), certstore.ReasonMalformed},
	}
	// Run each bad chain against an empty store and against one holding a
	// good chain: neither may change.
	for _, preinstalled := range []bool{false, true} {
		dir := t.TempDir()
		st := certstore.Open(dir, ca.Pool())
		if preinstalled {
			if _, err := st.Install(good, key.Public(), id); err != nil {
				t.Fatal(err)
			}
		}
		for _, b := range bad {
			before := snapshot(t, dir)
			_, err := st.Install(b.pem, key.Public(), id)
			var rej *certstore.RejectError
			if !errors.As(err, &rej) || rej.Reason != b.reason || !errors.Is(err, certstore.ErrRejected) {
				t.Errorf("%s (preinstalled=%v): err = %v, want reason %s", b.name, preinstalled, err, b.reason)
				continue
			}
			if after := snapshot(t, dir); len(after) != len(before) || after[certstore.ChainFile] != before[certstore.ChainFile] {
				t.Errorf("%s: refused install changed the store", b.name)
			}
		}
	}
}

func TestInstallLoadIdempotent(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewCA("factory")
	key := pkitest.Key()
	dir := filepath.Join(t.TempDir(), "state")
	st := certstore.Open(dir, ca.Pool())
	if _, err := st.Load(); !errors.Is(err, certstore.ErrNoChain) {
		t.Fatalf("Load on empty store: %v", err)
	}
	if _, err := st.Install(nil, key.Public(), "d"); err == nil {
		t.Fatal("empty chain accepted")
	}
	leaf := ca.Leaf(key.Public(), "d", nil)
	pemChain := certstore.EncodePEM(leaf, ca.Issuer)
	c, err := st.Install(pemChain, key.Public(), "d")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Install(pemChain, key.Public(), "d"); err != nil {
		t.Fatalf("second install of the same chain: %v", err)
	}
	got, err := st.Load()
	if err != nil || !bytes.Equal(got.PEM, c.PEM) || got.Serial() != c.Serial() || !got.Matches(key.Public()) {
		t.Fatalf("Load = %+v, %v", got, err)
	}
	if fi, _ := os.Stat(st.Path()); fi.Mode().Perm() != 0o600 {
		t.Fatalf("chain mode %v", fi.Mode().Perm())
	}
	if len(got.Intermediates) != 1 || got.Leaf.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("Load carries %d intermediates, want leaf + intermediate", len(got.Intermediates))
	}
	if !got.NotAfter().Equal(leaf.NotAfter) {
		t.Fatal("NotAfter")
	}
	if err := st.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Load(); !errors.Is(err, certstore.ErrNoChain) {
		t.Fatalf("Load after Remove: %v", err)
	}
	// A store without roots refuses to install anything.
	if _, err := certstore.Open(dir, nil).Install(pemChain, key.Public(), "d"); err == nil {
		t.Fatal("store without a factory root installed a chain")
	}
}

func TestUnsetClockUsesLeafTime(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewCA("factory")
	key := pkitest.Key()
	st := certstore.Open(t.TempDir(), ca.Pool())
	st.Now = func() time.Time { return time.Unix(0, 0) } // a board booted at 1970
	if _, err := st.Install(certstore.EncodePEM(ca.Leaf(key.Public(), "d", nil), ca.Issuer), key.Public(), "d"); err != nil {
		t.Fatalf("install with an unset clock: %v", err)
	}
}

func FuzzParsePEM(f *testing.F) {
	ca := pkitest.NewCA("f")
	f.Add(certstore.EncodePEM(ca.Root, ca.Issuer))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := certstore.ParsePEM(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no error and no certificate")
		}
	})
}
