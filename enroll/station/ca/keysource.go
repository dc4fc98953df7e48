package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Files of a CA whose keys are in a PKCS#11 token (instead of root.key
// and issuing.key): each holds one line, the PKCS#11 URI of the key,
// without a pin-value (docs/ca.md, "The CA key in an HSM").
const (
	RootKeyURIFile    = "root.key.uri"
	IssuingKeyURIFile = "issuing.key.uri"
)

// DefaultPKCS11Object is the label (CKA_LABEL) of the issuing key when the
// URI given to Init has no object; the root key's is the issuing key's
// label with RootLabelSuffix.
const (
	DefaultPKCS11Object = "devid-issuing"
	RootLabelSuffix     = "-root"
)

// ErrNoPKCS11: this binary was built without PKCS#11 support.
var ErrNoPKCS11 = errors.New("this devid-jig was built without PKCS#11 support: " +
	"build it with cgo and the pkcs11 tag (CGO_ENABLED=1 go build -tags pkcs11 ./enroll/cmd/devid-jig; `make build` does), see docs/ca.md")

// pkcs11Token is an open, logged-in PKCS#11 token. The implementation is
// in pkcs11.go (build tag pkcs11, needs cgo); openPKCS11 stays nil in a
// build without it.
type pkcs11Token interface {
	// Generate makes a P-256 key pair in the token, private half
	// sensitive and never extractable. It refuses a label or an id
	// already in use.
	Generate(label string, id []byte) (crypto.Signer, error)
	// Find returns the key pair with this label and/or id.
	Find(label string, id []byte) (crypto.Signer, error)
	// Delete destroys a key pair that Generate made.
	Delete(crypto.Signer) error
	Close() error
}

var openPKCS11 func(*PKCS11URI) (pkcs11Token, error)

// caFile is one file Init writes.
type caFile struct {
	name string
	data []byte
	perm os.FileMode
}

// initKeys are the root and issuing keys Init signs with, and the files
// that record them.
type initKeys struct {
	root, issuing crypto.Signer
	files         []caFile
	// abort undoes what was made (token objects) when Init fails later.
	abort func()
	close func()
}

// newInitKeys makes the CA's keys: in memory, written as PEM files (the
// default), or in the PKCS#11 token o.PKCS11 names.
func newInitKeys(o InitOptions) (*initKeys, error) {
	if o.PKCS11 == "" {
		root, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		iss, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		return &initKeys{root: root, issuing: iss, abort: func() {}, close: func() {},
			files: []caFile{{RootKeyFile, keyPEM(root), 0o600}, {IssuingKeyFile, keyPEM(iss), 0o600}}}, nil
	}
	u, err := ParsePKCS11URI(o.PKCS11)
	if err != nil {
		return nil, err
	}
	if openPKCS11 == nil {
		return nil, ErrNoPKCS11
	}
	tok, err := openPKCS11(u)
	if err != nil {
		return nil, err
	}
	label := u.Object
	if label == "" {
		label = DefaultPKCS11Object
	}
	issURI, rootURI := *u, *u
	issURI.Object, rootURI.Object = label, label+RootLabelSuffix
	issURI.ID, rootURI.ID = u.ID, nil
	if len(issURI.ID) == 0 {
		issURI.ID = randomID()
	}
	rootURI.ID = randomID()
	iss, err := tok.Generate(issURI.Object, issURI.ID)
	if err != nil {
		tok.Close()
		return nil, fmt.Errorf("issuing key: %w", err)
	}
	root, err := tok.Generate(rootURI.Object, rootURI.ID)
	if err != nil {
		tok.Delete(iss)
		tok.Close()
		return nil, fmt.Errorf("root key: %w", err)
	}
	return &initKeys{root: root, issuing: iss,
		files: []caFile{
			{RootKeyURIFile, []byte(rootURI.String() + "\n"), 0o644},
			{IssuingKeyURIFile, []byte(issURI.String() + "\n"), 0o644},
		},
		abort: func() { tok.Delete(iss); tok.Delete(root) },
		close: func() { tok.Close() },
	}, nil
}

func randomID() []byte {
	id := make([]byte, 8)
	rand.Read(id)
	return id
}

// openIssuingKey loads the issuing key of the CA in dir: issuing.key, or
// the PKCS#11 key issuing.key.uri names. The closer (nil for a file key)
// releases the token.
func openIssuingKey(dir string) (crypto.Signer, io.Closer, error) {
	uriPath := filepath.Join(dir, IssuingKeyURIFile)
	b, err := os.ReadFile(uriPath)
	if errors.Is(err, fs.ErrNotExist) {
		k, err := readKey(filepath.Join(dir, IssuingKeyFile))
		return k, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("CA: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, IssuingKeyFile)); err == nil {
		return nil, nil, fmt.Errorf("CA %s: both %s and %s exist: keep the one that holds the issuing key", dir, IssuingKeyFile, IssuingKeyURIFile)
	}
	u, err := ParsePKCS11URI(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, nil, fmt.Errorf("CA %s: %w", uriPath, err)
	}
	if openPKCS11 == nil {
		return nil, nil, fmt.Errorf("CA %s: the issuing key is in a PKCS#11 token (%s), but %w", dir, IssuingKeyURIFile, ErrNoPKCS11)
	}
	tok, err := openPKCS11(u)
	if err != nil {
		return nil, nil, fmt.Errorf("CA %s (%s): %w", dir, IssuingKeyURIFile, err)
	}
	k, err := tok.Find(u.Object, u.ID)
	if err != nil {
		tok.Close()
		return nil, nil, fmt.Errorf("CA %s (%s): %w", dir, IssuingKeyURIFile, err)
	}
	return k, tok, nil
}
