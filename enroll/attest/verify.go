package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// Refusal is why an attestation failed: a stable Reason code (the
// Reason constants) and a human Detail.
type Refusal struct{ Reason, Detail string }

func (r *Refusal) Error() string { return "attestation refused: " + r.Reason + ": " + r.Detail }

// Reasons of a Refusal.
const (
	ReasonMalformed   = "malformed"         // statement or TPM structure does not parse
	ReasonNoEKCert    = "no-ek-cert"        // the TPM has no EK certificate
	ReasonEKUntrusted = "ek-untrusted"      // EK cert does not chain to Roots (unknown maker)
	ReasonSignature   = "certify-signature" // Sig does not verify with the AK
	ReasonNotCertify  = "not-certify"       // magic/type wrong
	ReasonNonce       = "nonce"             // ExtraData != the nonce (replayed / stale)
	ReasonName        = "certify-name"      // certified name != Name(PubArea) (a Certify over a different key)
	ReasonKeyMismatch = "key-not-csr"       // PubArea key != CSR key
	ReasonAttributes  = "key-attributes"    // missing fixedTPM / fixedParent / sensitiveDataOrigin, or a bad AK
	ReasonActivation  = "activation-failed" // wrong secret: the AK is not in the EK's TPM
)

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Challenge is the activation challenge for the device: the contents of
// a TPM2B_ID_OBJECT and of a TPM2B_ENCRYPTED_SECRET, for
// TPM2_ActivateCredential.
type Challenge struct{ CredentialBlob, EncryptedSecret []byte }

// Verifier checks attestation statements on the jig.
type Verifier struct {
	Roots         *x509.CertPool   // TPM maker roots (EK certificate trust)
	Intermediates *x509.CertPool   // optional, added to the statement's own
	Now           func() time.Time // nil = time.Now
	Rand          io.Reader        // nil = crypto/rand
}

// Pending is a statement that passed every check Begin makes, waiting
// for the device to activate the credential.
type Pending struct {
	challenge Challenge
	secret    []byte
	result    Result
	done      bool
}

// Result is a successful attestation.
type Result struct {
	EKCert        *x509.Certificate
	EKFingerprint string // "sha256:<hex>" of the EK certificate DER
	AKName        []byte // the AK's TPM name (nameAlg ID then digest)
	// HardwareModuleName (RFC 4108) for the DevID certificate: see
	// HWTypeTPM2 and HWSerialNum.
	HWType      asn1.ObjectIdentifier
	HWSerialNum []byte
}

// Nonce size bounds: the jig sends 32 bytes; a TPM takes at most 64.
const (
	MinNonce = 16
	MaxNonce = 64
)

// credentialSize is the size of the activation secret: the EK name
// algorithm's digest size (SHA-256), the most a credential may hold.
const credentialSize = 32

