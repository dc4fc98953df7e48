//go:build pkcs11 && cgo

package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"

	"devid/enroll/csr"
	"devid/enroll/internal/pkitest"
	"devid/enroll/station/internal/softhsmtest"
)

// The SoftHSM2 tests set SOFTHSM2_CONF: none of them is parallel.

func hsmRequest(t *testing.T, id string) *x509.CertificateRequest {
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

// TestPKCS11IssueThroughToken: ca init with a PKCS#11 URI makes both keys
// in the token and writes no key file; the CA issues through the token; the
// chain verifies to the root; the directory records the URI without the
// PIN; the private keys cannot be read out of the token.
func TestPKCS11IssueThroughToken(t *testing.T) {
	tok := softhsmtest.New(t, "devid-ca", "1234")
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, InitOptions{Name: "hsm line", PKCS11: tok.URI("line7")}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{RootKeyFile, IssuingKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists beside a token key (%v)", f, err)
		}
	}
	for f, label := range map[string]string{IssuingKeyURIFile: "object=line7;", RootKeyURIFile: "object=line7-root;"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if s := string(b); strings.Contains(s, "pin-value") || strings.Contains(s, tok.PIN) || !strings.Contains(s, label) || !strings.Contains(s, "module-path="+tok.Module) {
			t.Errorf("%s = %q: want the URI of %s without the PIN", f, s, label)
		}
	}

	t.Setenv(PINEnv, tok.PIN)
	l, err := Open(dir, "st-hsm")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	chain, err := l.Issue(context.Background(), hsmRequest(t, "board-hsm-1"))
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(l.Root())
	inter.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf does not verify to the root: %v", err)
	}
	if err := l.WriteCRL(); err != nil {
		t.Fatal(err)
	}

	// The issuing key and the root key: sensitive, never extractable,
	// CKA_VALUE unreadable.
	ctx := l.keyCloser.(*crypto11Token).ctx
	rootKey, err := l.keyCloser.(*crypto11Token).Find("line7-root", nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]any{"issuing": l.key, "root": rootKey} {
		attrs, err := ctx.GetAttributes(k, []crypto11.AttributeType{crypto11.CkaSensitive, crypto11.CkaExtractable, crypto11.CkaNeverExtractable})
		if err != nil {
			t.Fatalf("%s key attributes: %v", name, err)
		}
		for a, want := range map[crypto11.AttributeType]byte{crypto11.CkaSensitive: 1, crypto11.CkaExtractable: 0, crypto11.CkaNeverExtractable: 1} {
			if v := attrs[a]; v == nil || len(v.Value) != 1 || v.Value[0] != want {
				t.Errorf("%s key: attribute %#x = %v, want %d", name, a, v, want)
			}
		}
		v, err := ctx.GetAttribute(k, crypto11.CkaValue)
		var p11 pkcs11.Error
		if !errors.As(err, &p11) || p11 != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
			t.Errorf("%s key: reading CKA_VALUE gave %v, %v; want CKR_ATTRIBUTE_SENSITIVE", name, v, err)
		}
	}
}

