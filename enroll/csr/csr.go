// Package csr builds and checks the device's PKCS#10 certificate request:
// subject CN = device ID, signed by the device key, whatever backend holds
// it (any crypto.Signer: a software key or a TPM key). A P-256 key signs
// ECDSA-SHA256 and a P-384 key ECDSA-SHA384 (Microsoft's DPS docs ask for
// P-384, the SDK samples use P-256; both are accepted).
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
// must be ECDSA P-256 (signed ECDSA-SHA256) or P-384 (ECDSA-SHA384).
func Create(signer crypto.Signer, deviceID string) ([]byte, error) {
	if err := board.Validate(deviceID); err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	alg, err := SignatureAlgorithm(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	tmpl := &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: deviceID},
		SignatureAlgorithm: alg,
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
	want, err := SignatureAlgorithm(req.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if req.SignatureAlgorithm != want {
		return nil, fmt.Errorf("%w: signature algorithm %v, want %v", ErrInvalid, req.SignatureAlgorithm, want)
	}
	if err := board.Validate(req.Subject.CommonName); err != nil {
		return nil, fmt.Errorf("%w: subject CN: %v", ErrInvalid, err)
	}
	return req, nil
}

// SignatureAlgorithm is the CSR signature algorithm for a device public
// key: ECDSA-SHA256 for P-256, ECDSA-SHA384 for P-384; other keys are an
// error.
func SignatureAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	if k, ok := pub.(*ecdsa.PublicKey); ok {
		switch k.Curve {
		case elliptic.P256():
			return x509.ECDSAWithSHA256, nil
		case elliptic.P384():
			return x509.ECDSAWithSHA384, nil
		}
		return 0, fmt.Errorf("device key is ECDSA %s, want P-256 or P-384", k.Curve.Params().Name)
	}
	return 0, fmt.Errorf("device key is %T, want ECDSA P-256 or P-384", pub)
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
