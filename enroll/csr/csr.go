// Package csr builds and checks the device's PKCS#10 certificate request:
// subject CN = device ID, signed ECDSA-SHA256 by the device key, whatever
// backend holds it (any crypto.Signer: a software key or a TPM key).
package csr

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"

	"devid/hal/board"
)

// MaxSize bounds a CSR accepted from outside (PEM or DER). A P-256 CSR is
// about 470 bytes of DER.
const MaxSize = 8 << 10

// ErrInvalid marks a CSR that is malformed or breaks the device rules.
var ErrInvalid = errors.New("invalid CSR")

// Create returns the DER of a CSR for deviceID signed by signer. The key
// must be ECDSA P-256: that is what every backend makes, and what the CA
// and DPS expect.
func Create(signer crypto.Signer, deviceID string) ([]byte, error) {
	if err := board.Validate(deviceID); err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	pub, ok := signer.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("create CSR: device key is %T, want ECDSA P-256", signer.Public())
	}
	tmpl := &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: deviceID},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, signer)
	if err != nil {
		return nil, fmt.Errorf("create CSR for %s: %w", deviceID, err)
	}
	return der, nil
}

// Parse accepts a CSR as DER or PEM ("CERTIFICATE REQUEST"), checks its
// signature, key type and CN against the device ID rules, and returns it.
func Parse(b []byte) (*x509.CertificateRequest, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrInvalid, len(b), MaxSize)
	}
	der := b
	if t := bytes.TrimSpace(b); bytes.HasPrefix(t, []byte("-----BEGIN")) {
		blk, _ := pem.Decode(t)
		if blk == nil {
			return nil, fmt.Errorf("%w: bad PEM", ErrInvalid)
		}
		if blk.Type != "CERTIFICATE REQUEST" && blk.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block is %q, want CERTIFICATE REQUEST", ErrInvalid, blk.Type)
		}
		der = blk.Bytes
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify: %v", ErrInvalid, err)
	}
	if req.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		return nil, fmt.Errorf("%w: signature algorithm %v, want ECDSA-SHA256", ErrInvalid, req.SignatureAlgorithm)
	}
	if pub, ok := req.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: public key is %T, want ECDSA P-256", ErrInvalid, req.PublicKey)
	}
	if err := board.Validate(req.Subject.CommonName); err != nil {
		return nil, fmt.Errorf("%w: subject CN: %v", ErrInvalid, err)
	}
	return req, nil
}

// PEM encodes a CSR's DER as PEM.
func PEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// KeyFingerprint is the lowercase hex SHA-256 of a public key's
// SubjectPublicKeyInfo DER: the key's identity in the CA ledger.
func KeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("fingerprint public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}
