package agent

import (
	"crypto/x509"
	"errors"
	"fmt"

	"devid/enroll/certstore"
	"devid/enroll/credential"
	"devid/enroll/keys"
)

// StoreIdentity loads the identity from the configured key backend and
// the certificate store in the state directory.
type StoreIdentity struct {
	KeySpec  string
	StateDir string
}

// Load returns the key and chain, or an error wrapping ErrNoIdentity
// when either is missing. A key and certificate that do not match is
// an error, not "no identity": the agent must not silently re-key.
func (s StoreIdentity) Load() (*credential.Credential, error) {
	ks, err := keys.Open(s.KeySpec, s.StateDir)
	if err != nil {
		return nil, fmt.Errorf("key backend: %w", err)
	}
	key, err := ks.Load()
	if errors.Is(err, keys.ErrNoKey) {
		return nil, fmt.Errorf("%w: %v", ErrNoIdentity, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load key (%s): %w", ks.Name(), err)
	}
	chain, err := certstore.Open(s.StateDir, nil).Load()
	if err != nil {
		keys.Close(key)
		if errors.Is(err, certstore.ErrNoChain) {
			return nil, fmt.Errorf("%w: key present, no certificate installed", ErrNoIdentity)
		}
		return nil, err
	}
	if !chain.Matches(key.Public()) {
		keys.Close(key)
		return nil, fmt.Errorf("installed certificate (serial %s) does not match the device key", chain.Serial())
	}
	return &credential.Credential{Signer: key, Chain: append([]*x509.Certificate{chain.Leaf}, chain.Intermediates...)}, nil
}
