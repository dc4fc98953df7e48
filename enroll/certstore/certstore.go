// Package certstore keeps the device certificate chain (leaf first, then
// intermediates, PEM) in the state directory, and installs a chain only
// after checking that it really belongs to this device:
//
//   - the leaf's public key is the device key;
//   - the leaf's subject CN is the device ID;
//   - the chain verifies to the configured factory root;
//   - the validity window is sane and covers now;
//   - KeyUsage includes digitalSignature and ExtKeyUsage includes clientAuth.
//
// A chain that fails any check is refused with a *RejectError and the store
// is left exactly as it was. The file is replaced atomically, so a power
// cut leaves the old chain or the new one, never a mix.
package certstore

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"devid/hal/atomicfile"
)

// ChainFile is the chain's file name inside the state directory.
const ChainFile = "device-chain.pem"

// MaxChainSize bounds a chain accepted from outside.
const MaxChainSize = 16 << 10

// maxLifetime rejects certificates whose window is absurd (a mis-typed
// validity in CA config); 30 years covers any real device life.
const maxLifetime = 30 * 365 * 24 * time.Hour

// ClockFloor is the earliest time a board clock is trusted. A factory
// board often boots at 1970; before this instant the store checks the
// chain as of the leaf's notBefore instead of refusing every certificate
// as "not yet valid".
var ClockFloor = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Sentinel errors callers branch on.
var (
	// ErrNoChain means no chain is installed.
	ErrNoChain = errors.New("no device certificate installed")
	// ErrRejected is wrapped by every *RejectError.
	ErrRejected = errors.New("certificate chain rejected")
)

// Reason is a stable, machine-readable rejection cause (also sent as the
// NAK detail on the factory bus).
type Reason string

// Rejection reasons.
const (
	ReasonMalformed   Reason = "malformed"
	ReasonKeyMismatch Reason = "key-mismatch"
	ReasonCNMismatch  Reason = "cn-mismatch"
	ReasonUntrusted   Reason = "untrusted"
	ReasonExpired     Reason = "expired"
	ReasonNotYetValid Reason = "not-yet-valid"
	ReasonValidity    Reason = "bad-validity"
	ReasonKeyUsage    Reason = "key-usage"
	ReasonNotLeaf     Reason = "not-leaf"
	ReasonNoRoot      Reason = "no-root"
)

// RejectError says why a chain was refused.
type RejectError struct {
	Reason Reason
	Detail string
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrRejected, e.Reason, e.Detail)
}

// Unwrap makes errors.Is(err, ErrRejected) true.
func (e *RejectError) Unwrap() error { return ErrRejected }

