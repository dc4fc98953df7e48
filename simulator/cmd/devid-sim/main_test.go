package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/simulator/simtest"
)

func TestCLI(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t)
	bin := simtest.Binary(t)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append(args, "--state", sim.StateDir)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	ca := simtest.NewDeviceCA(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, simtest.PEM(ca.Root), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run("enroll-group", "cli-g", "--ca", caFile, "--iothub", sim.Hub("").Host, "--twin", `{"properties":{"desired":{"a":1}}}`,
		"--credential-policy", "line-policy")
	if err != nil || !strings.Contains(out, `"enrollmentGroupId": "cli-g"`) {
		t.Fatalf("enroll-group: %v\n%s", err, out)
	}
	var g map[string]any
	sim.MustDo("GET", "/enrollmentGroups/cli-g", nil, &g)
	if g["provisioningStatus"] != "enabled" || g["x-sim-credentialPolicy"] != "line-policy" {
		t.Fatalf("group %v", g)
	}
	if out, err = run("disable", "group", "cli-g"); err != nil || !strings.Contains(out, `"disabled"`) {
		t.Fatalf("disable: %v\n%s", err, out)
	}
	out, err = run("fault", "add", "--scope", "dps", "--delay-ms", "10")
	if err != nil {
		t.Fatalf("fault add: %v\n%s", err, out)
	}
	out, _ = run("fault", "list")
	var faults []map[string]any
	if err := json.Unmarshal([]byte(out), &faults); err != nil || len(faults) != 1 {
		t.Fatalf("fault list: %v\n%s", err, out)
	}
	if _, err := run("fault", "clear"); err != nil {
		t.Fatal(err)
	}
	if out, err = run("telemetry", "--device", "nobody"); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("telemetry: %v\n%s", err, out)
	}
	// Bad input names what was wrong: a bad command line exits 2, a
	// request the simulator refuses exits 1.
	for _, bad := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"enroll-group", "x"}, 2, "--ca FILE is required"},
		{[]string{"fault", "add", "--status", "404"}, 1, "404"},
		{[]string{"disable", "gizmo", "x"}, 2, `kind "gizmo"`},
		{[]string{"nonsense"}, 2, `unknown command "nonsense"`},
		{[]string{"twin", "d", "--desired", "{bad"}, 2, "--desired"},
		{[]string{"devices", "--ca", "x"}, 2, "--ca does not apply to devices"},
	} {
		if out, err := run(bad.args...); exitCode(err) != bad.code || !strings.Contains(out, "devid-sim") || !strings.Contains(out, bad.says) {
			t.Errorf("%v: err %v (want exit %d), out %s", bad.args, err, bad.code, out)
		}
	}
	if out, err := exec.Command(bin, "serve", "--state", t.TempDir(), "--hub-retain", "maybe").CombinedOutput(); err == nil || !strings.Contains(string(out), "--hub-retain") {
		t.Errorf("bad switch accepted: %s", out)
	}
}

func TestESTMounted(t *testing.T) {
	t.Parallel()
	sim := simtest.Start(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "est-g", ca.Root)
	dev := ca.Issue(t, "est-dev")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: sim.TLSConfig("localhost", dev.TLSCertificate())}}
	resp, err := hc.Get(sim.Ready.ESTURL + "/.well-known/est/cacerts")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("cacerts: %v %v", err, resp)
	}
	resp.Body.Close()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "est-dev"}}, k)
	resp, err = hc.Post(sim.Ready.ESTURL+"/.well-known/est/simpleenroll", "application/pkcs10", strings.NewReader(base64.StdEncoding.EncodeToString(der)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("simpleenroll: %s %s", resp.Status, body)
	}
	// An untrusted client certificate may not enroll.
	other := simtest.NewDeviceCA(t).Issue(t, "est-dev")
	hc2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: sim.TLSConfig("localhost", other.TLSCertificate())}}
	resp, err = hc2.Post(sim.Ready.ESTURL+"/.well-known/est/simpleenroll", "application/pkcs10", strings.NewReader(base64.StdEncoding.EncodeToString(der)))
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("untrusted client enrolled over EST")
		}
	}
}

// exitCode is the exit status of a finished command (0 when err is nil).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
