package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// SigningKeyTemplate is the public template of device keys: ECC P-256,
// sign only, no fixed scheme (the hash is chosen per signature), and the
// attributes that make it non-exportable: fixedTPM and fixedParent (it
// can never be duplicated) and sensitiveDataOrigin (the TPM generated the
// private part). userWithAuth with an empty auth value lets the agent use
// it without a policy session.
var SigningKeyTemplate = signingKeyTemplate(tpm2.TPMECCNistP256)

// signingKeyTemplate is the device key template on curve id.
func signingKeyTemplate(id tpm2.TPMECCCurve) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			CurveID: id,
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// Blob is a key as stored outside the TPM: its TPM2B_PUBLIC and its
// TPM2B_PRIVATE, which the TPM encrypted with the storage root key. It is
// useless on any other TPM, and on this one after TPM2_Clear.
type Blob struct {
	Public  []byte // marshalled TPM2B_PUBLIC
	Private []byte // marshalled TPM2B_PRIVATE
}

// Parent handle value meaning "the primary key the owner hierarchy makes
// from the TCG-standard storage template" in the TSS2 key format.
const parentOwnerSRK = 0x40000001

// oidLoadableKey is id-loadablekey from the TSS2 ASN.1 key format.
var oidLoadableKey = asn1.ObjectIdentifier{2, 23, 133, 10, 1, 3}

// tssKey is the "TSS2 PRIVATE KEY" ASN.1 structure used by
// openssl_tpm2_engine and tpm2-openssl.
type tssKey struct {
	Type      asn1.ObjectIdentifier
	EmptyAuth bool          `asn1:"explicit,tag:0,optional"`
	Policy    asn1.RawValue `asn1:"explicit,tag:1,optional"`
	Secret    asn1.RawValue `asn1:"explicit,tag:2,optional"`
	Parent    int64
	PubKey    []byte
	PrivKey   []byte
}

const pemType = "TSS2 PRIVATE KEY"

// MarshalPEM encodes the blob as a "TSS2 PRIVATE KEY" PEM block (a
// loadable key with an empty auth value, parented by the owner SRK).
func (b Blob) MarshalPEM() ([]byte, error) {
	der, err := asn1.Marshal(tssKey{Type: oidLoadableKey, EmptyAuth: true, Parent: parentOwnerSRK, PubKey: b.Public, PrivKey: b.Private})
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
}

// ParseBlobPEM parses what MarshalPEM wrote. Keys with a policy, an
// imported secret or another parent are rejected.
func ParseBlobPEM(data []byte) (Blob, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return Blob{}, fmt.Errorf("%w: no PEM block", ErrBadBlob)
	}
	if block.Type != pemType {
		return Blob{}, fmt.Errorf("%w: PEM type %q, want %q", ErrBadBlob, block.Type, pemType)
	}
	if len(bytes.TrimLeft(rest, " \n\r\t")) != 0 {
		return Blob{}, fmt.Errorf("%w: trailing data after the PEM block", ErrBadBlob)
	}
	var k tssKey
	tail, err := asn1.Unmarshal(block.Bytes, &k)
	if err != nil {
		return Blob{}, fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	switch {
	case len(tail) != 0:
		return Blob{}, fmt.Errorf("%w: trailing data after the key", ErrBadBlob)
	case !k.Type.Equal(oidLoadableKey):
		return Blob{}, fmt.Errorf("%w: key type %v is not a loadable key (%v)", ErrBadBlob, k.Type, oidLoadableKey)
	case len(k.Policy.FullBytes) != 0 || len(k.Secret.FullBytes) != 0:
		return Blob{}, fmt.Errorf("%w: keys with a policy or secret are not supported", ErrBadBlob)
	case k.Parent != parentOwnerSRK:
		return Blob{}, fmt.Errorf("%w: parent %#x, want the owner SRK %#x", ErrBadBlob, k.Parent, parentOwnerSRK)
	}
	b := Blob{Public: k.PubKey, Private: k.PrivKey}
	if _, err := b.publicKey(); err != nil {
		return Blob{}, err
	}
	if _, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](b.Private); err != nil {
		return Blob{}, fmt.Errorf("%w: private area: %v", ErrBadBlob, err)
	}
	return b, nil
}

