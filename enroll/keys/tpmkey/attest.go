//go:build !notpm

package tpmkey

import (
	"context"
	"errors"
	"fmt"

	"devid/enroll/attest"
	"devid/enroll/factory"
	"devid/hal/tpm"
)

var _ factory.Attester = (*Store)(nil)

// Attest implements factory.Attester: the TPM certifies the store's key
// over nonce (enroll/attest Device), and the statement comes back as
// JSON. A TPM without an EK certificate is factory.ErrNoEKCert.
func (s *Store) Attest(ctx context.Context, nonce []byte) ([]byte, error) {
	k, err := s.Load()
	if err != nil {
		return nil, err
	}
	defer k.(*Key).Close()
	t, release, err := Acquire(s.spec.Addr)
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	defer release()
	st, err := (&attest.Device{TPM: t, Key: k.(*Key).Key}).Attest(ctx, nonce)
	if errors.Is(err, tpm.ErrNoEKCert) {
		return nil, fmt.Errorf("%w: %w", factory.ErrNoEKCert, err)
	}
	return st, err
}

// Activate implements factory.Attester: TPM2_ActivateCredential with the
// TPM's AK and EK.
func (s *Store) Activate(ctx context.Context, credentialBlob, encryptedSecret []byte) ([]byte, error) {
	t, release, err := Acquire(s.spec.Addr)
	if err != nil {
		return nil, fmt.Errorf("activate: %w", err)
	}
	defer release()
	return (&attest.Device{TPM: t}).Activate(ctx, credentialBlob, encryptedSecret)
}
