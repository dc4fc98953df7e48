//go:build pkcs11 && cgo

// The PKCS#11 back-end of the CA keys, through github.com/ThalesGroup/crypto11
// (which loads the module with dlopen, so it needs cgo). Built only with
// the pkcs11 tag; without it openPKCS11 stays nil and a PKCS#11 URI gets
// ErrNoPKCS11 (keysource.go, docs/ca.md).

package ca

import (
	"crypto"
	"crypto/elliptic"
	"errors"
	"fmt"
	"os"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

func init() { openPKCS11 = openCrypto11 }

type crypto11Token struct {
	ctx *crypto11.Context
	u   *PKCS11URI
}

func openCrypto11(u *PKCS11URI) (pkcs11Token, error) {
	if _, err := os.Stat(u.ModulePath); err != nil {
		return nil, fmt.Errorf("PKCS#11 module-path: %w", err)
	}
	pin, err := u.PIN()
	if err != nil {
		return nil, err
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: u.ModulePath, TokenLabel: u.TokenLabel,
		TokenSerial: u.TokenSerial, SlotNumber: u.SlotID, Pin: pin})
	if err != nil {
		return nil, describePKCS11(u, err)
	}
	return &crypto11Token{ctx: ctx, u: u}, nil
}

// describePKCS11 turns the module's errors into ones naming what was
// wrong.
func describePKCS11(u *PKCS11URI, err error) error {
	var p11 pkcs11.Error
	switch {
	case err.Error() == "could not find PKCS#11 token":
		return fmt.Errorf("PKCS#11 module %s has no %s (list the tokens with the module's tool, e.g. softhsm2-util --show-slots)", u.ModulePath, u.Token())
	case errors.As(err, &p11) && (p11 == pkcs11.CKR_PIN_INCORRECT || p11 == pkcs11.CKR_PIN_INVALID || p11 == pkcs11.CKR_PIN_LEN_RANGE):
		return fmt.Errorf("PKCS#11 %s: login refused, wrong user PIN (%v)", u.Token(), err)
	case errors.As(err, &p11) && p11 == pkcs11.CKR_PIN_LOCKED:
		return fmt.Errorf("PKCS#11 %s: the user PIN is locked (too many wrong PINs); the security officer must reset it (%v)", u.Token(), err)
	case errors.As(err, &p11) && p11 == pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
		return fmt.Errorf("PKCS#11 %s: the token has no user PIN yet: initialise it first (%v)", u.Token(), err)
	}
	return fmt.Errorf("PKCS#11 module %s, %s: %w", u.ModulePath, u.Token(), err)
}

func (t *crypto11Token) Generate(label string, id []byte) (crypto.Signer, error) {
	for _, q := range []struct {
		what        string
		id, label   []byte
		description string
	}{{"label", nil, []byte(label), fmt.Sprintf("labelled %q", label)}, {"id", id, nil, fmt.Sprintf("with id %x", id)}} {
		if len(q.id) == 0 && len(q.label) == 0 {
			continue
		}
		found, err := t.ctx.FindKeyPairs(q.id, q.label)
		if err != nil {
			return nil, describePKCS11(t.u, err)
		}
		if len(found) > 0 {
			return nil, fmt.Errorf("PKCS#11 %s already holds a key %s: choose another object= (or id=) in the URI, or delete that key", t.u.Token(), q.description)
		}
	}
	// crypto11 makes the private half CKA_TOKEN, CKA_SIGN, CKA_SENSITIVE
	// and not CKA_EXTRACTABLE unless told otherwise; say so explicitly
	// all the same, so that no default can change it.
	pub, err := crypto11.NewAttributeSetWithIDAndLabel(id, []byte(label))
	if err != nil {
		return nil, err
	}
	priv := pub.Copy()
	for _, a := range []struct {
		t crypto11.AttributeType
		v bool
	}{{crypto11.CkaToken, true}, {crypto11.CkaPrivate, true}, {crypto11.CkaSign, true},
		{crypto11.CkaSensitive, true}, {crypto11.CkaExtractable, false}} {
		if err := priv.Set(a.t, a.v); err != nil {
			return nil, err
		}
	}
	k, err := t.ctx.GenerateECDSAKeyPairWithAttributes(pub, priv, elliptic.P256())
	if err != nil {
		return nil, fmt.Errorf("PKCS#11 %s: generate a P-256 key: %w", t.u.Token(), describePKCS11(t.u, err))
	}
	return k, nil
}

func (t *crypto11Token) Find(label string, id []byte) (crypto.Signer, error) {
	var l []byte
	if label != "" {
		l = []byte(label)
	}
	found, err := t.ctx.FindKeyPairs(id, l)
	if err != nil {
		return nil, describePKCS11(t.u, err)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("PKCS#11 %s holds no key pair labelled %q with id %x", t.u.Token(), label, id)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("PKCS#11 %s holds %d key pairs labelled %q with id %x: the URI must name exactly one", t.u.Token(), len(found), label, id)
}

func (t *crypto11Token) Delete(k crypto.Signer) error {
	s, ok := k.(crypto11.Signer)
	if !ok {
		return fmt.Errorf("PKCS#11: %T is not a token key", k)
	}
	return s.Delete()
}

func (t *crypto11Token) Close() error { return t.ctx.Close() }