// publicKey decodes the public area and checks it is a key we made.
func (b Blob) publicKey() (*ecdsa.PublicKey, error) {
	_, key, err := b.parsePublic()
	return key, err
}

// parsePublic is publicKey that also returns the decoded public area.
func (b Blob) parsePublic() (*tpm2.TPMTPublic, *ecdsa.PublicKey, error) {
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b.Public)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: public area: %v", ErrBadBlob, err)
	}
	pub, err := p2b.Contents()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: public area: %v", ErrBadBlob, err)
	}
	if pub.Type != tpm2.TPMAlgECC {
		return nil, nil, fmt.Errorf("%w: key type %v, want ECC", ErrBadBlob, pub.Type)
	}
	if a := pub.ObjectAttributes; !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt || a.Decrypt || a.Restricted {
		return nil, nil, fmt.Errorf("%w: attributes %+v are not those of a non-exportable signing key", ErrBadBlob, a)
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 && parms.CurveID != tpm2.TPMECCNistP384 {
		return nil, nil, fmt.Errorf("%w: curve %v, want NIST P-256 or P-384", ErrBadBlob, parms.CurveID)
	}
	key, err := tpm2.ECDSAPub(parms, point)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	return pub, key, nil
}

// srk makes the TCG-standard ECC P-256 storage root key. CreatePrimary is
// deterministic: the same template on the same TPM gives the same key
// until TPM2_Clear, so nothing needs to be persisted in NV for it.
// The caller must flush the returned handle.
func srk(tr transport.TPM) (*tpm2.CreatePrimaryResponse, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("create SRK: %w", err)
	}
	return rsp, nil
}

func flush(tr transport.TPM, h tpm2.TPMHandle) {
	// A failed flush leaves a slot in use until the next Open flushes
	// leftovers; there is nothing better to do with the error here.
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tr)
}

// ErrCurveUnsupported means CreateKeyCurve was asked for a curve other
// than P-256 or P-384.
var ErrCurveUnsupported = errors.New("unsupported curve for a TPM key")

