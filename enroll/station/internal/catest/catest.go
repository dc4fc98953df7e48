// Package catest makes the local factory CA (enroll/station/ca) that the
// jig and station tests program boards with.
package catest

import (
	"crypto/x509"
	"path/filepath"
	"testing"

	"devid/enroll/station/ca"
)

// New makes a local CA in a temp dir, open as station "test-station"
// until the test ends.
func New(t testing.TB) *ca.Local {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(dir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	l, err := ca.Open(dir, "test-station")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// RootPool is a pool holding only l's root: the boards' factory.root.
func RootPool(l *ca.Local) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(l.Root())
	return p
}
