// Package keys holds the device's private key behind a crypto.Signer.
//
// A key backend is chosen by a URI-like spec from config:
//
//	file:/var/lib/devid/device.key   software ECDSA P-256, PKCS#8 PEM, mode 0600
//	file:PATH,curve=p384             the same with a P-384 key
//	tpm:/dev/tpmrm0                  a non-exportable P-256 key inside the TPM
//	auto                             tpm if a TPM is present, else file in the state dir
//
// The optional ",curve=NAME" suffix (NAME p256 or p384, also written P-256
// or P-384; default p256) only chooses the curve of a key that Create makes:
// Load takes the curve from the stored key itself, so a spec without the
// option loads a P-384 key too. The curve option must be last in the spec.
//
// Backends register themselves with Register, so that a binary that does not
// want TPM support simply does not import the TPM backend.
package keys

import (
	"crypto"
	"crypto/elliptic"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
)

// Sentinel errors callers branch on.
var (
	// ErrNoKey means the backend holds no key yet.
	ErrNoKey = errors.New("no device key")
	// ErrKeyExists means Create was called while a key already exists.
	ErrKeyExists = errors.New("device key already exists")
	// ErrUnknownBackend means the spec names a backend that is not compiled in.
	ErrUnknownBackend = errors.New("unknown key backend")
)

// Key is a device private key. The private part never leaves the backend.
type Key interface {
	crypto.Signer
	// Backend names the backend that holds the key ("file" or "tpm").
	Backend() string
}

// Close releases the resource a key holds (a loaded TPM object), if any.
// It accepts a nil key, so it can be deferred before the error check.
func Close(k crypto.Signer) {
	if c, ok := k.(io.Closer); ok {
		_ = c.Close()
	}
}

// Store creates, loads and destroys the one device key a spec names.
type Store interface {
	// Name is the backend name ("file" or "tpm").
	Name() string
	// Load returns the existing key, or an error wrapping ErrNoKey.
	Load() (Key, error)
	// Create makes a new key, or fails with ErrKeyExists.
	Create() (Key, error)
	// Destroy removes the key. Destroying a missing key is not an error.
	Destroy() error
}

// Opener opens the store for the part of a spec after "scheme:".
// stateDir is the agent's state directory, for backends that keep
// files (key files, TPM key blobs) there.
type Opener func(arg, stateDir string) (Store, error)

var (
	mu       sync.Mutex
	registry = map[string]Opener{}
)

// Register makes a backend available under scheme. It panics on a
// duplicate, which is a programming error.
func Register(scheme string, open Opener) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[scheme]; dup {
		panic("keys: duplicate backend " + scheme)
	}
	registry[scheme] = open
}

// Backends lists the registered backend names, sorted.
func Backends() []string {
	mu.Lock()
	defer mu.Unlock()
	var names []string
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Open parses spec ("scheme:arg") and opens that backend's store.
func Open(spec, stateDir string) (Store, error) {
	scheme, arg, _ := strings.Cut(spec, ":")
	mu.Lock()
	open, ok := registry[scheme]
	mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w %q in key spec %q (have %v)", ErrUnknownBackend, scheme, spec, Backends())
	}
	return open(arg, stateDir)
}

// ParseCurve maps a curve name from a key spec or config ("p256", "P-256",
// "p384", "P-384", any case) to the curve.
func ParseCurve(name string) (elliptic.Curve, error) {
	switch strings.ToLower(strings.ReplaceAll(name, "-", "")) {
	case "p256":
		return elliptic.P256(), nil
	case "p384":
		return elliptic.P384(), nil
	}
	return nil, fmt.Errorf("unknown key curve %q (want p256 or p384)", name)
}

// CurveOption is the spec suffix that makes Create use curve name
// ("P-384" -> ",curve=p384"); empty for the default P-256 or an empty name.
func CurveOption(name string) (string, error) {
	if name == "" {
		return "", nil
	}
	c, err := ParseCurve(name)
	if err != nil {
		return "", err
	}
	if c == elliptic.P256() {
		return "", nil
	}
	return ",curve=p384", nil
}
