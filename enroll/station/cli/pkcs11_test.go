//go:build pkcs11 && cgo

package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/station/ca"
	"devid/enroll/station/internal/softhsmtest"
	"devid/hal/serial/serialtest"
)

// TestCAInitPKCS11Program: `devid-jig ca init --pkcs11` makes the CA keys
// in a SoftHSM2 token; `devid-jig program --ca-dir` then signs a board's
// certificate through the token, and the chain it installs verifies to
// the root; `crl` signs through it too. A wrong PIN fails the program run
// at the ca step, naming the PIN.
func TestCAInitPKCS11Program(t *testing.T) {
	tok := softhsmtest.New(t, "jig-ca", "2468")
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	pinFile := filepath.Join(dir, "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := strings.Replace(tok.URI("line1"), "pin-value="+tok.PIN, "pin-source="+pinFile, 1)
	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		code := Main(ctx, Build{}, args, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	out, errOut, code := run("ca", "init", "--dir", caDir, "--name", "HSM line", "--pkcs11", uri)
	if code != 0 || !strings.Contains(out, "keys in the PKCS#11 token") {
		t.Fatalf("ca init --pkcs11: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(caDir, ca.IssuingKeyFile)); err == nil {
		t.Fatalf("%s written for a token key", ca.IssuingKeyFile)
	}

	link := serialtest.NewLink(t)
	serveBoard(t, link.DeviceTTY, "hsm-board-1", caDir, nil)
	out, errOut, code = run("program", "--port", link.JigTTY, "--ca-dir", caDir, "--station", "t", "--json")
	var res struct {
		OK       bool
		ChainPEM string `json:"chain_pem"`
		DeviceID string `json:"device_id"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.OK || res.DeviceID != "hsm-board-1" {
		t.Fatalf("program through the token: exit %d\n%s%s", code, out, errOut)
	}
	chain, err := certstore.ParsePEM([]byte(res.ChainPEM))
	if err != nil || len(chain) != 2 {
		t.Fatalf("chain_pem: %d certificates, %v", len(chain), err)
	}
	roots, err := certstore.LoadRoots(filepath.Join(caDir, ca.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("installed chain does not verify to the root: %v", err)
	}
	if out, errOut, code = run("crl", "--ca-dir", caDir); code != 0 {
		t.Fatalf("crl through the token: exit %d\n%s%s", code, out, errOut)
	}

	// A wrong PIN in the pin-source file: the run stops at the ca step.
	if err := os.WriteFile(pinFile, []byte("1111\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = run("program", "--port", link.JigTTY, "--ca-dir", caDir, "--json")
	var fail struct{ Step, Error string }
	if code != 1 || json.Unmarshal([]byte(out), &fail) != nil || fail.Step != "ca" || !strings.Contains(fail.Error, "wrong user PIN") {
		t.Fatalf("wrong PIN: exit %d\n%s%s", code, out, errOut)
	}
}
