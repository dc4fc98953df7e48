package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/enroll/certstore"
	"devid/enroll/factory"
	"devid/enroll/factory/factorytest"
	"devid/enroll/internal/pkitest"
	"devid/enroll/keys"
	"devid/enroll/station/ca"
	"devid/enroll/station/internal/fakeattest"
	"devid/enroll/station/jig"
	"devid/hal/serial"
	"devid/hal/serial/serialtest"
)

// The verifier hooks are package state: the tests that set them do not
// run in parallel with each other.

// serveBoard serves a factory device on tty; att, if not nil, is its TPM.
func serveBoard(t *testing.T, tty, id, caDir string, att *fakeattest.TPM) {
	t.Helper()
	roots, err := certstore.LoadRoots(filepath.Join(caDir, ca.RootCertFile))
	if err != nil {
		t.Fatal(err)
	}
	serveBoardRoots(t, tty, id, roots, att)
}

// serveBoardRoots serves a factory device whose factory root is roots.
func serveBoardRoots(t *testing.T, tty, id string, roots *x509.CertPool, att *fakeattest.TPM) {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	ks, err := keys.Open("file:", state)
	if err != nil {
		t.Fatal(err)
	}
	d := &factory.Device{ID: id, Keys: ks, Certs: certstore.Open(state, roots), Log: slog.New(slog.DiscardHandler), FrameTimeout: 300 * time.Millisecond}
	if att != nil {
		att.Keys = ks
		d.Attester = att
	}
	p, err := serial.Open(tty, 115200)
	if err != nil {
		t.Fatal(err)
	}
	factorytest.Serve(t, d, p)
}

