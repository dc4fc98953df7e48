//go:build !notpm

package tpmkey

import (
	"context"
	"crypto/elliptic"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"devid/enroll/keys"
	"devid/hal/atomicfile"
	"devid/hal/tpm"
)

// DefaultBlobFile is the key blob's name inside the state directory.
const DefaultBlobFile = "device.tpmkey"

// DefaultBlobPath is where the tpm backend keeps its key blob when the
// spec names none.
func DefaultBlobPath(stateDir string) string { return filepath.Join(stateDir, DefaultBlobFile) }

// ErrBadSpec means a "tpm:" spec could not be parsed.
var ErrBadSpec = errors.New("bad tpm key spec")

func init() {
	keys.Register("tpm", func(arg, stateDir string) (keys.Store, error) {
		s, err := ParseSpec(arg, stateDir)
		if err != nil {
			return nil, err
		}
		return s, nil
	})
	keys.Register("auto", OpenAuto)
}

// Spec is a parsed "tpm:" spec.
type Spec struct {
	// Addr is the TPM address for hal/tpm ("" means auto-detect).
	Addr string
	// Blob is the absolute path of the key blob.
	Blob string
	// Curve is the curve Create uses: "" (P-256, the default) or "p384"
	// (ECC NIST P-384). Load takes the curve from the blob.
	Curve string
}

// String gives the spec back as "tpm:..." text.
func (s Spec) String() string {
	out := "tpm:" + s.Addr + ",blob=" + s.Blob
	if s.Curve != "" {
		out += ",curve=" + s.Curve
	}
	return out
}

// ParseSpec parses the part of a spec after "tpm:" and returns its store.
func ParseSpec(arg, stateDir string) (*Store, error) {
	addr, opts, _ := strings.Cut(arg, ",")
	if addr == "auto" {
		addr = ""
	}
	if _, err := tpm.ParseAddress(addr); err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrBadSpec, "tpm:"+arg, err)
	}
	sp := Spec{Addr: addr}
	if opts != "" {
		for _, kv := range strings.Split(opts, ",") {
			k, v, ok := strings.Cut(kv, "=")
			switch {
			case !ok || v == "":
				return nil, fmt.Errorf("%w %q: option %q is not key=value", ErrBadSpec, "tpm:"+arg, kv)
			case k == "blob":
				if sp.Blob != "" {
					return nil, fmt.Errorf("%w %q: blob given twice", ErrBadSpec, "tpm:"+arg)
				}
				sp.Blob = v
			case k == "curve":
				c, err := keys.ParseCurve(v)
				if err != nil {
					return nil, fmt.Errorf("%w %q: %v", ErrBadSpec, "tpm:"+arg, err)
				}
				sp.Curve = ""
				if c == elliptic.P384() {
					sp.Curve = "p384"
				}
			default:
				return nil, fmt.Errorf("%w %q: unknown option %q (known: blob, curve)", ErrBadSpec, "tpm:"+arg, k)
			}
		}
	}
	switch {
	case sp.Blob == "" && stateDir == "":
		return nil, fmt.Errorf("%w %q: needs blob=PATH or a state directory", ErrBadSpec, "tpm:"+arg)
	case sp.Blob == "":
		sp.Blob = DefaultBlobPath(stateDir)
	case !filepath.IsAbs(sp.Blob) && stateDir == "":
		return nil, fmt.Errorf("%w %q: relative blob path needs a state directory", ErrBadSpec, "tpm:"+arg)
	case !filepath.IsAbs(sp.Blob):
		sp.Blob = filepath.Join(stateDir, sp.Blob)
	}
	sp.Blob = filepath.Clean(sp.Blob)
	return &Store{spec: sp}, nil
}

// OpenAuto resolves the "auto" spec, in this order, so that a device never
// silently switches to a new key:
//
//  1. a TPM key blob exists in stateDir: the tpm backend (even if the TPM
//     is missing now; Load then says so instead of making a new key);
//  2. a software key file exists in stateDir: the file backend;
//  3. a TPM device is present (/dev/tpmrm0 or /dev/tpm0): the tpm backend;
//  4. otherwise the file backend at stateDir/device.key.
func OpenAuto(arg, stateDir string) (keys.Store, error) {
	if arg != "" {
		return nil, fmt.Errorf("%w: \"auto\" takes no argument, got %q", ErrBadSpec, arg)
	}
	if stateDir == "" {
		return nil, fmt.Errorf("%w: \"auto\" needs a state directory", ErrBadSpec)
	}
	tpmStore := &Store{spec: Spec{Blob: DefaultBlobPath(stateDir)}}
	if exists(tpmStore.spec.Blob) {
		return tpmStore, nil
	}
	filePath := keys.DefaultFilePath(stateDir)
	if !exists(filePath) {
		if _, ok := tpm.Present(); ok {
			return tpmStore, nil
		}
	}
	return keys.Open("file:"+filePath, stateDir)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// Store is the tpm backend's keys.Store for one key blob.
type Store struct {
	spec Spec
}

var _ keys.Store = (*Store)(nil)

// Name implements keys.Store.
func (s *Store) Name() string { return "tpm" }

// Spec returns the parsed spec.
func (s *Store) Spec() Spec { return s.spec }

// Path is the key blob's path.
func (s *Store) Path() string { return s.spec.Blob }

// Paths lists the files this store keeps (just the blob), for key rotation
// to stage and rename.
func (s *Store) Paths() []string { return []string{s.spec.Blob} }

// WithBlob returns a store for another key on the same TPM, e.g. the
// staged key during rotation.
func (s *Store) WithBlob(path string) *Store {
	return &Store{spec: Spec{Addr: s.spec.Addr, Blob: filepath.Clean(path)}}
}

// Load implements keys.Store.
func (s *Store) Load() (keys.Key, error) {
	data, err := os.ReadFile(s.spec.Blob)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load TPM key %s: %w", s.spec.Blob, keys.ErrNoKey)
	}
	if err != nil {
		return nil, fmt.Errorf("load TPM key: %w", err)
	}
	blob, err := tpm.ParseBlobPEM(data)
	if err != nil {
		return nil, fmt.Errorf("load TPM key %s: %w", s.spec.Blob, err)
	}
	t, release, err := Acquire(s.spec.Addr)
	if err != nil {
		return nil, fmt.Errorf("load TPM key %s: %w", s.spec.Blob, err)
	}
	k, err := t.LoadKey(context.Background(), blob)
	if err != nil {
		release()
		return nil, fmt.Errorf("load TPM key %s: %w", s.spec.Blob, err)
	}
	return &Key{Key: k, release: release, store: s}, nil
}

