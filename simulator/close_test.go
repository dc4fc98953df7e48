package simulator_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"testing"

	"devid/simulator"
	"devid/simulator/simtest"
)

// TestCloseEndsSilentConnections: Close returns while clients hold
// connections that never finished TLS or never sent CONNECT (mochi alone
// would wait for them forever; the subprocess used to hide that behind
// SIGKILL).
func TestCloseEndsSilentConnections(t *testing.T) {
	t.Parallel()
	s, err := simulator.StartArgs([]string{"--state", t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := s.Ready()
	// Raw TCP: the TLS handshake never starts.
	for _, addr := range []string{r.DPS.Addr, r.Hubs[0].Addr} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// TLS done, no CONNECT.
	pem, err := os.ReadFile(r.ServerCA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	ca := simtest.NewDeviceCA(t)
	dev := ca.Issue(t, "silent-1")
	for _, ep := range []struct{ host, addr string }{{r.DPS.Host, r.DPS.Addr}, {r.Hubs[0].Host, r.Hubs[0].Addr}} {
		c, err := tls.Dial("tcp", ep.addr, &tls.Config{ServerName: ep.host, RootCAs: pool, Certificates: []tls.Certificate{dev.TLSCertificate()}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
