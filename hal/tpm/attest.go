package tpm

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// ErrNoEKCert means the TPM holds no EK certificate that key attestation
// can use: none at the RSA-2048 or ECC P-256 EK certificate NV indices.
var ErrNoEKCert = errors.New("no usable EK certificate in TPM NV")

// AKTemplate is the attestation key: a restricted ECC P-256 signing key
// (ECDSA with SHA-256 only) made as a primary in the endorsement
// hierarchy. CreatePrimary is deterministic, so the same template gives
// the same AK on one TPM every time (until the endorsement seed changes),
// and nothing is persisted. restricted means the TPM signs with it only
// digests it computed itself over data that does not start with
// TPM_GENERATED_VALUE, so the AK cannot be made to sign a forged
// TPMS_ATTEST. The verifier checks these attributes (enroll/attest).
var AKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		Restricted:          true,
		SignEncrypt:         true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		CurveID: tpm2.TPMECCNistP256,
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
}

// Attestation is what Attest returns: the raw parts of a key attestation
// statement. enroll/attest wraps them in its JSON Statement (hal imports
// no enroll package, so the statement type lives there).
type Attestation struct {
	// EKCerts is the EK certificate (DER) whose EK ActivateCredential
	// uses, then any intermediates (none today).
	EKCerts [][]byte
	// CertInfo is the marshalled TPMS_ATTEST of TPM2_Certify (without
	// the TPM2B size).
	CertInfo []byte
	// Sig is the AK's ECDSA signature over SHA-256(CertInfo), ASN.1 DER.
	Sig []byte
	// PubArea is the certified key's marshalled TPMT_PUBLIC.
	PubArea []byte
	// AKPub is the AK's marshalled TPMT_PUBLIC.
	AKPub []byte
}

// ekSlot is an EK certificate NV index and the EK template its key is
// made from. Only the low-range indices, whose templates are the TCG
// default EK templates with PolicySecret(TPM_RH_ENDORSEMENT), are used.
type ekSlot struct {
	index    uint32
	template tpm2.TPMTPublic
}

var ekSlots = []ekSlot{
	{NVIndexECCEKCert, tpm2.ECCEKTemplate},
	{NVIndexRSAEKCert, tpm2.RSAEKTemplate},
}

// attestEK reads the EK certificate attestation uses (ECC P-256, then
// RSA 2048: the order EK uses) and returns it with its template.
func attestEK(tr transport.TPM) ([]byte, tpm2.TPMTPublic, error) {
	for _, s := range ekSlots {
		der, err := readNV(tr, s.index)
		if err != nil {
			continue
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			continue
		}
		if ekCertMatches(cert.PublicKey, s.template) {
			return der, s.template, nil
		}
	}
	return nil, tpm2.TPMTPublic{}, fmt.Errorf("%w: none at %#x (ECC P-256) or %#x (RSA 2048)", ErrNoEKCert, NVIndexECCEKCert, NVIndexRSAEKCert)
}

// ekCertMatches reports whether pub is a key the template can make.
func ekCertMatches(pub any, tmpl tpm2.TPMTPublic) bool {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return tmpl.Type == tpm2.TPMAlgRSA && k.N.BitLen() == 2048 && k.E == 65537
	case *ecdsa.PublicKey:
		return tmpl.Type == tpm2.TPMAlgECC && k.Curve == elliptic.P256()
	}
	return false
}

// createAK makes the AK; the caller flushes its handle.
func createAK(tr transport.TPM) (*tpm2.CreatePrimaryResponse, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(AKTemplate),
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("create AK: %w", err)
	}
	return rsp, nil
}

// Attest proves that key lives in this TPM: it makes the AK (AKTemplate),
// has it TPM2_Certify key with nonce as qualifying data, and returns the
// parts of the statement. The EK certificate is read from NV first; with
// none, the error wraps ErrNoEKCert. Every transient handle is flushed.
func (t *TPM) Attest(ctx context.Context, key *Key, nonce []byte) (*Attestation, error) {
	if key == nil || key.t != t {
		return nil, errors.New("attest: the key does not belong to this TPM")
	}
	if len(nonce) == 0 || len(nonce) > 64 {
		return nil, fmt.Errorf("attest: nonce is %d bytes, want 1 to 64", len(nonce))
	}
	var a *Attestation
	err := t.Do(ctx, func(tr transport.TPM) error {
		ekDER, _, err := attestEK(tr)
		if err != nil {
			return err
		}
		ak, err := createAK(tr)
		if err != nil {
			return err
		}
		defer flush(tr, ak.ObjectHandle)
		kh, err := key.loadLocked(tr)
		if err != nil {
			return err
		}
		defer flush(tr, kh)
		rsp, err := tpm2.Certify{
			ObjectHandle:   tpm2.AuthHandle{Handle: kh, Name: key.name, Auth: tpm2.PasswordAuth(nil)},
			SignHandle:     tpm2.AuthHandle{Handle: ak.ObjectHandle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("certify: %w", err)
		}
		ecc, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return fmt.Errorf("certify signature: %w", err)
		}
		sig, err := asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(ecc.SignatureR.Buffer), new(big.Int).SetBytes(ecc.SignatureS.Buffer),
		})
		if err != nil {
			return err
		}
		akPub, err := ak.OutPublic.Contents()
		if err != nil {
			return fmt.Errorf("AK public: %w", err)
		}
		kp, err := tpm2.Unmarshal[tpm2.TPM2BPublic](key.blob.Public)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadBlob, err)
		}
		a = &Attestation{
			EKCerts:  [][]byte{ekDER},
			CertInfo: append([]byte(nil), rsp.CertifyInfo.Bytes()...),
			Sig:      sig,
			PubArea:  append([]byte(nil), kp.Bytes()...),
			AKPub:    tpm2.Marshal(*akPub),
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

// ActivateCredential recreates the AK and the EK whose certificate Attest
// sent, and runs TPM2_ActivateCredential on credentialBlob (a
// TPM2B_ID_OBJECT's contents) and encryptedSecret (a
// TPM2B_ENCRYPTED_SECRET's contents) as a verifier made them for the AK's
// name. It returns the credential: the TPM releases it only if the EK is
// its own and the AK named in the blob is loaded in it. The EK's policy
// is PolicySecret(TPM_RH_ENDORSEMENT) with the empty endorsement auth.
func (t *TPM) ActivateCredential(ctx context.Context, credentialBlob, encryptedSecret []byte) ([]byte, error) {
	var secret []byte
	err := t.Do(ctx, func(tr transport.TPM) error {
		_, tmpl, err := attestEK(tr)
		if err != nil {
			return err
		}
		ek, err := tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHEndorsement,
			InPublic:      tpm2.New2B(tmpl),
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("create EK: %w", err)
		}
		defer flush(tr, ek.ObjectHandle)
		ak, err := createAK(tr)
		if err != nil {
			return err
		}
		defer flush(tr, ak.ObjectHandle)
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.ObjectHandle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle: tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name,
				Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)},
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encryptedSecret},
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("activate credential: %w", err)
		}
		secret = append([]byte(nil), rsp.CertInfo.Buffer...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return secret, nil
}

// ekPolicy satisfies the default EK templates' policy:
// PolicySecret(TPM_RH_ENDORSEMENT) with the empty endorsement auth.
func ekPolicy(tr transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: handle,
		NonceTPM:      nonceTPM,
	}.Execute(tr)
	return err
}