// Begin checks everything that needs no TPM round trip, in this order:
// the statement is well formed; it has an EK certificate that chains to
// Roots; AKPub is a restricted ECC P-256 signing key that never left its
// TPM; Sig verifies with it over CertInfo; CertInfo is a TPM-made
// TPM2_Certify over nonce, naming PubArea; PubArea's key is csrPub and
// has fixedTPM, fixedParent and sensitiveDataOrigin. Then it makes the
// activation challenge: a credential encrypted to the EK for the AK's
// name. Every failure is a *Refusal.
func (v *Verifier) Begin(st *Statement, nonce []byte, csrPub crypto.PublicKey) (*Pending, error) {
	if st == nil {
		return nil, refuse(ReasonMalformed, "no statement")
	}
	if len(nonce) < MinNonce || len(nonce) > MaxNonce {
		return nil, refuse(ReasonNonce, "the nonce is %d bytes, want %d to %d", len(nonce), MinNonce, MaxNonce)
	}
	if err := st.check(); err != nil {
		return nil, refuse(ReasonMalformed, "%v", err)
	}
	if len(st.X5C) == 0 {
		return nil, refuse(ReasonNoEKCert, "the statement carries no EK certificate")
	}
	ek, err := v.verifyEK(st.X5C)
	if err != nil {
		return nil, err
	}
	ekPub, err := ekPublicArea(ek.PublicKey)
	if err != nil {
		return nil, refuse(ReasonEKUntrusted, "%v", err)
	}
	ak, akKey, err := parseAK(st.AKPub)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(st.CertInfo)
	if !ecdsa.VerifyASN1(akKey, d[:], st.Sig) {
		return nil, refuse(ReasonSignature, "sig does not verify with akPub over certInfo")
	}
	if err := checkCertify(st.CertInfo, st.PubArea, nonce); err != nil {
		return nil, err
	}
	if err := checkKey(st.PubArea, csrPub); err != nil {
		return nil, err
	}
	akName, err := tpm2.ObjectName(ak)
	if err != nil {
		return nil, refuse(ReasonMalformed, "akPub name: %v", err)
	}
	enc, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		return nil, refuse(ReasonEKUntrusted, "EK public key: %v", err)
	}
	rnd := v.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	secret := make([]byte, credentialSize)
	if _, err := io.ReadFull(rnd, secret); err != nil {
		return nil, fmt.Errorf("attestation: random secret: %w", err)
	}
	blob, encSecret, err := tpm2.CreateCredential(rnd, enc, akName.Buffer, secret)
	if err != nil {
		return nil, fmt.Errorf("attestation: make credential: %w", err)
	}
	sum := sha256.Sum256(ek.Raw)
	return &Pending{
		challenge: Challenge{CredentialBlob: blob, EncryptedSecret: encSecret},
		secret:    secret,
		result: Result{
			EKCert:        ek,
			EKFingerprint: "sha256:" + hex.EncodeToString(sum[:]),
			AKName:        akName.Buffer,
			HWType:        HWTypeTPM2,
			HWSerialNum:   HWSerialNum(ek),
		},
	}, nil
}

// Challenge is what the device must activate.
func (p *Pending) Challenge() Challenge { return p.challenge }

// Finish compares the secret the device released with the one Begin
// chose (in constant time). It works once: a second call is refused.
func (p *Pending) Finish(secret []byte) (*Result, error) {
	if p.done {
		return nil, refuse(ReasonActivation, "the challenge was already answered")
	}
	p.done = true
	want := p.secret
	p.secret = nil
	if subtle.ConstantTimeCompare(want, secret) != 1 {
		return nil, refuse(ReasonActivation, "the device did not release the credential: its AK is not in the TPM of the EK certificate")
	}
	r := p.result
	return &r, nil
}

// parseAK decodes akPub and checks it is an AK as hal/tpm makes it: a
// restricted ECC P-256 signing key (ECDSA SHA-256) that never left its
// TPM.
func parseAK(b []byte) (*tpm2.TPMTPublic, *ecdsa.PublicKey, error) {
	ak, err := unmarshalExact[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, nil, refuse(ReasonMalformed, "akPub: %v", err)
	}
	a := ak.ObjectAttributes
	if ak.Type != tpm2.TPMAlgECC || ak.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, nil, refuse(ReasonAttributes, "akPub is type %v with name algorithm %v, want ECC with SHA-256", ak.Type, ak.NameAlg)
	}
	if !a.Restricted || !a.SignEncrypt || a.Decrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, nil, refuse(ReasonAttributes, "akPub attributes %s: want restricted, sign, fixedTPM, fixedParent, sensitiveDataOrigin, not decrypt", attrString(a))
	}
	parms, err := ak.Parameters.ECCDetail()
	if err != nil {
		return nil, nil, refuse(ReasonMalformed, "akPub parameters: %v", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 || parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, nil, refuse(ReasonAttributes, "akPub curve %v scheme %v, want NIST P-256 with ECDSA", parms.CurveID, parms.Scheme.Scheme)
	}
	if s, err := parms.Scheme.Details.ECDSA(); err != nil || s.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, nil, refuse(ReasonAttributes, "akPub scheme hash is not SHA-256")
	}
	point, err := ak.Unique.ECC()
	if err != nil {
		return nil, nil, refuse(ReasonMalformed, "akPub point: %v", err)
	}
	key, err := tpm2.ECDSAPub(parms, point)
	if err != nil || !onCurve(key) {
		return nil, nil, refuse(ReasonMalformed, "akPub point is not on P-256")
	}
	return ak, key, nil
}