// TestPKCS11Errors: a wrong PIN, a missing token, a missing module, a
// missing PIN and a label already in the token each give an error naming
// what was wrong; a failed Init leaves no key behind.
func TestPKCS11Errors(t *testing.T) {
	tok := softhsmtest.New(t, "devid-ca", "1234")
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, InitOptions{PKCS11: tok.URI("k")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, uri, want string
	}{
		{"wrong PIN", strings.Replace(tok.URI("x"), "pin-value=1234", "pin-value=9999", 1), `PKCS#11 token "devid-ca": login refused, wrong user PIN`},
		{"missing token", strings.Replace(tok.URI("x"), "token=devid-ca", "token=nosuch", 1), `has no token "nosuch"`},
		{"missing module", strings.Replace(tok.URI("x"), tok.Module, "/nonexistent/libp11.so", 1), "PKCS#11 module-path: stat /nonexistent/libp11.so: no such file"},
		{"no PIN", strings.Replace(tok.URI("x"), "&pin-value=1234", "", 1), "no PIN for the PKCS#11 token \"devid-ca\""},
		{"label taken", tok.URI("k"), `already holds a key labelled "k"`},
	} {
		err := Init(filepath.Join(t.TempDir(), "ca"), InitOptions{PKCS11: tc.uri})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Init: %v; want an error containing %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "1234") || err != nil && strings.Contains(err.Error(), "9999") {
			t.Errorf("%s: the error shows the PIN: %v", tc.name, err)
		}
	}
	// The root label taken, the issuing one free: the issuing key made
	// first is deleted again.
	if err := Init(filepath.Join(t.TempDir(), "ca"), InitOptions{PKCS11: tok.URI("j-root")}); err != nil {
		t.Fatal(err)
	}
	if err := Init(filepath.Join(t.TempDir(), "ca"), InitOptions{PKCS11: tok.URI("j")}); err == nil || !strings.Contains(err.Error(), `root key: PKCS#11 token "devid-ca" already holds a key labelled "j-root"`) {
		t.Errorf("Init over a taken root label: %v", err)
	}
	u, err := ParsePKCS11URI(tok.URI("k"))
	if err != nil {
		t.Fatal(err)
	}
	tk, err := openPKCS11(u)
	if err != nil {
		t.Fatal(err)
	}
	if all, err := tk.(*crypto11Token).ctx.FindAllKeyPairs(); err != nil || len(all) != 4 {
		t.Errorf("after the failed inits the token holds %d key pairs (%v), want the 4 of the two CAs made", len(all), err)
	}
	tk.Close()

	// The key of another CA in the same token: refused by Open.
	other := filepath.Join(t.TempDir(), "ca")
	if err := Init(other, InitOptions{PKCS11: tok.URI("other")}); err != nil {
		t.Fatal(err)
	}
	swapped := filepath.Join(t.TempDir(), "ca")
	os.CopyFS(swapped, os.DirFS(dir))
	b, _ := os.ReadFile(filepath.Join(other, IssuingKeyURIFile))
	os.WriteFile(filepath.Join(swapped, IssuingKeyURIFile), b, 0o644)
	t.Setenv(PINEnv, tok.PIN)
	if _, err := Open(swapped, "st"); err == nil || !strings.Contains(err.Error(), IssuingKeyURIFile+" does not match "+IssuingCertFile) {
		t.Errorf("Open with another CA's token key: %v", err)
	}

	// Open with a wrong PIN, and with the key gone from the token.
	t.Setenv(PINEnv, "0000")
	if _, err := Open(dir, "st"); err == nil || !strings.Contains(err.Error(), "wrong user PIN") || !strings.Contains(err.Error(), IssuingKeyURIFile) {
		t.Errorf("Open with a wrong PIN: %v", err)
	}
	t.Setenv(PINEnv, tok.PIN)
	tk, err = openPKCS11(u)
	if err != nil {
		t.Fatal(err)
	}
	k, err := tk.Find("k", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Delete(k); err != nil {
		t.Fatal(err)
	}
	tk.Close()
	if _, err := Open(dir, "st"); err == nil || !strings.Contains(err.Error(), `holds no key pair labelled "k"`) {
		t.Errorf("Open with the key deleted: %v", err)
	}
}

// TestPKCS11PINSource: a pin-source file gives the PIN, and is recorded.
func TestPKCS11PINSource(t *testing.T) {
	tok := softhsmtest.New(t, "devid-ca", "4321")
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := strings.Replace(tok.URI("src"), "pin-value=4321", "pin-source=file:"+pinFile, 1)
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, InitOptions{PKCS11: uri}); err != nil {
		t.Fatal(err)
	}
	l, err := Open(dir, "st")
	if err != nil {
		t.Fatalf("Open through the recorded pin-source: %v", err)
	}
	if _, err := l.Issue(context.Background(), hsmRequest(t, "board-src")); err != nil {
		t.Fatal(err)
	}
	l.Close()
}

// TestPKCS11ConcurrentSigning: a station signs for many slots at once;
// the token signer (crypto11's session pool) must give each caller a
// valid signature of its own digest.
func TestPKCS11ConcurrentSigning(t *testing.T) {
	tok := softhsmtest.New(t, "devid-ca", "1234")
	dir := filepath.Join(t.TempDir(), "ca")
	if err := Init(dir, InitOptions{PKCS11: tok.URI("conc")}); err != nil {
		t.Fatal(err)
	}
	t.Setenv(PINEnv, tok.PIN)
	l, err := Open(dir, "st")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pub := l.issuer.PublicKey.(*ecdsa.PublicKey)
	var wg sync.WaitGroup
	errs := make(chan error, 8*10)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				digest := sha256.Sum256([]byte(fmt.Sprintf("slot %d board %d", g, i)))
				sig, err := l.key.Sign(rand.Reader, digest[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(pub, digest[:], sig) {
					errs <- fmt.Errorf("slot %d board %d: signature does not verify", g, i)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
