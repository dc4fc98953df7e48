package main

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"devid/agent/renewal"
	"devid/agent/statedir"
	"devid/enroll/certstore"
	"devid/enroll/keys"
	"devid/simulator/simtest"
)

// hubBoard is a test board whose state dir holds a factory credential
// and a cached assignment to a hub that accepts only client certificates
// from one CA, and records the certificate each connection offered.
type hubBoard struct {
	*testBoard
	factory, operational *simtest.DeviceCert

	mu      sync.Mutex
	offered []string // CN of each client certificate the hub saw
}

// newHubBoard starts the hub (TLS 1.2, so that a refused client
// certificate fails the client's handshake) accepting only
// certificates from accept ("factory" or "operational"), and writes a
// config with renewal.path path that reaches it through network.resolve.
func newHubBoard(t *testing.T, accept, path string) *hubBoard {
	t.Helper()
	factoryCA, opCA := simtest.NewDeviceCA(t), simtest.NewDeviceCA(t)
	b := &hubBoard{testBoard: newTestBoard(t, "connected", ""),
		factory: factoryCA.Issue(t, "dev-factory"), operational: opCA.Issue(t, "dev-operational")}
	pool := x509.NewCertPool()
	if accept == "operational" {
		pool.AddCert(opCA.Root)
	} else {
		pool.AddCert(factoryCA.Root)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes
	srv.TLS = &tls.Config{
		MaxVersion: tls.VersionTLS12,
		// The hub checks the chain itself, to record refused certificates too.
		ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			var certs []*x509.Certificate
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				certs = append(certs, c)
			}
			b.mu.Lock()
			b.offered = append(b.offered, certs[0].Subject.CommonName)
			b.mu.Unlock()
			inter := x509.NewCertPool()
			for _, c := range certs[1:] {
				inter.AddCert(c)
			}
			_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			return err
		},
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	writeFile(t, b.state, keys.DefaultKeyFile, string(b.factory.KeyPEM(t)))
	writeFile(t, b.state, certstore.ChainFile, string(b.factory.ChainPEM()))
	writeFile(t, b.state, statedir.AssignmentFile, `{"schema":1,"hub":"example.com","device_id":"dev-1"}`)
	bundle := writeFile(t, b.dir, "roots.pem", string(simtest.PEM(srv.Certificate())))
	b.config = writeFile(t, b.dir, "config.toml", `state_dir = "`+b.state+`"
[key]
backend = "file:`+filepath.Join(b.state, keys.DefaultKeyFile)+`"
[dps]
id_scope = "0ne00000001"
endpoint = "127.0.0.1:1"
trust_bundle = "`+bundle+`"
[network]
resolve = { "example.com" = "`+srv.Listener.Addr().String()+`" }
[local_api]
socket = "`+b.socket+`"
group = ""
[renewal]
path = "`+path+`"
`)
	return b
}

// lastOffered is the CN of the client certificate the hub saw last.
func (b *hubBoard) lastOffered() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.offered) == 0 {
		return ""
	}
	return b.offered[len(b.offered)-1]
}

// installOperational puts the operational credential in the state dir,
// where renewal paths dps and hub install it.
func (b *hubBoard) installOperational(t *testing.T) {
	t.Helper()
	writeFile(t, b.state, renewal.OperationalKeyFile, string(b.operational.KeyPEM(t)))
	writeFile(t, b.state, renewal.OperationalChainFile, string(b.operational.ChainPEM()))
}

// TestCheckHubUsesOperationalCert: hub-reachable probes the hub with the
// credential the agent gives it: the operational one once installed,
// where the path in force uses one (dps, hub, auto), else the device
// certificate (path none: the agent leaves a stale one alone); the line
// says which. An operational credential that does not load is reported
// as such, not as a network problem.
func TestCheckHubUsesOperationalCert(t *testing.T) {
	for _, path := range []string{"dps", "hub", "auto"} {
		b := newHubBoard(t, "operational", path)
		b.installOperational(t)
		out, _, code := b.check(t, nil, "--only", "hub-reachable")
		if code != 0 || !strings.Contains(out, "[PASS] hub-reachable") || !strings.Contains(out, "with the operational certificate") {
			t.Errorf("renewal.path %s, operational certificate installed, hub accepts only it: exit %d:\n%s", path, code, out)
		}
		if got := b.lastOffered(); got != "dev-operational" {
			t.Errorf("renewal.path %s: the hub saw %q, want the operational certificate", path, got)
		}
	}

	// Path none: the agent, and so the probe, ignores a leftover
	// operational certificate.
	b := newHubBoard(t, "factory", "none")
	b.installOperational(t)
	if out, _, code := b.check(t, nil, "--only", "hub-reachable"); code != 0 || !strings.Contains(out, "with the device certificate") {
		t.Errorf("path none with a leftover operational certificate: exit %d:\n%s", code, out)
	}

	// Without an operational certificate the agent, and so the probe, uses
	// the device certificate.
	b = newHubBoard(t, "factory", "dps")
	out, _, code := b.check(t, nil, "--only", "hub-reachable")
	if code != 0 || !strings.Contains(out, "[PASS] hub-reachable") || !strings.Contains(out, "with the device certificate") {
		t.Errorf("no operational certificate: exit %d:\n%s", code, out)
	}
	if got := b.lastOffered(); got != "dev-factory" {
		t.Errorf("no operational certificate: the hub saw %q, want the device certificate", got)
	}
	b = newHubBoard(t, "operational", "dps")
	out, _, code = b.check(t, nil, "--only", "hub-reachable")
	if code != 1 || !strings.Contains(out, "[FAIL] hub-reachable") || !strings.Contains(out, "with the device certificate") ||
		!strings.Contains(out, "refused") {
		t.Errorf("no operational certificate, hub accepts only operational ones: exit %d:\n%s", code, out)
	}

	// The operational chain is there but its key is not: say so.
	b = newHubBoard(t, "operational", "dps")
	b.installOperational(t)
	os.Remove(filepath.Join(b.state, renewal.OperationalKeyFile))
	out, _, code = b.check(t, nil, "--only", "hub-reachable")
	if code != 1 || !strings.Contains(out, "[FAIL] hub-reachable") || !strings.Contains(out, "operational key") ||
		strings.Contains(out, "DNS") || strings.Contains(out, "firewall") {
		t.Errorf("operational key missing: exit %d:\n%s", code, out)
	}
	if got := b.lastOffered(); got != "" {
		t.Errorf("operational key missing: the hub was probed with %q", got)
	}
}