// checkCertify checks that certInfo is a TPM-generated TPM2_Certify
// result over nonce, naming the key of pubArea.
func checkCertify(certInfo, pubArea, nonce []byte) error {
	if len(certInfo) >= 4 && binary.BigEndian.Uint32(certInfo) != uint32(tpm2.TPMGeneratedValue) {
		return refuse(ReasonNotCertify, "certInfo magic %#x, want TPM_GENERATED_VALUE", binary.BigEndian.Uint32(certInfo))
	}
	info, err := unmarshalExact[tpm2.TPMSAttest](certInfo)
	if err != nil {
		return refuse(ReasonMalformed, "certInfo: %v", err)
	}
	if info.Magic != tpm2.TPMGeneratedValue {
		return refuse(ReasonNotCertify, "certInfo magic %#x, want TPM_GENERATED_VALUE", uint32(info.Magic))
	}
	if info.Type != tpm2.TPMSTAttestCertify {
		return refuse(ReasonNotCertify, "certInfo type %#x, want TPM_ST_ATTEST_CERTIFY", uint16(info.Type))
	}
	if !bytes.Equal(info.ExtraData.Buffer, nonce) {
		return refuse(ReasonNonce, "certInfo extraData is not this attestation's nonce (replayed or stale)")
	}
	cert, err := info.Attested.Certify()
	if err != nil {
		return refuse(ReasonMalformed, "certInfo attested: %v", err)
	}
	pub, err := unmarshalExact[tpm2.TPMTPublic](pubArea)
	if err != nil {
		return refuse(ReasonMalformed, "pubArea: %v", err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return refuse(ReasonMalformed, "pubArea name: %v", err)
	}
	if !bytes.Equal(cert.Name.Buffer, name.Buffer) {
		return refuse(ReasonName, "certInfo certifies name %x, pubArea's name is %x", cert.Name.Buffer, name.Buffer)
	}
	return nil
}

// checkKey checks that pubArea is csrPub, a signing key that never left
// its TPM.
func checkKey(pubArea []byte, csrPub crypto.PublicKey) error {
	pub, err := unmarshalExact[tpm2.TPMTPublic](pubArea)
	if err != nil {
		return refuse(ReasonMalformed, "pubArea: %v", err)
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return refuse(ReasonMalformed, "pubArea key: %v", err)
	}
	eq, ok := key.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(csrPub) {
		return refuse(ReasonKeyMismatch, "pubArea's key is not the CSR's key")
	}
	if ek, ok := key.(*ecdsa.PublicKey); ok && !onCurve(ek) {
		return refuse(ReasonMalformed, "pubArea point is not on its curve")
	}
	a := pub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt || a.Restricted || a.Decrypt {
		return refuse(ReasonAttributes, "pubArea attributes %s: want fixedTPM, fixedParent, sensitiveDataOrigin, sign, not restricted, not decrypt", attrString(a))
	}
	return nil
}

func onCurve(k *ecdsa.PublicKey) bool {
	switch k.Curve {
	case elliptic.P256(), elliptic.P384(), elliptic.P521():
		_, err := k.ECDH()
		return err == nil
	}
	return false
}

// unmarshalExact decodes a TPM structure and refuses trailing bytes or
// any encoding that does not marshal back to the same bytes.
func unmarshalExact[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (*T, error) {
	v, err := tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, fmt.Errorf("%d bytes do not encode one %T exactly (trailing or non-canonical data)", len(b), *v)
	}
	return v, nil
}

// attrString lists the attributes that matter here.
func attrString(a tpm2.TPMAObject) string {
	var out []byte
	for _, f := range []struct {
		on   bool
		name string
	}{
		{a.FixedTPM, "fixedTPM"}, {a.FixedParent, "fixedParent"}, {a.SensitiveDataOrigin, "sensitiveDataOrigin"},
		{a.Restricted, "restricted"}, {a.SignEncrypt, "sign"}, {a.Decrypt, "decrypt"},
	} {
		if f.on {
			if len(out) > 0 {
				out = append(out, ',')
			}
			out = append(out, f.name...)
		}
	}
	if len(out) == 0 {
		return "(none)"
	}
	return string(out)
}
