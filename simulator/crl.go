package simulator

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// ParseCRL reads a CRL given as PEM ("X509 CRL"), raw DER or base64 DER.
func ParseCRL(b []byte) (*x509.RevocationList, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block is %q, want \"X509 CRL\"", blk.Type)
		}
		return x509.ParseRevocationList(blk.Bytes)
	}
	if l, err := x509.ParseRevocationList(b); err == nil {
		return l, nil
	}
	der, err := decodeB64(strings.TrimSpace(string(b)))
	if err != nil || len(der) == 0 {
		return nil, errors.New("neither PEM, DER nor base64 DER CRL")
	}
	return x509.ParseRevocationList(der)
}

// crlEntries turns a CRL into revocation entries scoped to the CA that
// signed it. The signer must be an enrollment group's signing certificate
// or a CA certificate that chains to one (from extraPEM or from the chains
// of live connections).
func (v *revoker) crlEntries(crlText, extraPEM string) ([]revokedCert, error) {
	crl, err := ParseCRL([]byte(crlText))
	if err != nil {
		return nil, fmt.Errorf("crl: %w", err)
	}
	var extra []*x509.Certificate
	if strings.TrimSpace(extraPEM) != "" {
		if extra, err = ParsePEMCerts([]byte(extraPEM)); err != nil {
			return nil, fmt.Errorf("chain: %w", err)
		}
	}
	known := v.reg.groupCAs()
	if len(known) == 0 {
		return nil, errors.New("crl: no enrollment group signing certificate is known to check the CRL signature against")
	}
	anchors := certPool(known)
	extra = append(extra, v.conns.intermediates()...)
	for _, c := range extra {
		if c.IsCA && verifies(c, anchors, extra) {
			known = append(known, c)
		}
	}
	var issuer *x509.Certificate
	for _, c := range known {
		if crl.CheckSignatureFrom(c) == nil {
			issuer = c
			break
		}
	}
	if issuer == nil {
		return nil, fmt.Errorf("crl: signature of CRL issued by %q verifies against none of the %d CA certificates known for enrollment groups (signing certificates and CAs chaining to them; pass the issuing CA in \"chain\")",
			crl.Issuer.String(), len(known))
	}
	spki := sha256.Sum256(issuer.RawSubjectPublicKeyInfo)
	caB64 := base64.StdEncoding.EncodeToString(issuer.Raw)
	out := []revokedCert{}
	for _, e := range crl.RevokedCertificateEntries {
		ser := fmt.Sprintf("%X", e.SerialNumber)
		out = append(out, revokedCert{
			SHA256:    "crl:" + hex.EncodeToString(spki[:]) + ":" + ser,
			Serial:    ser,
			Issuer:    issuer.Subject.String(),
			IssuerCA:  caB64,
			RevokedAt: e.RevocationTime.UTC().Format("2006-01-02T15:04:05.0000000Z"),
			IssuedBy:  v.pki != nil && v.pki.IssuingCA != nil && bytes.Equal(issuer.Raw, v.pki.IssuingCA.Raw),
		})
	}
	return out, nil
}

// matchesSerial reports whether r revokes c by serial number: same serial,
// same issuer name (when r names one) and, for CRL entries, c signed by the
// CRL's CA.
func (r revokedCert) matchesSerial(c *x509.Certificate) bool {
	if r.Serial == "" || !strings.EqualFold(r.Serial, fmt.Sprintf("%X", c.SerialNumber)) {
		return false
	}
	if r.Issuer != "" && r.Issuer != c.Issuer.String() {
		return false
	}
	if r.IssuerCA == "" {
		return true
	}
	der, err := base64.StdEncoding.DecodeString(r.IssuerCA)
	if err != nil {
		return false
	}
	ca, err := x509.ParseCertificate(der)
	return err == nil && c.CheckSignatureFrom(ca) == nil
}