// SigningKeyTemplateFor is SigningKeyTemplate on curve (P-256 or P-384),
// with the same non-exportable attributes.
func SigningKeyTemplateFor(curve elliptic.Curve) (tpm2.TPMTPublic, error) {
	switch curve {
	case nil, elliptic.P256():
		return SigningKeyTemplate, nil
	case elliptic.P384():
		return signingKeyTemplate(tpm2.TPMECCNistP384), nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("%w: %s", ErrCurveUnsupported, curve.Params().Name)
}

// CreateKey makes a new non-exportable P-256 signing key under the SRK
// and returns its blob. The key is not left loaded. It uses
// TPM2_CreateLoaded where the TPM has it (one command) and falls back to
// TPM2_Create.
func (t *TPM) CreateKey(ctx context.Context) (Blob, error) {
	return t.CreateKeyCurve(ctx, elliptic.P256())
}

// CreateKeyCurve is CreateKey on curve: P-256 or ECC NIST P-384 (which
// signs with SHA-384). A TPM without P-384 refuses the command.
func (t *TPM) CreateKeyCurve(ctx context.Context, curve elliptic.Curve) (Blob, error) {
	tmpl, err := SigningKeyTemplateFor(curve)
	if err != nil {
		return Blob{}, err
	}
	var b Blob
	err = t.Do(ctx, func(tr transport.TPM) error {
		parent, err := srk(tr)
		if err != nil {
			return err
		}
		defer flush(tr, parent.ObjectHandle)
		ph := tpm2.NamedHandle{Handle: parent.ObjectHandle, Name: parent.Name}
		if t.caps.CreateLoaded {
			rsp, err := tpm2.CreateLoaded{
				ParentHandle: tpm2.AuthHandle{Handle: ph.Handle, Name: ph.Name, Auth: tpm2.PasswordAuth(nil)},
				InPublic:     tpm2.New2BTemplate(&tmpl),
			}.Execute(tr)
			switch {
			case err == nil:
				flush(tr, rsp.ObjectHandle)
				b = Blob{Public: tpm2.Marshal(rsp.OutPublic), Private: tpm2.Marshal(rsp.OutPrivate)}
				return nil
			case errors.Is(err, tpm2.TPMRCCommandCode):
				// Listed by the probe but refused: remember, use Create.
				t.caps.CreateLoaded = false
			default:
				return fmt.Errorf("create key (CreateLoaded): %w", err)
			}
		}
		rsp, err := tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: ph.Handle, Name: ph.Name, Auth: tpm2.PasswordAuth(nil)},
			InPublic:     tpm2.New2B(tmpl),
		}.Execute(tr)
		if err != nil {
			return fmt.Errorf("create key: %w", err)
		}
		b = Blob{Public: tpm2.Marshal(rsp.OutPublic), Private: tpm2.Marshal(rsp.OutPrivate)}
		return nil
	})
	if err != nil {
		return Blob{}, err
	}
	if _, err := b.publicKey(); err != nil {
		return Blob{}, fmt.Errorf("TPM returned an unexpected key: %w", err)
	}
	return b, nil
}

// Key is a device key known to the TPM. It implements crypto.Signer; the
// private part never leaves the TPM. Safe for concurrent use.
//
// A Key holds no TPM object slot between operations: discrete TPMs have
// only 3, and rotation needs two keys at once. After the first load its
// context is saved (TPM2_ContextSave), and each Sign does ContextLoad,
// Sign, FlushContext. If the saved context no longer loads (TPM reset,
// someone flushed it), the key is loaded again from its blob under the SRK.
type Key struct {
	t    *TPM
	blob Blob
	pub  *ecdsa.PublicKey

	name tpm2.TPM2BName

	saved *tpm2.TPMSContext // guarded by t.mu
}

var _ crypto.Signer = (*Key)(nil)

// LoadKey loads a blob made by CreateKey on this TPM and returns the key.
// It fails if the blob belongs to another TPM or the TPM was cleared.
func (t *TPM) LoadKey(ctx context.Context, b Blob) (*Key, error) {
	tp, pub, err := b.parsePublic()
	if err != nil {
		return nil, err
	}
	name, err := tpm2.ObjectName(tp)
	if err != nil {
		return nil, fmt.Errorf("%w: name: %v", ErrBadBlob, err)
	}
	k := &Key{t: t, blob: b, pub: pub, name: *name}
	err = t.Do(ctx, func(tr transport.TPM) error {
		h, err := k.loadLocked(tr)
		if err != nil {
			return err
		}
		flush(tr, h)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

// loadLocked makes the key usable and returns its transient handle, which
// the caller must flush. It tries the saved context first, then loads the
// blob under a fresh SRK (flushing the SRK at once) and saves the context.
func (k *Key) loadLocked(tr transport.TPM) (tpm2.TPMHandle, error) {
	if k.saved != nil {
		rsp, err := tpm2.ContextLoad{Context: *k.saved}.Execute(tr)
		if err == nil {
			return tpm2.TPMHandle(rsp.LoadedHandle), nil
		}
		k.saved = nil
	}
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](k.blob.Public)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](k.blob.Private)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrBadBlob, err)
	}
	parent, err := srk(tr)
	if err != nil {
		return 0, err
	}
	rsp, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.ObjectHandle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPublic:     *pub,
		InPrivate:    *priv,
	}.Execute(tr)
	flush(tr, parent.ObjectHandle)
	if errors.Is(err, tpm2.TPMRCIntegrity) {
		return 0, fmt.Errorf("load key: %w: %v", ErrWrongTPM, err)
	}
	if err != nil {
		return 0, fmt.Errorf("load key: %w", err)
	}
	if saved, err := (tpm2.ContextSave{SaveHandle: rsp.ObjectHandle}).Execute(tr); err == nil {
		k.saved = &saved.Context
	}
	return rsp.ObjectHandle, nil
}

