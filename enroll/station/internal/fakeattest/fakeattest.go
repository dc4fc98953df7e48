// Package fakeattest is a stand-in for TPM key attestation in the
// station's tests: a device-side factory.Attester (TPM) and a jig-side
// jig.Verifier (Verifier) that speak a simple statement and challenge of
// their own, so that the factory bus exchange (ATTEST, ACTIVATE), the
// jig's attest step and the CA's records can be tested without a TPM.
// It proves nothing; enroll/attest and hal/tpm are the real pieces.
package fakeattest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"

	"devid/enroll/factory"
	"devid/enroll/keys"
	"devid/enroll/station/jig"
)

// SecretSize is the size of the activation secret.
const SecretSize = 32

// Statement is the fake's attestation statement (JSON).
type Statement struct {
	X5C      [][]byte `json:"x5c"` // EK certificate first, as in enroll/attest
	Nonce    []byte   `json:"nonce"`
	Pub      []byte   `json:"pub"` // PKIX of the certified key
	FixedTPM bool     `json:"fixedTPM"`
	Pad      string   `json:"pad,omitempty"` // makes the statement the size of a real one
}

// TPM is the device side. Its zero value with Keys set attests the
// device key with no EK certificate; set EK for a working one.
type TPM struct {
	Keys  keys.Store
	EK    *x509.Certificate   // nil: the TPM has no EK certificate
	Chain []*x509.Certificate // intermediates after the EK certificate
	// EKSecret stands for the EK's private key; nil: the one a Verifier
	// derives from the EK certificate (a genuine TPM). Another value is
	// a TPM that is not the one the EK certificate names.
	EKSecret []byte
	// Faults.
	StaleNonce  bool  // certify over another nonce (a replayed statement)
	OtherKey    bool  // certify another key than the device key
	NotFixedTPM bool  // a key that may leave the TPM
	Garbage     bool  // a statement that is not JSON
	ActivateErr error // TPM2_ActivateCredential fails

	Attests, Activations atomic.Int32
}

var _ factory.Attester = (*TPM)(nil)

// Attest returns a statement over nonce for the device key.
func (t *TPM) Attest(_ context.Context, nonce []byte) ([]byte, error) {
	t.Attests.Add(1)
	if t.Garbage {
		return []byte("this is not a statement"), nil
	}
	if t.EK == nil {
		return nil, fmt.Errorf("read EK certificate NV index 0x01c0000a: %w", factory.ErrNoEKCert)
	}
	key, err := t.Keys.Load()
	if err != nil {
		return nil, err
	}
	defer keys.Close(key)
	pub := key.Public()
	if t.OtherKey {
		pub = otherKey
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	st := Statement{X5C: [][]byte{t.EK.Raw}, Nonce: append([]byte(nil), nonce...), Pub: der, FixedTPM: !t.NotFixedTPM,
		Pad: string(bytes.Repeat([]byte("t"), 600))}
	for _, c := range t.Chain {
		st.X5C = append(st.X5C, c.Raw)
	}
	if t.StaleNonce {
		st.Nonce[0] ^= 1
	}
	return json.Marshal(st)
}

// Activate recovers the secret from a challenge made by Verifier.
func (t *TPM) Activate(_ context.Context, blob, encSecret []byte) ([]byte, error) {
	t.Activations.Add(1)
	if t.ActivateErr != nil {
		return nil, t.ActivateErr
	}
	ek := t.EKSecret
	if ek == nil && t.EK != nil {
		ek = ekSecret(t.EK)
	}
	if len(encSecret) < SecretSize {
		return nil, errors.New("encrypted secret too short")
	}
	return xorStream(ek, blob, encSecret[:SecretSize]), nil
}

var otherKey = func() crypto.PublicKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k.Public()
}()

func ekSecret(ek *x509.Certificate) []byte {
	s := sha256.Sum256(append([]byte("ek secret"), ek.Raw...))
	return s[:]
}

func xorStream(ek, blob, in []byte) []byte {
	ks := sha256.Sum256(append(append([]byte(nil), ek...), blob...))
	out := make([]byte, len(in))
	for i := range in {
		out[i] = in[i] ^ ks[i%len(ks)]
	}
	return out
}

// HWType is the HardwareModuleName type the fake Verifier reports.
var HWType = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}

// Verifier is the jig side: it checks the fake statement the way
// enroll/attest checks a real one, with the same refusal reasons.
type Verifier struct {
	Roots *x509.CertPool
}

var _ jig.Verifier = (*Verifier)(nil)

type pending struct {
	ek                *x509.Certificate
	blob, enc, secret []byte
}

func refuse(reason, format string, a ...any) error {
	return &jig.Refusal{Reason: reason, Detail: fmt.Sprintf(format, a...)}
}

// Begin checks the statement and makes the activation challenge: a
// 70-byte blob and a 258-byte encrypted secret (the sizes for an RSA EK).
func (v *Verifier) Begin(stmt, nonce []byte, csrPub crypto.PublicKey) (jig.Pending, error) {
	var st Statement
	if err := json.Unmarshal(stmt, &st); err != nil {
		return nil, refuse("malformed", "statement: %v", err)
	}
	if len(st.X5C) == 0 {
		return nil, refuse("no-ek-cert", "statement has no EK certificate")
	}
	ek, err := x509.ParseCertificate(st.X5C[0])
	if err != nil {
		return nil, refuse("malformed", "EK certificate: %v", err)
	}
	inter := x509.NewCertPool()
	for _, der := range st.X5C[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := ek.Verify(x509.VerifyOptions{Roots: v.Roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, refuse("ek-untrusted", "EK certificate from %q: %v", ek.Issuer.CommonName, err)
	}
	if !bytes.Equal(st.Nonce, nonce) {
		return nil, refuse("nonce", "statement is over nonce %x, not %x", st.Nonce, nonce)
	}
	want, err := x509.MarshalPKIXPublicKey(csrPub)
	if err != nil || !bytes.Equal(want, st.Pub) {
		return nil, refuse("key-not-csr", "the certified key is not the CSR's key")
	}
	if !st.FixedTPM {
		return nil, refuse("key-attributes", "the certified key lacks fixedTPM")
	}
	p := &pending{ek: ek, blob: make([]byte, 70), enc: make([]byte, 258), secret: make([]byte, SecretSize)}
	for _, b := range [][]byte{p.blob, p.enc, p.secret} {
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
	}
	copy(p.enc, xorStream(ekSecret(ek), p.blob, p.secret))
	return p, nil
}

func (p *pending) Challenge() ([]byte, []byte) { return p.blob, p.enc }

func (p *pending) Finish(secret []byte) (*jig.Attested, error) {
	if !bytes.Equal(secret, p.secret) {
		return nil, refuse("activation-failed", "wrong activation secret: the AK is not in the EK's TPM")
	}
	return &jig.Attested{EKCert: p.ek, HWType: HWType, HWSerialNum: p.ek.SerialNumber.Bytes()}, nil
}

// HardwareModuleNameSAN builds a subjectAltName extension holding one
// otherName hardwareModuleName (RFC 4108), for ca.Local in tests.
func HardwareModuleNameSAN(hwType asn1.ObjectIdentifier, serial []byte) (pkix.Extension, error) {
	hw, err := asn1.Marshal(struct {
		Type   asn1.ObjectIdentifier
		Serial []byte
	}{hwType, serial})
	if err != nil {
		return pkix.Extension{}, err
	}
	oid, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 4})
	val, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: hw})
	other, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: append(oid, val...)})
	names, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: other})
	if err != nil {
		return pkix.Extension{}, err
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: names}, nil
}
