package credential_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"math/big"
	"testing"
	"time"

	"devid/enroll/credential"
)

// closingKey is a key that holds a resource, as a TPM key does.
type closingKey struct {
	crypto.Signer
	closed int
}

func (k *closingKey) Close() error    { k.closed++; return nil }
func (k *closingKey) Backend() string { return "tpm" }

var _ io.Closer = (*closingKey)(nil)

func cert(t *testing.T, cn string, pub crypto.PublicKey, parent *x509.Certificate, signer crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: parent == nil, BasicConstraintsValid: true}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCredential(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := cert(t, "CA", caKey.Public(), nil, caKey)
	devKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := cert(t, "dev-1", devKey.Public(), ca, caKey)
	key := &closingKey{Signer: devKey}
	c := &credential.Credential{Signer: key, Chain: []*x509.Certificate{leaf, ca}}

	if c.Leaf() != leaf || c.DeviceID() != "dev-1" || c.Backend() != "tpm" {
		t.Errorf("Leaf %v, DeviceID %q, Backend %q", c.Leaf().Subject, c.DeviceID(), c.Backend())
	}
	sum := sha256.Sum256(leaf.Raw)
	if want := hex.EncodeToString(sum[:]); c.Fingerprint() != want || credential.Fingerprint(leaf) != want {
		t.Errorf("Fingerprint %q, want %q", c.Fingerprint(), want)
	}
	tc := c.TLSCertificate()
	if tc.PrivateKey != key || tc.Leaf != leaf || len(tc.Certificate) != 2 || string(tc.Certificate[1]) != string(ca.Raw) {
		t.Errorf("TLSCertificate: %d certificates, leaf %v", len(tc.Certificate), tc.Leaf)
	}
	c.Close()
	if key.closed != 1 {
		t.Errorf("Close closed the key %d times", key.closed)
	}

	// The zero value and nil stand for "no credential".
	var none *credential.Credential
	none.Close()
	if none.Leaf() != nil || none.Fingerprint() != "" || none.DeviceID() != "" || none.Backend() != "" {
		t.Error("a nil credential reports something")
	}
	var zero credential.Credential
	zero.Close()
	if zero.Leaf() != nil || zero.Fingerprint() != "" || len(zero.TLSCertificate().Certificate) != 0 {
		t.Error("the zero credential reports something")
	}
}
