package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"devid/enroll/station/ca"
	"devid/simulator/simtest"
)

// TestJigRevokeFeedsSimulator: devid-jig ca init, issue through the CA
// library, devid-jig revoke, then devid-sim revoke --crl DIR/crl.pem.
func TestJigRevokeFeedsSimulator(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t)
	bin := simtest.Binary(t)
	jig := filepath.Join(t.TempDir(), "devid-jig")
	if out, err := exec.Command("go", "build", "-o", jig, "devid/enroll/cmd/devid-jig").CombinedOutput(); err != nil {
		t.Fatalf("build devid-jig: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "ca")
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", filepath.Base(name), args, err, out)
		}
		return string(out)
	}
	run(jig, "ca", "init", "--dir", dir)

	local, err := ca.Open(dir, "test")
	if err != nil {
		t.Fatal(err)
	}
	serials := map[string]string{}
	for _, id := range []string{"crl-e2e-1", "crl-e2e-2"} {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, k)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := x509.ParseCertificateRequest(der)
		chain, err := local.Issue(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		serials[id] = fmt.Sprintf("%X", chain[0].SerialNumber)
	}
	local.Close()

	run(jig, "revoke", "--ca-dir", dir, "--device-id", "crl-e2e-1", "--station", "test")
	sim.EnrollGroup(t, "jig-ca", local.Root())
	out := run(bin, "revoke", "--state", sim.StateDir, "--crl", filepath.Join(dir, ca.CRLFile), "--chain", filepath.Join(dir, ca.IssuingCertFile))
	if !strings.Contains(out, serials["crl-e2e-1"]) {
		t.Fatalf("revoke output lacks serial %s:\n%s", serials["crl-e2e-1"], out)
	}
	var revoked []struct {
		Serial string `json:"serial"`
	}
	sim.MustDo("GET", "/sim/revoked", nil, &revoked)
	if len(revoked) != 1 || revoked[0].Serial != serials["crl-e2e-1"] {
		t.Fatalf("/sim/revoked %+v, want only serial %s (not %s)", revoked, serials["crl-e2e-1"], serials["crl-e2e-2"])
	}
	// The same CRL as DER is accepted and changes nothing.
	b, err := os.ReadFile(filepath.Join(dir, ca.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	derFile := filepath.Join(t.TempDir(), "crl.der")
	if blk == nil || os.WriteFile(derFile, blk.Bytes, 0o644) != nil {
		t.Fatal("cannot write DER CRL")
	}
	run(bin, "revoke", "--state", sim.StateDir, "--crl", derFile, "--chain", filepath.Join(dir, ca.IssuingCertFile))
	sim.MustDo("GET", "/sim/revoked", nil, &revoked)
	if len(revoked) != 1 {
		t.Fatalf("after DER CRL: %+v", revoked)
	}
	// Without the issuing certificate the simulator cannot check the CRL.
	if out, err := exec.Command(bin, "revoke", "--state", sim.StateDir, "--crl", filepath.Join(dir, ca.CRLFile)).CombinedOutput(); err == nil || !strings.Contains(string(out), "verifies against none") {
		t.Fatalf("CRL without chain: %v\n%s", err, out)
	}
}
