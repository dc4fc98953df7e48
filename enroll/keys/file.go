package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"devid/hal/atomicfile"
)

// DefaultKeyFile is the key file's name inside the state directory.
const DefaultKeyFile = "device.key"

// DefaultFilePath is where the file backend keeps the key when the spec
// names no path ("file:" or "auto" without a TPM).
func DefaultFilePath(stateDir string) string { return filepath.Join(stateDir, DefaultKeyFile) }

func init() {
	Register("file", func(arg, stateDir string) (Store, error) {
		path, curve, err := splitCurveOption(arg)
		if err != nil {
			return nil, fmt.Errorf("key spec %q: %w", "file:"+arg, err)
		}
		if path == "" {
			if stateDir == "" {
				return nil, errors.New(`key spec "file:" needs a path or a state directory`)
			}
			path = DefaultFilePath(stateDir)
		}
		s := NewFileStore(path)
		s.curve = curve
		return s, nil
	})
}

// splitCurveOption splits a trailing ",curve=NAME" option off a file spec's
// argument. Only that exact option is recognised, so a path that happens
// to contain a comma still works.
func splitCurveOption(arg string) (string, elliptic.Curve, error) {
	i := strings.LastIndex(arg, ",curve=")
	if i < 0 {
		return arg, elliptic.P256(), nil
	}
	c, err := ParseCurve(arg[i+len(",curve="):])
	if err != nil {
		return "", nil, err
	}
	return arg[:i], c, nil
}

// FileStore keeps an ECDSA key (P-256 unless the spec says curve=p384) as
// PKCS#8 PEM in one file, mode 0600, in a directory of mode 0700.
type FileStore struct {
	path  string
	curve elliptic.Curve // for Create; nil means P-256
}

var _ Store = (*FileStore)(nil)

// NewFileStore returns the store for the key file at path.
func NewFileStore(path string) *FileStore { return &FileStore{path: path} }

// Name implements Store.
func (s *FileStore) Name() string { return "file" }

// Path is the key file's path.
func (s *FileStore) Path() string { return s.path }

// Paths lists the files that hold the key (for rotation, which stages a
// new key beside it and renames it over).
func (s *FileStore) Paths() []string { return []string{s.path} }

// Load implements Store.
func (s *FileStore) Load() (Key, error) {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load key %s: %w", s.path, ErrNoKey)
	}
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	k, err := parseKey(b)
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w", s.path, err)
	}
	return &fileKey{k}, nil
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM \"PRIVATE KEY\" (PKCS#8) block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse PKCS#8: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || (ek.Curve != elliptic.P256() && ek.Curve != elliptic.P384()) {
		return nil, fmt.Errorf("key is %T, want ECDSA P-256 or P-384", k)
	}
	return ek, nil
}

// Create implements Store. The key is written to a temp file created with
// O_EXCL at 0600, fsynced, then hard-linked to its final name, which fails
// if a key appeared meanwhile, so an existing key is never replaced; the
// directory is fsynced so the name survives power loss.
func (s *FileStore) Create() (Key, error) {
	if _, err := os.Lstat(s.path); err == nil {
		return nil, fmt.Errorf("create key %s: %w", s.path, ErrKeyExists)
	}
	dir := filepath.Dir(s.path)
	if err := atomicfile.EnsurePrivateDir(dir); err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	curve := s.curve
	if curve == nil {
		curve = elliptic.P256()
	}
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create key: generate %s: %w", curve.Params().Name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := atomicfile.CreateExclusive(s.path, data, 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create key %s: %w", s.path, ErrKeyExists)
		}
		return nil, fmt.Errorf("create key %s: %w", s.path, err)
	}
	return &fileKey{k}, nil
}

// Destroy implements Store.
func (s *FileStore) Destroy() error {
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("destroy key: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(s.path))
}

// fileKey holds the key in a named field, not embedded, so no method of
// *ecdsa.PrivateKey that reveals the scalar is promoted onto Key.
type fileKey struct{ k *ecdsa.PrivateKey }

func (k *fileKey) Backend() string          { return "file" }
func (k *fileKey) Public() crypto.PublicKey { return k.k.Public() }
func (k *fileKey) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.k.Sign(r, digest, opts)
}
