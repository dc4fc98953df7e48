package attest

import (
	"context"
	"errors"

	"devid/hal/tpm"
)

// Device is the device side of attestation for one TPM key. Its methods
// match what the factory bus needs (Attest answers ATTEST, Activate
// answers ACTIVATE).
type Device struct {
	TPM *tpm.TPM
	Key *tpm.Key
}

// Attest has the TPM certify the key over nonce and returns the
// statement as JSON. With no EK certificate in the TPM the error wraps
// tpm.ErrNoEKCert.
func (d *Device) Attest(ctx context.Context, nonce []byte) ([]byte, error) {
	if d == nil || d.TPM == nil || d.Key == nil {
		return nil, errors.New("attest: no TPM key")
	}
	a, err := d.TPM.Attest(ctx, d.Key, nonce)
	if err != nil {
		return nil, err
	}
	return FromTPM(a).Marshal()
}

// Activate releases the credential of a Verifier's challenge.
func (d *Device) Activate(ctx context.Context, credentialBlob, encryptedSecret []byte) ([]byte, error) {
	if d == nil || d.TPM == nil {
		return nil, errors.New("attest: no TPM")
	}
	return d.TPM.ActivateCredential(ctx, credentialBlob, encryptedSecret)
}
