package jig

import (
	"crypto"
	"errors"

	"devid/enroll/attest"
)

// NewAttestVerifier is the Verifier for enroll/attest's Verifier: it parses
// the statement strictly (attest.ParseStatement; a statement that does not
// parse is refused as malformed) and turns an *attest.Refusal into a
// *Refusal with the same reason and detail.
func NewAttestVerifier(v *attest.Verifier) Verifier { return attestVerifier{v} }

type attestVerifier struct{ v *attest.Verifier }

func (a attestVerifier) Begin(statement, nonce []byte, csrPub crypto.PublicKey) (Pending, error) {
	st, err := attest.ParseStatement(statement)
	if err != nil {
		return nil, asRefusal(err, attest.ReasonMalformed)
	}
	p, err := a.v.Begin(st, nonce, csrPub)
	if err != nil {
		return nil, asRefusal(err, "")
	}
	return attestPending{p}, nil
}

type attestPending struct{ p *attest.Pending }

func (p attestPending) Challenge() ([]byte, []byte) {
	c := p.p.Challenge()
	return c.CredentialBlob, c.EncryptedSecret
}

func (p attestPending) Finish(secret []byte) (*Attested, error) {
	r, err := p.p.Finish(secret)
	if err != nil {
		return nil, asRefusal(err, "")
	}
	return &Attested{EKCert: r.EKCert, HWType: r.HWType, HWSerialNum: r.HWSerialNum}, nil
}

// asRefusal maps an *attest.Refusal to a *Refusal; any other error
// becomes a Refusal with reason orElse, or stays as it is when orElse is
// "".
func asRefusal(err error, orElse string) error {
	var r *attest.Refusal
	switch {
	case errors.As(err, &r):
		return &Refusal{Reason: r.Reason, Detail: r.Detail}
	case orElse != "":
		return &Refusal{Reason: orElse, Detail: err.Error()}
	}
	return err
}
