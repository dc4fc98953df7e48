package tpm

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// NV indices of the EK certificates (TCG EK Credential Profile 2.0, 2.2.1.4).
const (
	NVIndexRSAEKCert = 0x01c00002
	NVIndexECCEKCert = 0x01c0000a
	// High-range indices (EK Credential Profile 2.3): P-256 and P-384.
	NVIndexECCP256HighEKCert = 0x01c00014
	NVIndexECCP384HighEKCert = 0x01c00016
)

// EK is the TPM's endorsement key as found by (*TPM).EK.
type EK struct {
	// Public is the EK's public key.
	Public crypto.PublicKey
	// Cert is the EK certificate from NV, or nil when the TPM has none.
	Cert *x509.Certificate
	// Source says where Public came from: "ecc-cert", "rsa-cert",
	// "ecc-p256-h-cert", "ecc-p384-h-cert" or "ecc-template" (derived
	// with the TCG default ECC EK template).
	Source string
}

// EK returns the endorsement key. It prefers the manufacturer's EK
// certificate (ECC P-256, RSA 2048, then the high-range ECC ones) and otherwise derives the ECC EK
// from the TCG default template, which gives the same key every time.
func (t *TPM) EK(ctx context.Context) (*EK, error) {
	var ek *EK
	err := t.Do(ctx, func(tr transport.TPM) error {
		for _, c := range []struct {
			idx    uint32
			source string
		}{
			{NVIndexECCEKCert, "ecc-cert"},
			{NVIndexRSAEKCert, "rsa-cert"},
			{NVIndexECCP256HighEKCert, "ecc-p256-h-cert"},
			{NVIndexECCP384HighEKCert, "ecc-p384-h-cert"},
		} {
			der, err := readNV(tr, c.idx)
			if err != nil {
				continue // absent or unreadable: try the next source
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				continue
			}
			ek = &EK{Public: cert.PublicKey, Cert: cert, Source: c.source}
			return nil
		}
		rsp, err := tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHEndorsement,
			InPublic:      tpm2.New2B(tpm2.ECCEKTemplate),
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("create EK: %w", err)
		}
		defer flush(tr, rsp.ObjectHandle)
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return fmt.Errorf("EK public: %w", err)
		}
		key, err := tpm2.Pub(*pub)
		if err != nil {
			return fmt.Errorf("EK public: %w", err)
		}
		ek = &EK{Public: key, Source: "ecc-template"}
		return nil
	})
	return ek, err
}

// EKDeviceID derives a device ID from the endorsement key: the first 16
// bytes of SHA-256 over the EK's SubjectPublicKeyInfo, in lowercase hex
// (32 characters, valid as a DPS registration ID). The EK is fixed at
// manufacture, so the ID survives re-flashing and factory resets; it
// changes only if the TPM is replaced.
func (t *TPM) EKDeviceID(ctx context.Context) (string, error) {
	ek, err := t.EK(ctx)
	if err != nil {
		return "", err
	}
	return DeviceIDFromPublic(ek.Public)
}

// DeviceIDFromPublic is the ID function EKDeviceID uses.
func DeviceIDFromPublic(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("device ID from EK: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:16]), nil
}

// readNV reads a whole NV index with owner authorisation, falling back to
// the index's own (empty) auth. Trailing padding after the DER is cut.
func readNV(tr transport.TPM, index uint32) ([]byte, error) {
	h := tpm2.TPMHandle(index)
	pubRsp, err := tpm2.NVReadPublic{NVIndex: h}.Execute(tr)
	if err != nil {
		return nil, err
	}
	nvPub, err := pubRsp.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	size := int(nvPub.DataSize)
	var lastErr error
	for _, auth := range []tpm2.AuthHandle{
		{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		{Handle: h, Name: pubRsp.NVName, Auth: tpm2.PasswordAuth(nil)},
	} {
		out := make([]byte, 0, size)
		for len(out) < size {
			chunk := min(size-len(out), 768) // below every TPM's NV buffer maximum
			rsp, err := tpm2.NVRead{
				AuthHandle: auth,
				NVIndex:    tpm2.NamedHandle{Handle: h, Name: pubRsp.NVName},
				Size:       uint16(chunk),
				Offset:     uint16(len(out)),
			}.Execute(tr)
			if err != nil {
				lastErr = err
				break
			}
			out = append(out, rsp.Data.Buffer...)
		}
		if len(out) == size {
			var raw asn1.RawValue
			if _, err := asn1.Unmarshal(out, &raw); err != nil {
				return nil, fmt.Errorf("NV %#x: %w", index, err)
			}
			return raw.FullBytes, nil
		}
	}
	if lastErr == nil {
		lastErr = errors.New("short read")
	}
	return nil, fmt.Errorf("read NV %#x: %w", index, lastErr)
}
