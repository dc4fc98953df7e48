package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"devid/agent/config"
)

// writeFile writes a test file and returns its path.
func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigCheckReportsEverything: one run names every problem in the
// file and in what it refers to, masks the proxy password, exits 1 and
// changes no file.
func TestConfigCheckReportsEverything(t *testing.T) {
	dir := t.TempDir()
	notPEM := writeFile(t, dir, "bundle.pem", "not a certificate\n")
	cfg := writeFile(t, dir, "config.toml", `state_dir = "`+filepath.Join(dir, "state")+`"
colour = "blue"
[factory]
root = "`+filepath.Join(dir, "missing-root.pem")+`"
[dps]
id_scope = ""
trust_bundle = "`+notPEM+`"
timeout = 30
[local_api]
group = "nosuchgroup"
max_clients = "many"
[network]
proxy = "http://user:s3cret@proxy:3128"
[retry]
min_delay = "1ms"
[renewal]
path = "none"
`)
	before := snapshot(t, dir)
	var out, errOut bytes.Buffer
	err := configCheck(&out, &errOut, cfg)
	if err == nil {
		t.Fatal("a broken config passed")
	}
	if code := exitStatus(err, io.Discard, "config check"); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	msg := err.Error()
	for _, want := range []string{
		`line 2: unknown key "colour"`,
		`line 8: dps.timeout: 30 has no unit`,
		`line 11: local_api.max_clients: expected an integer, got a string`,
		`line 15: retry.min_delay: 1ms is too short`,
		"factory.root: " + filepath.Join(dir, "missing-root.pem") + " does not exist",
		"dps.id_scope: must be set",
		"dps.trust_bundle: " + notPEM + " holds no PEM certificate",
		`local_api.group: group "nosuchgroup" does not exist`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	if strings.Contains(msg+errOut.String()+out.String(), "s3cret") {
		t.Errorf("proxy password printed:\n%s", msg)
	}
	if !strings.Contains(errOut.String(), `warning: renewal.path: "none"`) {
		t.Errorf("no warning about renewal.path none:\n%s", errOut.String())
	}
	if after := snapshot(t, dir); after != before {
		t.Errorf("config check changed files:\n%s\n---\n%s", before, after)
	}
}

// TestConfigCheckValid: a good config exits 0 and prints the effective
// config with the password masked.
func TestConfigCheckValid(t *testing.T) {
	dir := t.TempDir()
	rootFile := writeFile(t, dir, "root.pem", selfSignedPEM(t))
	g, err := user.LookupGroupId("0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, dir, "config.toml", `state_dir = "`+filepath.Join(dir, "state")+`"
[factory]
port = "/dev/ttyS1"
root = "`+rootFile+`"
[dps]
id_scope = "0ne00000001"
[local_api]
group = "`+g.Name+`"
[network]
proxy = "http://user:s3cret@proxy:3128"
[renewal]
path = "dps"
`)
	var out, errOut bytes.Buffer
	if err := configCheck(&out, &errOut, cfg); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	if strings.Contains(out.String(), "s3cret") || !strings.Contains(out.String(), "user:xxxxx@proxy") {
		t.Errorf("effective config does not mask the password:\n%s", out.String())
	}
	if errOut.Len() != 0 {
		t.Errorf("unexpected warnings: %s", errOut.String())
	}
}

// TestConfigCheckUsage: wrong arguments exit 2.
func TestConfigCheckUsage(t *testing.T) {
	for _, args := range [][]string{{"config"}, {"config", "lint"}, {"config", "check", "extra"}, {"config", "check", "--bogus"}} {
		var out, errOut bytes.Buffer
		if code := dispatch(context.Background(), args, &out, &errOut); code != 2 {
			t.Errorf("%q: exit %d; want usage (2)\n%s", args, code, errOut.String())
		}
	}
}

// TestIncomplete: a valid config that still lacks a way for the jig to
// reach a new device says so; a complete one says nothing.
func TestIncomplete(t *testing.T) {
	c := config.Default()
	got := incomplete(c)
	if !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "factory.port") }) {
		t.Errorf("no warning about factory.port in %q", got)
	}
	c.Factory.Port = "/dev/ttyS1"
	if got := incomplete(c); len(got) != 0 {
		t.Errorf("complete config: %q", got)
	}
}

// snapshot is every file under dir with its mode and content hash.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		h := [32]byte{}
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h = sha256.Sum256(data)
		}
		b.WriteString(p + " " + fi.Mode().String() + " " + string(h[:4]) + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// selfSignedPEM is a throwaway CA certificate, PEM-encoded.
func selfSignedPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test factory root"},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