// Public implements crypto.Signer.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// Blob returns the key's blob.
func (k *Key) Blob() Blob { return k.blob }

// ErrHashUnsupported means Sign was asked for a hash the key cannot use.
var ErrHashUnsupported = errors.New("unsupported hash for TPM signing")

var tpmHash = map[crypto.Hash]tpm2.TPMAlgID{
	crypto.SHA1:   tpm2.TPMAlgSHA1,
	crypto.SHA256: tpm2.TPMAlgSHA256,
	crypto.SHA384: tpm2.TPMAlgSHA384,
	crypto.SHA512: tpm2.TPMAlgSHA512,
}

// Sign implements crypto.Signer: it signs digest with ECDSA inside the TPM
// and returns the ASN.1 (R, S) signature, as crypto/ecdsa does. rand is
// not used; the TPM has its own. opts.HashFunc() must name the hash that
// made digest (SHA-1, SHA-256, SHA-384 or SHA-512).
//
// Each signature is checked against the public key before it is returned,
// which catches a wrong object behind a reused context or handle (and TPM
// faults); the key is then loaded again from its blob and signs once more.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.SignContext(context.Background(), digest, opts)
}

// SignContext is Sign with a context bounding the wait for the TPM.
func (k *Key) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := opts.HashFunc()
	alg, ok := tpmHash[h]
	if !ok {
		return nil, fmt.Errorf("%w: %v", ErrHashUnsupported, h)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("tpm sign: digest is %d bytes, %v needs %d", len(digest), h, h.Size())
	}
	var sig []byte
	err := k.t.Do(ctx, func(tr transport.TPM) error {
		var err error
		for attempt := 0; attempt < 2; attempt++ {
			var handle tpm2.TPMHandle
			if handle, err = k.loadLocked(tr); err != nil {
				return err
			}
			sig, err = k.signLocked(tr, handle, alg, digest)
			flush(tr, handle)
			if err == nil || !errors.Is(err, errStaleKey) {
				return err
			}
			k.saved = nil
		}
		return err
	})
	return sig, err
}

var errStaleKey = errors.New("TPM object is not this key")

func (k *Key) signLocked(tr transport.TPM, h tpm2.TPMHandle, alg tpm2.TPMAlgID, digest []byte) ([]byte, error) {
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: h, Name: k.name, Auth: tpm2.PasswordAuth(nil)},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg}),
		},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm sign: %w", err)
	}
	ecc, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errStaleKey, err)
	}
	r := new(big.Int).SetBytes(ecc.SignatureR.Buffer)
	s := new(big.Int).SetBytes(ecc.SignatureS.Buffer)
	der, err := asn1.Marshal(struct{ R, S *big.Int }{r, s})
	if err != nil {
		return nil, err
	}
	if !ecdsa.VerifyASN1(k.pub, digest, der) {
		return nil, fmt.Errorf("%w: signature does not verify", errStaleKey)
	}
	return der, nil
}

// Close forgets the saved context. The key holds no TPM slot, so there is
// nothing to flush; Close exists so callers can treat keys uniformly.
func (k *Key) Close() error {
	k.t.mu.Lock()
	defer k.t.mu.Unlock()
	k.saved = nil
	return nil
}

// TPMAddr is the address of the TPM holding the key.
func (k *Key) TPMAddr() string { return k.t.Addr() }