// TestProgramAttestationFlags runs `devid-jig program` with --tpm-roots
// and --require-attestation against boards with and without a (fake)
// TPM: the progress line of the attest step, the refusal on the FAIL line
// and in the --json object.
func TestProgramAttestationFlags(t *testing.T) {
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
	rootsFile := filepath.Join(dir, "tpm-roots.pem")
	if err := os.WriteFile(rootsFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: maker.Root.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		code := Main(ctx, Build{}, append([]string{"program", "--ca-dir", caDir, "--station", "t"}, args...), &out, &errOut)
		return out.String(), errOut.String(), code
	}
	genuine := func() *fakeattest.TPM {
		return &fakeattest.TPM{EK: maker.Leaf(pkitest.Key().Public(), "ek", nil), Chain: []*x509.Certificate{maker.Issuer}}
	}

	// An attested board: six steps, the attest line names the EK.
	link := serialtest.NewLink(t)
	serveBoard(t, link.DeviceTTY, "cli-att-1", caDir, genuine())
	out, errOut, code := run("--port", link.JigTTY, "--tpm-roots", rootsFile, "--require-attestation")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 7 || !strings.HasPrefix(lines[2], "[3/6] attest  ek tpm maker issuing serial ") ||
		!strings.Contains(lines[2], ", key in TPM (fixedTPM), ") {
		t.Fatalf("attested run: exit %d\n%s%s", code, out, errOut)
	}

	// A board whose statement is replayed: FAIL line and JSON carry the reason.
	link = serialtest.NewLink(t)
	bad := genuine()
	bad.StaleNonce = true
	serveBoard(t, link.DeviceTTY, "cli-att-2", caDir, bad)
	out, errOut, code = run("--port", link.JigTTY, "--tpm-roots", rootsFile)
	if code != 1 || !strings.Contains(out, "FAIL attest: attestation refused: nonce: statement is over nonce ") {
		t.Fatalf("replayed statement: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = run("--port", link.JigTTY, "--tpm-roots", rootsFile, "--json")
	var obj struct {
		OK                          bool
		Step, Error, Reason, Detail string
	}
	if code != 1 || json.Unmarshal([]byte(out), &obj) != nil || obj.OK || obj.Step != "attest" || obj.Reason != "nonce" ||
		!strings.HasPrefix(obj.Detail, "statement is over nonce ") || !strings.Contains(errOut, "FAIL attest: attestation refused: nonce") {
		t.Fatalf("--json refusal: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// A software-key board on a line that requires attestation.
	link = serialtest.NewLink(t)
	serveBoard(t, link.DeviceTTY, "cli-soft-1", caDir, nil)
	out, _, code = run("--port", link.JigTTY, "--tpm-roots", rootsFile, "--require-attestation", "--json")
	if code != 1 || json.Unmarshal([]byte(out), &obj) != nil || obj.Step != "attest" || obj.Reason != jig.ReasonNotOffered ||
		!strings.Contains(obj.Detail, "key backend file") {
		t.Fatalf("software key on a required line: exit %d, %q", code, out)
	}
	// ... and the same board on a line that does not: programmed, not-offered.
	out, _, code = run("--port", link.JigTTY, "--tpm-roots", rootsFile, "--json")
	var okObj struct {
		OK          bool
		Attestation string
	}
	if code != 0 || json.Unmarshal([]byte(out), &okObj) != nil || !okObj.OK || okObj.Attestation != "not-offered" {
		t.Fatalf("software key on an optional line: exit %d, %q", code, out)
	}

	// The CA's policy requires attestation: without --tpm-roots the run
	// does not start.
	pol := filepath.Join(caDir, ca.PolicyFile)
	b, _ := os.ReadFile(pol)
	os.WriteFile(pol, bytes.Replace(b, []byte("require_tpm_attestation = false"), []byte("require_tpm_attestation = true"), 1), 0o644)
	out, _, code = run("--port", link.JigTTY, "--json")
	if code != 2 || json.Unmarshal([]byte(out), &obj) != nil || obj.Step != "setup" || !strings.Contains(obj.Error, "require_tpm_attestation") {
		t.Fatalf("policy without --tpm-roots: exit %d, %q", code, out)
	}
	out, _, code = run("--port", link.JigTTY, "--tpm-roots", rootsFile, "--json")
	if code != 1 || json.Unmarshal([]byte(out), &obj) != nil || obj.Step != "attest" || obj.Reason != jig.ReasonNotOffered {
		t.Fatalf("policy, software key: exit %d, %q", code, out)
	}
}

// TestTPMRootsWithoutVerifier: without a verifier --tpm-roots is refused
// instead of silently not checking.
func TestTPMRootsWithoutVerifier(t *testing.T) {
	old := newVerifier
	newVerifier = nil
	t.Cleanup(func() { newVerifier = old })
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := ca.Init(caDir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := Main(context.Background(), Build{}, []string{"program", "--port", "/dev/null", "--ca-dir", caDir, "--tpm-roots", filepath.Join(caDir, ca.RootCertFile)}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "cannot verify TPM attestation") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
}

// TestProgramReissueFlags: a second `devid-jig program` leaves a board
// with a valid certificate alone; --reissue replaces it and revokes the
// old serial; `status --chain` prints the installed chain.
func TestProgramReissueFlags(t *testing.T) {
	t.Parallel()
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := ca.Init(caDir, ca.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	link := serialtest.NewLink(t)
	serveBoard(t, link.DeviceTTY, "cli-again-1", caDir, nil)
	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		code := Main(ctx, Build{}, args, &out, &errOut)
		return out.String(), errOut.String(), code
	}
	type result struct {
		OK                bool
		Serial            string
		AlreadyProgrammed bool   `json:"already_programmed"`
		ReplacedSerial    string `json:"replaced_serial"`
	}
	program := func(args ...string) result {
		t.Helper()
		out, errOut, code := run(append([]string{"program", "--ca-dir", caDir, "--station", "t", "--port", link.JigTTY, "--json"}, args...)...)
		var r result
		if code != 0 || json.Unmarshal([]byte(out), &r) != nil || !r.OK {
			t.Fatalf("program %q: exit %d\n%s%s", args, code, out, errOut)
		}
		return r
	}
	first := program()
	again := program()
	if first.AlreadyProgrammed || !again.AlreadyProgrammed || again.Serial != first.Serial {
		t.Fatalf("second run: %+v after %+v", again, first)
	}
	re := program("--reissue")
	if re.AlreadyProgrammed || re.Serial == first.Serial || re.ReplacedSerial != first.Serial {
		t.Fatalf("--reissue: %+v after %+v", re, first)
	}
	out, errOut, code := run("status", "--port", link.JigTTY, "--chain")
	certs, err := certstore.ParsePEM([]byte(out[strings.Index(out, "-----BEGIN"):]))
	if code != 0 || err != nil || len(certs) != 2 || !strings.Contains(out, "serial "+re.Serial) {
		t.Fatalf("status --chain: exit %d %v\n%s%s", code, err, out, errOut)
	}
	if _, errOut, code := run("program", "--est", "https://127.0.0.1:1", "--est-cert", "c", "--est-key", "k", "--est-ca", "r",
		"--port", link.JigTTY, "--reissue"); code != 2 || !strings.Contains(errOut, "--reissue needs --ca-dir") {
		t.Fatalf("--reissue with EST: exit %d %s", code, errOut)
	}
}