// Create implements keys.Store. The TPM makes the key; only its blob
// (useless off this TPM) is written, at 0600 in a 0700 directory, and
// never over an existing key.
func (s *Store) Create() (keys.Key, error) {
	if exists(s.spec.Blob) {
		return nil, fmt.Errorf("create TPM key %s: %w", s.spec.Blob, keys.ErrKeyExists)
	}
	if err := atomicfile.EnsurePrivateDir(filepath.Dir(s.spec.Blob)); err != nil {
		return nil, fmt.Errorf("create TPM key: %w", err)
	}
	t, release, err := Acquire(s.spec.Addr)
	if err != nil {
		return nil, fmt.Errorf("create TPM key: %w", err)
	}
	curve := elliptic.P256()
	if s.spec.Curve == "p384" {
		curve = elliptic.P384()
	}
	blob, err := t.CreateKeyCurve(context.Background(), curve)
	if err != nil {
		release()
		return nil, fmt.Errorf("create TPM key: %w", err)
	}
	data, err := blob.MarshalPEM()
	if err != nil {
		release()
		return nil, fmt.Errorf("create TPM key: %w", err)
	}
	if err := atomicfile.CreateExclusive(s.spec.Blob, data, 0o600); err != nil {
		release()
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create TPM key %s: %w", s.spec.Blob, keys.ErrKeyExists)
		}
		return nil, fmt.Errorf("create TPM key %s: %w", s.spec.Blob, err)
	}
	k, err := t.LoadKey(context.Background(), blob)
	if err != nil {
		release()
		return nil, fmt.Errorf("load new TPM key: %w", err)
	}
	return &Key{Key: k, release: release, store: s}, nil
}

// Destroy implements keys.Store. Removing the blob destroys the key for
// good: the TPM keeps no copy, so nothing in NV needs cleaning up.
func (s *Store) Destroy() error {
	if err := os.Remove(s.spec.Blob); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("destroy TPM key: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(s.spec.Blob))
}

// Key is a loaded TPM key: a crypto.Signer whose private part never
// leaves the TPM. It embeds *tpm.Key (Sign, SignContext, Public, Blob).
type Key struct {
	*tpm.Key
	store   *Store
	once    sync.Once
	release func()
}

var _ keys.Key = (*Key)(nil)

// Backend implements keys.Key.
func (k *Key) Backend() string { return "tpm" }

// Location says where the key lives, for status output:
// "tpm /dev/tpmrm0 blob=/var/lib/devid/device.tpmkey".
func (k *Key) Location() string {
	return "tpm " + k.Key.TPMAddr() + " blob=" + k.store.spec.Blob
}

// Close unloads the key and releases this key's hold on the TPM.
func (k *Key) Close() error {
	var err error
	k.once.Do(func() {
		err = k.Key.Close()
		if errors.Is(err, tpm.ErrClosed) {
			err = nil
		}
		k.release()
	})
	return err
}

// shared holds one open TPM per address for the whole process: /dev/tpm0
// can be opened only once, and all TPM use must go through one mutex.
var shared struct {
	mu   sync.Mutex
	open map[string]*sharedTPM
}

type sharedTPM struct {
	t    *tpm.TPM
	refs int
}

// Acquire returns the process-wide TPM for addr ("" = auto-detect),
// opening it on first use. Call release when done; the TPM is closed when
// the last holder releases it. Use this, not tpm.Open, for anything else
// that needs the TPM (e.g. EKDeviceID) while a key is loaded.
func Acquire(addr string) (t *tpm.TPM, release func(), err error) {
	if addr == "auto" {
		addr = ""
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.open == nil {
		shared.open = map[string]*sharedTPM{}
	}
	st := shared.open[addr]
	if st == nil {
		t, err := tpm.Open(context.Background(), addr)
		if err != nil {
			return nil, nil, err
		}
		st = &sharedTPM{t: t}
		shared.open[addr] = st
	}
	st.refs++
	var once sync.Once
	return st.t, func() {
		once.Do(func() {
			shared.mu.Lock()
			defer shared.mu.Unlock()
			st.refs--
			if st.refs == 0 {
				st.t.Close()
				delete(shared.open, addr)
			}
		})
	}, nil
}
