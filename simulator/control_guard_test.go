package simulator_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"devid/simulator/simtest"
)

// rawControl sends one control-plane request with the headers given and
// returns the status and body.
func rawControl(t *testing.T, sim *simtest.Sim, method, path, body string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, sim.Ready.ControlURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestControlPlaneCSRF: a web page open on the developer's machine can
// POST to the loopback control plane (a "simple" cross-origin request:
// text/plain, form types or no type, no preflight), and a DNS-rebinding
// page reaches it under a foreign Host. Both are refused; nothing
// changes. Before: both created the enrollment.
func TestControlPlaneCSRF(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	leaf := simtest.NewDeviceCA(t).Issue(t, "victim")
	b, _ := json.Marshal(map[string]any{"registrationId": "victim", "attestation": map[string]any{"type": "x509", "x509": map[string]any{
		"clientCertificates": map[string]any{"primary": map[string]string{"certificate": string(simtest.PEM(leaf.Leaf))}}}}})
	enroll := string(b)
	for _, c := range []struct {
		name   string
		header map[string]string
		want   int
	}{
		{"text/plain from a web page", map[string]string{"Content-Type": "text/plain", "Origin": "https://evil.example"}, http.StatusUnsupportedMediaType},
		{"form from a web page", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, http.StatusUnsupportedMediaType},
		{"no content type (fetch no-cors)", map[string]string{}, http.StatusUnsupportedMediaType},
		{"foreign Host (DNS rebinding)", map[string]string{"Content-Type": "application/json", "Host": "evil.example:80"}, http.StatusForbidden},
		{"loopback-looking foreign Host", map[string]string{"Content-Type": "application/json", "Host": "127.0.0.1.evil.example"}, http.StatusForbidden},
	} {
		st, body := rawControl(t, sim, "PUT", "/enrollments/victim", enroll, c.header)
		if st != c.want || !strings.Contains(body, `"errorCode"`) {
			t.Errorf("%s: status %d %s, want %d with an errorCode", c.name, st, body, c.want)
		}
	}
	// A foreign Host cannot read either.
	if st, _ := rawControl(t, sim, "GET", "/sim/connections", "", map[string]string{"Host": "evil.example"}); st != http.StatusForbidden {
		t.Errorf("GET with a foreign Host: status %d, want 403", st)
	}
	if st, _ := sim.Do("GET", "/enrollments/victim", nil, nil); st != http.StatusNotFound {
		t.Fatalf("a refused request created the enrollment (GET: %d)", st)
	}
	// The genuine client: JSON, loopback Host (also "localhost" and
	// "[::1]"), or a hub's own host name (which selects the hub).
	for _, host := range []string{"", "localhost", "[::1]:1234", sim.Hub("").Host} {
		h := map[string]string{"Content-Type": "application/json; charset=utf-8"}
		if host != "" {
			h["Host"] = host
		}
		if st, body := rawControl(t, sim, "PUT", "/enrollments/victim", enroll, h); st != http.StatusOK && st != http.StatusCreated {
			t.Fatalf("JSON with Host %q: %d %s", host, st, body)
		}
	}
}

// TestControlPlaneToken: with --control-token-file, every call needs the
// bearer token (the CRL, a public document, excepted); the harness
// (simtest, through the ready line's control_token_file) sends it.
func TestControlPlaneToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sim := startSim(t, simtest.WithArgs("--control-token-file", tokenFile))
	if sim.Ready.ControlTokenFile != tokenFile {
		t.Fatalf("ready line control_token_file %q, want %q", sim.Ready.ControlTokenFile, tokenFile)
	}
	asJSON := map[string]string{"Content-Type": "application/json"}
	for _, auth := range []string{"", "Bearer wrong", "Basic czNjcmV0", "Bearer s3cret-token-0123456789-and-more"} {
		h := map[string]string{"Content-Type": "application/json"}
		if auth != "" {
			h["Authorization"] = auth
		}
		if st, body := rawControl(t, sim, "GET", "/sim/connections", "", h); st != http.StatusUnauthorized || !strings.Contains(body, `"errorCode"`) {
			t.Errorf("Authorization %q: status %d %s, want 401", auth, st, body)
		}
	}
	h := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer s3cret-token-0123456789"}
	if st, body := rawControl(t, sim, "GET", "/sim/connections", "", h); st != http.StatusOK {
		t.Fatalf("right token: %d %s", st, body)
	}
	if st, _ := rawControl(t, sim, "GET", "/crl/issuing.crl", "", asJSON); st != http.StatusOK {
		t.Fatalf("CRL without a token: %d, want 200 (a CRL is public)", st)
	}
	// The harness reads the token file named in the ready line.
	sim.MustDo("GET", "/sim/connections", nil, nil)
}
