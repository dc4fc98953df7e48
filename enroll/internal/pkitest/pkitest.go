// Package pkitest makes throwaway CAs and leaves for enroll's tests,
// including deliberately wrong ones (expired, wrong usage, foreign CA).
// Production code never imports it.
package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"sync/atomic"
	"time"
)

// CA is a root with one issuing intermediate.
type CA struct {
	Root, Issuer       *x509.Certificate
	RootKey, IssuerKey *ecdsa.PrivateKey
}

// NewCA makes a CA valid from an hour ago for ten years.
func NewCA(name string) *CA {
	now := time.Now()
	rk := Key()
	root := sign(&x509.Certificate{
		Subject: pkix.Name{CommonName: name + " root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}, nil, rk.Public(), rk)
	ik := Key()
	iss := sign(&x509.Certificate{
		Subject: pkix.Name{CommonName: name + " issuing"}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(5, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true,
	}, root, ik.Public(), rk)
	return &CA{Root: root, Issuer: iss, RootKey: rk, IssuerKey: ik}
}

// Pool is a cert pool holding the root.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Root)
	return p
}

// Key makes a P-256 key.
func Key() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// Leaf issues a device leaf for pub with CN cn: clientAuth, digitalSignature,
// valid from an hour ago for a year. mod, if not nil, changes the template.
func (c *CA) Leaf(pub crypto.PublicKey, cn string, mod func(*x509.Certificate)) *x509.Certificate {
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if mod != nil {
		mod(tmpl)
	}
	return sign(tmpl, c.Issuer, pub, c.IssuerKey)
}

// ServerCert issues a TLS server certificate for 127.0.0.1 and localhost.
func (c *CA) ServerCert(pub crypto.PublicKey) *x509.Certificate {
	return c.Leaf(pub, "localhost", func(t *x509.Certificate) {
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		t.DNSNames = []string{"localhost"}
		t.IPAddresses = append(t.IPAddresses, []byte{127, 0, 0, 1})
	})
}

var serial atomic.Int64

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano() + serial.Add(1))
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		panic(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return c
}
