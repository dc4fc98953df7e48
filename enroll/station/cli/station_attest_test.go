package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/internal/pkitest"
	"devid/enroll/station/ca"
	"devid/enroll/station/internal/fakeattest"
	"devid/enroll/station/jig"
	"devid/hal/serial/serialtest"
)

// TestStationAttestationConfig: a CA policy with require_tpm_attestation
// needs tpm_roots in station.toml; with them the station asks the boards
// (through newVerifier, a fake here), programs the attested board and
// fails the one without a TPM with cause attest:not-offered.
func TestStationAttestationConfig(t *testing.T) {
	maker := pkitest.NewCA("tpm maker")
	oldV, oldSAN := newVerifier, hardwareModuleNameSAN
	newVerifier = func(roots *x509.CertPool) jig.Verifier { return &fakeattest.Verifier{Roots: roots} }
	hardwareModuleNameSAN = fakeattest.HardwareModuleNameSAN
	t.Cleanup(func() { newVerifier, hardwareModuleNameSAN = oldV, oldSAN })
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := ca.Init(caDir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(caDir, ca.PolicyFile)
	b, _ := os.ReadFile(pol)
	if err := os.WriteFile(pol, []byte(strings.Replace(string(b), "require_tpm_attestation = false", "require_tpm_attestation = true", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tpm-roots.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: maker.Root.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	byID := filepath.Join(dir, "serial", "by-id")
	if err := os.MkdirAll(byID, 0o755); err != nil {
		t.Fatal(err)
	}
	link := serialtest.NewLink(t)
	serveBoard(t, link.DeviceTTY, "st-att-1", caDir, &fakeattest.TPM{EK: maker.Leaf(pkitest.Key().Public(), "ek", nil), Chain: []*x509.Certificate{maker.Issuer}})
	os.Symlink(link.JigTTY, filepath.Join(byID, "a"))
	link = serialtest.NewLink(t)
	serveBoard(t, link.DeviceTTY, "st-soft-1", caDir, nil)
	os.Symlink(link.JigTTY, filepath.Join(byID, "b"))
	conf := func(extra string) string {
		p := filepath.Join(dir, "station.toml")
		os.WriteFile(p, []byte(`station = "att"
ca_dir = "ca"
serial_dir = "serial"
watch = "poll"
scan_interval = "50ms"
`+extra+`
[[slot]]
name = "A"
port = "by-id/a"
[[slot]]
name = "B"
port = "by-id/b"
`), 0o644)
		return p
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := Main(ctx, Build{}, []string{"station", "--config", conf(""), "--boards", "2"}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "require_tpm_attestation: give tpm_roots") {
		t.Fatalf("policy requires attestation, no tpm_roots: exit %d %s", code, stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	if code := Main(ctx, Build{}, []string{"station", "--config", conf(`tpm_roots = "tpm-roots.pem"`), "--boards", "2"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s\n%s", code, stderr.String(), stdout.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "2 boards: 1 programmed, 0 left alone (programmed already), 1 failed") ||
		!strings.Contains(out, "failed attest:not-offered 1") || !strings.Contains(out, "cause attest:not-offered") {
		t.Fatalf("stdout:\n%s", out)
	}
	local, err := ca.Open(caDir, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if recs, _ := local.Issued("st-att-1"); len(recs) != 1 || recs[0].Attestation != "attested" {
		t.Fatalf("ledger for st-att-1: %+v", recs)
	}
	// require_attestation without tpm_roots is a configuration error.
	stderr.Reset()
	if code := Main(ctx, Build{}, []string{"station", "--config", conf("require_attestation = true")}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "require_attestation = true needs tpm_roots") {
		t.Fatalf("require_attestation without tpm_roots: exit %d %s", code, stderr.String())
	}
}
