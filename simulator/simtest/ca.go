package simtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// DeviceCA is a test device-manufacturer CA: a root and an intermediate,
// ECDSA P-256. Device leaves are issued by the intermediate.
type DeviceCA struct {
	Root            *x509.Certificate
	RootKey         crypto.Signer
	Intermediate    *x509.Certificate
	IntermediateKey crypto.Signer
}

// DeviceCert is an issued device certificate with its key (when the CA
// made the key) and the chain a device presents (leaf, intermediate).
type DeviceCert struct {
	Leaf  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// CertOption adjusts a leaf template.
type CertOption func(*x509.Certificate)

// Validity sets NotBefore/NotAfter (e.g. an expired certificate).
func Validity(notBefore, notAfter time.Time) CertOption {
	return func(c *x509.Certificate) { c.NotBefore, c.NotAfter = notBefore, notAfter }
}

// CommonName overrides the subject CN (for CN-mismatch tests).
func CommonName(cn string) CertOption { return func(c *x509.Certificate) { c.Subject.CommonName = cn } }

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n.Add(n, big.NewInt(1))
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NewDeviceCA mints a root and an intermediate CA.
func NewDeviceCA(t testing.TB) *DeviceCA {
	t.Helper()
	rk, ik := mustKey(t), mustKey(t)
	now := time.Now().Add(-time.Hour)
	rt := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "devid test device root " + serial().Text(16)[:8]},
		NotBefore: now, NotAfter: now.AddDate(10, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rd, err := x509.CreateCertificate(rand.Reader, rt, rt, rk.Public(), rk)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rd)
	it := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "devid test device intermediate " + serial().Text(16)[:8]},
		NotBefore: now, NotAfter: now.AddDate(5, 0, 0), IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	id, err := x509.CreateCertificate(rand.Reader, it, root, ik.Public(), rk)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(id)
	return &DeviceCA{Root: root, RootKey: rk, Intermediate: inter, IntermediateKey: ik}
}

// Issue makes a new P-256 key and a clientAuth leaf with CN = deviceID.
func (ca *DeviceCA) Issue(t testing.TB, deviceID string, opts ...CertOption) *DeviceCert {
	t.Helper()
	k := mustKey(t)
	leaf := ca.IssueFor(t, deviceID, k.Public(), opts...)
	return &DeviceCert{Leaf: leaf, Key: k, Chain: []*x509.Certificate{leaf, ca.Intermediate}}
}

// IssueFor signs a clientAuth leaf with CN = deviceID for pub (for keys
// that live elsewhere, e.g. in a TPM).
func (ca *DeviceCA) IssueFor(t testing.TB, deviceID string, pub crypto.PublicKey, opts ...CertOption) *x509.Certificate {
	t.Helper()
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: deviceID},
		NotBefore: now, NotAfter: now.AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Intermediate, pub, ca.IntermediateKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// SelfSigned makes a self-signed clientAuth certificate and key (for
// individual enrollments and untrusted-certificate tests).
func SelfSigned(t testing.TB, cn string, opts ...CertOption) *DeviceCert {
	t.Helper()
	k := mustKey(t)
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: now, NotAfter: now.AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &DeviceCert{Leaf: c, Key: k, Chain: []*x509.Certificate{c}}
}

// TLSCertificate returns the chain and key as a tls.Certificate.
func (d *DeviceCert) TLSCertificate() tls.Certificate {
	tc := tls.Certificate{PrivateKey: d.Key, Leaf: d.Leaf}
	for _, c := range d.Chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}

// ChainPEM is the presented chain as PEM (leaf first).
func (d *DeviceCert) ChainPEM() []byte {
	var out []byte
	for _, c := range d.Chain {
		out = append(out, PEM(c)...)
	}
	return out
}

// KeyPEM is the private key as PKCS#8 PEM.
func (d *DeviceCert) KeyPEM(t testing.TB) []byte {
	t.Helper()
	b, err := x509.MarshalPKCS8PrivateKey(d.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b})
}

// WriteFiles writes chain and key PEM files (key 0600) into dir and
// returns their paths.
func (d *DeviceCert) WriteFiles(t testing.TB, dir string) (certPath, keyPath string) {
	t.Helper()
	certPath, keyPath = filepath.Join(dir, d.Leaf.Subject.CommonName+".pem"), filepath.Join(dir, d.Leaf.Subject.CommonName+".key")
	if err := os.WriteFile(certPath, d.ChainPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, d.KeyPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// PEM encodes one certificate.
func PEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
