package simulator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// PKI holds the simulator's own certificate authorities:
//   - the server PKI (RSA, like Azure's DigiCert chain) that signs the TLS
//     server certificate of DPS, every hub, the EST server;
//   - the issuing CA (ECDSA P-384, like Azure Device Registry) that signs
//     certificates requested with the DPS "csr" field and through EST, and
//     publishes a CRL.
//
// Everything is created once in the state directory and reloaded on
// restart, so clients keep trusting the same roots.
type PKI struct {
	ServerRoot     *x509.Certificate
	ServerInt      *x509.Certificate
	ServerCert     tls.Certificate // leaf + intermediate
	IssuingRoot    *x509.Certificate
	IssuingRootKey crypto.Signer
	IssuingCA      *x509.Certificate // intermediate that signs device certificates
	IssuingKey     crypto.Signer

	mu sync.Mutex // serialises issuance (serial numbers are random, CRL numbers are not)
}

// File names inside the state directory.
const (
	fileServerRoot     = "server-root.pem"
	fileServerRootKey  = "server-root.key"
	fileServerInt      = "server-intermediate.pem"
	fileServerIntKey   = "server-intermediate.key"
	fileServerCert     = "server.pem"
	fileServerKey      = "server.key"
	fileIssuingRoot    = "issuing-ca.pem"
	fileIssuingRootKey = "issuing-ca.key"
	fileIssuingInt     = "issuing-intermediate.pem"
	fileIssuingIntKey  = "issuing-intermediate.key"
	fileIssuingChain   = "issuing-chain.pem"
)

// LoadOrCreatePKI loads the PKI from dir or creates it. serverNames are
// the DNS names and IPs the server certificate must cover; when the stored
// certificate lacks one of them, only the server leaf is re-issued.
//
// serverKey is "rsa" (default: Azure's server certificates are RSA) or
// "ecdsa" (P-256: far cheaper handshakes for load tests).
func LoadOrCreatePKI(dir string, serverNames []string, serverKey string) (*PKI, error) {
	p := &PKI{}
	var err error
	var srvRootKey, srvIntKey crypto.Signer
	if p.ServerRoot, srvRootKey, err = loadOrMakeCA(dir, fileServerRoot, fileServerRootKey, "devid-sim Server Root G2", nil, nil, "rsa"); err != nil {
		return nil, err
	}
	if p.ServerInt, srvIntKey, err = loadOrMakeCA(dir, fileServerInt, fileServerIntKey, "devid-sim Server TLS CA", p.ServerRoot, srvRootKey, "rsa"); err != nil {
		return nil, err
	}
	if p.IssuingRoot, p.IssuingRootKey, err = loadOrMakeCA(dir, fileIssuingRoot, fileIssuingRootKey, "devid-sim Issuing Root", nil, nil, "p384"); err != nil {
		return nil, err
	}
	if p.IssuingCA, p.IssuingKey, err = loadOrMakeCA(dir, fileIssuingInt, fileIssuingIntKey, "devid-sim Issuing CA", p.IssuingRoot, p.IssuingRootKey, "p384"); err != nil {
		return nil, err
	}
	chain := append(pemCert(p.IssuingCA), pemCert(p.IssuingRoot)...)
	if err := writeFileAtomic(filepath.Join(dir, fileIssuingChain), chain, 0o644); err != nil {
		return nil, err
	}
	// Server leaf.
	leaf, key, err := loadCertKey(filepath.Join(dir, fileServerCert), filepath.Join(dir, fileServerKey))
	if err != nil || !coversNames(leaf, serverNames) || time.Until(leaf.NotAfter) < 24*time.Hour || keyKind(key) != serverKey {
		leaf, key, err = makeServerCert(dir, p.ServerInt, srvIntKey, serverNames, serverKey)
		if err != nil {
			return nil, err
		}
	}
	p.ServerCert = tls.Certificate{
		Certificate: [][]byte{leaf.Raw, p.ServerInt.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}
	return p, nil
}

func coversNames(c *x509.Certificate, names []string) bool {
	for _, n := range names {
		if c.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}

func newKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "rsa":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	default:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
}

func randSerial() *big.Int {
	s, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return s.Add(s, big.NewInt(1))
}

func loadOrMakeCA(dir, certName, keyName, cn string, parent *x509.Certificate, parentKey crypto.Signer, kind string) (*x509.Certificate, crypto.Signer, error) {
	c, k, err := loadCertKey(filepath.Join(dir, certName), filepath.Join(dir, keyName))
	if err == nil {
		return c, k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, nil, err
	}
	k, err = newKey(kind)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"devid simulator"}},
		NotBefore:             now,
		NotAfter:              now.AddDate(20, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if parent != nil {
		tmpl.NotAfter = now.AddDate(10, 0, 0)
		tmpl.MaxPathLen = 0
		tmpl.MaxPathLenZero = true
	} else {
		parent, parentKey = tmpl, k
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, k.Public(), parentKey)
	if err != nil {
		return nil, nil, err
	}
	c, _ = x509.ParseCertificate(der)
	if err := saveCertKey(dir, certName, keyName, c, k); err != nil {
		return nil, nil, err
	}
	return c, k, nil
}

