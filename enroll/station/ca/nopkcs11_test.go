//go:build !(pkcs11 && cgo)

package ca_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/station/ca"
)

// TestNoPKCS11Build: a devid-jig built without the pkcs11 tag refuses a
// PKCS#11 URI, and a CA whose key is in a token, saying how to get one
// that can.
func TestNoPKCS11Build(t *testing.T) {
	uri := "pkcs11:token=devid-ca;object=k?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234"
	dir := filepath.Join(t.TempDir(), "ca")
	err := ca.Init(dir, ca.InitOptions{PKCS11: uri})
	if !errors.Is(err, ca.ErrNoPKCS11) || !strings.Contains(err.Error(), "-tags pkcs11") {
		t.Fatalf("Init: %v; want ErrNoPKCS11 naming the build tag", err)
	}
	if ca.Exists(dir) {
		t.Fatal("a refused Init left a CA")
	}
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, ca.IssuingKeyFile))
	os.WriteFile(filepath.Join(dir, ca.IssuingKeyURIFile), []byte("pkcs11:token=devid-ca;object=k?module-path=/m\n"), 0o644)
	if _, err := ca.Open(dir, "st"); !errors.Is(err, ca.ErrNoPKCS11) || !strings.Contains(err.Error(), ca.IssuingKeyURIFile) {
		t.Fatalf("Open: %v; want ErrNoPKCS11 naming %s", err, ca.IssuingKeyURIFile)
	}
}