func reject(r Reason, format string, args ...any) error {
	return &RejectError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// Chain is an installed or candidate certificate chain. With the device
// key it makes a credential.Credential (devid/enroll/credential).
type Chain struct {
	Leaf          *x509.Certificate
	Intermediates []*x509.Certificate
	// PEM is the canonical encoding stored on disk: leaf then intermediates.
	PEM []byte
}

// Serial is the leaf serial number in lowercase hex.
func (c *Chain) Serial() string { return hex.EncodeToString(c.Leaf.SerialNumber.Bytes()) }

// NotAfter is when the leaf expires.
func (c *Chain) NotAfter() time.Time { return c.Leaf.NotAfter }

// Store is the chain file in one state directory.
type Store struct {
	dir   string
	roots *x509.CertPool
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// Open returns the store in stateDir that checks chains against roots
// (the factory trust anchor). roots may be nil for a store that only
// loads; Install then refuses with ReasonNoRoot.
func Open(stateDir string, roots *x509.CertPool) *Store {
	return &Store{dir: stateDir, roots: roots, Now: time.Now}
}

// Path is the chain file's path.
func (s *Store) Path() string { return filepath.Join(s.dir, ChainFile) }

// LoadRoots reads a PEM file of trust anchors.
func LoadRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("factory root: %w", err)
	}
	certs, err := ParsePEM(b)
	if err != nil {
		return nil, fmt.Errorf("factory root %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// ParsePEM parses every CERTIFICATE block in b; anything else in b, or no
// certificate at all, is an error.
func ParsePEM(b []byte) ([]*x509.Certificate, error) {
	if len(b) > MaxChainSize {
		return nil, fmt.Errorf("%d bytes of PEM, more than %d", len(b), MaxChainSize)
	}
	var certs []*x509.Certificate
	rest := bytes.TrimSpace(b)
	for len(rest) > 0 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, fmt.Errorf("certificate %d: not PEM", len(certs)+1)
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("certificate %d: PEM block is %q, want CERTIFICATE", len(certs)+1, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
		rest = bytes.TrimSpace(rest)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in PEM")
	}
	return certs, nil
}

// EncodePEM encodes certificates as consecutive PEM blocks.
func EncodePEM(certs ...*x509.Certificate) []byte {
	var buf bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// Check parses chainPEM (leaf first) and runs every install check against
// the device key pub and deviceID, without touching the disk.
func (s *Store) Check(chainPEM []byte, pub crypto.PublicKey, deviceID string) (*Chain, error) {
	certs, err := ParsePEM(chainPEM)
	if err != nil {
		return nil, reject(ReasonMalformed, "%v", err)
	}
	leaf := certs[0]
	c := &Chain{Leaf: leaf, Intermediates: certs[1:], PEM: EncodePEM(certs...)}

	if !c.Matches(pub) {
		return nil, reject(ReasonKeyMismatch, "leaf public key is not the device key")
	}
	if leaf.Subject.CommonName != deviceID {
		return nil, reject(ReasonCNMismatch, "leaf CN %q, device ID %q", leaf.Subject.CommonName, deviceID)
	}
	if leaf.IsCA {
		return nil, reject(ReasonNotLeaf, "leaf is a CA certificate")
	}
	if !leaf.NotAfter.After(leaf.NotBefore) || leaf.NotAfter.Sub(leaf.NotBefore) > maxLifetime {
		return nil, reject(ReasonValidity, "validity %s to %s", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	now := s.Now()
	if now.Before(ClockFloor) {
		now = leaf.NotBefore.Add(time.Second)
	}
	if now.After(leaf.NotAfter) {
		return nil, reject(ReasonExpired, "leaf expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, reject(ReasonNotYetValid, "leaf valid from %s, clock says %s", leaf.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return nil, reject(ReasonKeyUsage, "KeyUsage lacks digitalSignature")
	}
	clientAuth := false
	for _, u := range leaf.ExtKeyUsage {
		clientAuth = clientAuth || u == x509.ExtKeyUsageClientAuth
	}
	if !clientAuth {
		return nil, reject(ReasonKeyUsage, "ExtKeyUsage lacks clientAuth")
	}
	if s.roots == nil {
		return nil, reject(ReasonNoRoot, "no factory root configured")
	}
	inter := x509.NewCertPool()
	for _, ic := range c.Intermediates {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: s.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, reject(ReasonUntrusted, "%v", err)
	}
	return c, nil
}

// Install checks chainPEM as Check does and then stores it atomically.
// Installing the chain that is already installed succeeds without writing.
func (s *Store) Install(chainPEM []byte, pub crypto.PublicKey, deviceID string) (*Chain, error) {
	c, err := s.Check(chainPEM, pub, deviceID)
	if err != nil {
		return nil, err
	}
	if old, err := os.ReadFile(s.Path()); err == nil && bytes.Equal(old, c.PEM) {
		return c, nil
	}
	if err := atomicfile.EnsurePrivateDir(s.dir); err != nil {
		return nil, fmt.Errorf("install chain: %w", err)
	}
	if err := atomicfile.WriteFile(s.Path(), c.PEM, 0o600); err != nil {
		return nil, fmt.Errorf("install chain: %w", err)
	}
	return c, nil
}

// Load returns the installed chain, or an error wrapping ErrNoChain. It
// does not re-verify trust; callers that need to know whether the chain
// still matches the key use Matches.
func (s *Store) Load() (*Chain, error) {
	b, err := os.ReadFile(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoChain
	}
	if err != nil {
		return nil, fmt.Errorf("load chain: %w", err)
	}
	certs, err := ParsePEM(b)
	if err != nil {
		return nil, fmt.Errorf("load chain %s: %w", s.Path(), err)
	}
	return &Chain{Leaf: certs[0], Intermediates: certs[1:], PEM: b}, nil
}

// Matches reports whether the chain's leaf carries public key pub.
func (c *Chain) Matches(pub crypto.PublicKey) bool {
	k, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(c.Leaf.PublicKey)
}

// Remove deletes the installed chain (factory RESET). Removing a missing
// chain is not an error.
func (s *Store) Remove() error {
	if err := os.Remove(s.Path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove chain: %w", err)
	}
	return atomicfile.SyncDir(s.dir)
}
