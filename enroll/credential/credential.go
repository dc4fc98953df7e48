// Package credential is the device's X.509 credential: a private key
// (a crypto.Signer in software or inside a TPM) and the chain that
// certifies it. It is the one type the agent, renewal and the DPS client
// pass a credential around as; dps, which imports nothing of ours, takes
// it as the tls.Certificate that TLSCertificate returns.
package credential

import (
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"

	"devid/enroll/keys"
)

// Credential is a key and the chain that certifies it, leaf first, then
// the intermediates up to but not including the root the service knows.
// The zero value (no key, no chain) stands for "no credential".
type Credential struct {
	Signer crypto.Signer
	Chain  []*x509.Certificate
}

// Leaf is the credential's own certificate, or nil.
func (c *Credential) Leaf() *x509.Certificate {
	if c == nil || len(c.Chain) == 0 {
		return nil
	}
	return c.Chain[0]
}

// DeviceID is the leaf's subject CN: the device ID, which DPS uses as
// the registration ID. Empty without a leaf.
func (c *Credential) DeviceID() string {
	if l := c.Leaf(); l != nil {
		return l.Subject.CommonName
	}
	return ""
}

// Fingerprint is the lowercase hex SHA-256 of the leaf's DER, which ties
// a cached DPS assignment to the certificate that obtained it. Empty
// without a leaf.
func (c *Credential) Fingerprint() string {
	l := c.Leaf()
	if l == nil {
		return ""
	}
	return Fingerprint(l)
}

// Fingerprint is the lowercase hex SHA-256 of cert's DER.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Backend names the key backend ("file", "tpm"), or "" when the signer
// does not say.
func (c *Credential) Backend() string {
	if c == nil {
		return ""
	}
	if k, ok := c.Signer.(keys.Key); ok {
		return k.Backend()
	}
	return ""
}

// TLSCertificate is the credential for a TLS client: the key, and the
// leaf and intermediates (a Go client sends nothing when the server's
// acceptable-CA list does not name the leaf's issuer, so the chain goes
// whole).
func (c *Credential) TLSCertificate() tls.Certificate {
	tc := tls.Certificate{PrivateKey: c.Signer, Leaf: c.Leaf()}
	for _, x := range c.Chain {
		tc.Certificate = append(tc.Certificate, x.Raw)
	}
	return tc
}

// Close releases what the key holds (a TPM object: a TPM holds only a
// few at once). Nil-safe; closing twice is harmless.
func (c *Credential) Close() {
	if c != nil {
		keys.Close(c.Signer)
	}
}