func keyKind(k crypto.Signer) string {
	if _, ok := k.(*rsa.PrivateKey); ok {
		return "rsa"
	}
	return "ecdsa"
}

func makeServerCert(dir string, ca *x509.Certificate, caKey crypto.Signer, names []string, kind string) (*x509.Certificate, crypto.Signer, error) {
	k, err := newKey(map[string]string{"rsa": "rsa", "ecdsa": "p256"}[kind])
	if err != nil {
		return nil, nil, err
	}
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: names[0], Organization: []string{"devid simulator"}},
		NotBefore:    now,
		NotAfter:     now.AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if kind == "rsa" {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, k.Public(), caKey)
	if err != nil {
		return nil, nil, err
	}
	c, _ := x509.ParseCertificate(der)
	return c, k, saveCertKey(dir, fileServerCert, fileServerKey, c, k)
}

func saveCertKey(dir, certName, keyName string, c *x509.Certificate, k crypto.Signer) error {
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, keyName), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, certName), pemCert(c), 0o644)
}

func loadCertKey(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	certs, err := ParsePEMCerts(cb)
	if err != nil || len(certs) == 0 {
		return nil, nil, fmt.Errorf("%s: no certificate: %v", certPath, err)
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, nil, fmt.Errorf("%s: no PEM key", keyPath)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not a signing key", keyPath)
	}
	return certs[0], s, nil
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// ParsePEMCerts parses every CERTIFICATE block in b. Input without any PEM
// block is tried as base64 DER (as the Azure REST API also accepts).
func ParsePEMCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		der, err := decodeB64(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, errors.New("neither PEM nor base64 DER certificate")
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Thumbprints returns the upper-case hex SHA-1 and SHA-256 thumbprints,
// the forms the Azure portal and REST API use.
func Thumbprints(c *x509.Certificate) (sha1Hex, sha256Hex string) {
	a := sha1.Sum(c.Raw)
	b := sha256.Sum256(c.Raw)
	return strings.ToUpper(hex.EncodeToString(a[:])), strings.ToUpper(hex.EncodeToString(b[:]))
}

// SignCSR issues a device certificate from the issuing CA for the given
// public key and subject, valid for validity. Used by DPS (csr field) and
// the EST server.
func (p *PKI) SignCSR(csr *x509.CertificateRequest, validity time.Duration) (*x509.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now().Add(-5 * time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: csr.Subject.CommonName, Organization: csr.Subject.Organization},
		NotBefore:    now,
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     csr.DNSNames,
	}
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.IssuingCA, csr.PublicKey, p.IssuingKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// IssuingChain is the chain returned with an issued leaf: the issuing
// intermediate, then the root (the leaf itself is prepended by callers).
func (p *PKI) IssuingChain() []*x509.Certificate {
	return []*x509.Certificate{p.IssuingCA, p.IssuingRoot}
}

// CRL builds a DER CRL signed by the issuing CA listing revoked serials.
func (p *PKI) CRL(number int64, revoked []x509.RevocationListEntry) ([]byte, error) {
	now := time.Now()
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(number),
		ThisUpdate:                now.Add(-time.Minute),
		NextUpdate:                now.Add(time.Hour),
		RevokedCertificateEntries: revoked,
	}, p.IssuingCA, p.IssuingKey)
}

// WriteFileAtomic writes data to path via a temp file in the same
// directory, fsync and rename, then fsyncs the directory.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	return writeFileAtomic(path, data, mode)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// certPool is a pool holding certs.
func certPool(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// verifies reports whether leaf chains to roots through intermediates,
// for any key usage.
func verifies(leaf *x509.Certificate, roots *x509.CertPool, intermediates []*x509.Certificate) bool {
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: certPool(intermediates), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}
