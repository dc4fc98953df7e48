package conformance

import (
	"crypto/tls"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestTLS checks the TLS layer a device meets: TLS 1.2 on DPS and on
// the hub (1.3 only where the simulator was started with the switch for the
// hub's preview), a client that insists on TLS 1.3 refused by DPS, an
// accepted cipher suite from the documented list, and a server certificate
// valid for the name the device dialled.
func TestTLS(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance tls CA")
	dev := ca.issue(t, "tls-1", leafOpts{})
	args := os.Getenv("CONFORMANCE_SIM_ARGS")
	allowed := []uint16{ // the cipher suites the DPS TLS documentation requires at least
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
	}
	handshake := func(ep endpoint, minV, maxV uint16) (tls.ConnectionState, error) {
		cfg := &tls.Config{RootCAs: tg.roots, ServerName: ep.host, MinVersion: minV, MaxVersion: maxV,
			Certificates: []tls.Certificate{dev.TLS}}
		d := &net.Dialer{Timeout: ioWait}
		c, err := tls.DialWithDialer(d, "tcp", ep.addr, cfg)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioWait))
		return c.ConnectionState(), nil
	}
	for _, tc := range []struct {
		name string
		ep   endpoint
		max  string // the switch that allows TLS 1.3 there
	}{
		{"DPS", tg.dps(), "--dps-max-tls 1.3"},
		{"hub", tg.hub(tg.ready.Hubs[0].Host), "--hub-max-tls 1.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st, err := handshake(tc.ep, tls.VersionTLS12, tls.VersionTLS13)
			if err != nil {
				t.Fatalf("TLS 1.2–1.3 client: %v", err)
			}
			if err := st.PeerCertificates[0].VerifyHostname(tc.ep.host); err != nil {
				t.Errorf("server certificate not valid for %s: %v", tc.ep.host, err)
			}
			if strings.Contains(args, tc.max) {
				return
			}
			if st.Version != tls.VersionTLS12 {
				t.Errorf("negotiated %s; the service speaks TLS 1.2", tls.VersionName(st.Version))
			}
			if !slices.Contains(allowed, st.CipherSuite) {
				t.Errorf("cipher suite %s is not in the documented list", tls.CipherSuiteName(st.CipherSuite))
			}
			if _, err := handshake(tc.ep, tls.VersionTLS13, tls.VersionTLS13); err == nil {
				t.Errorf("a TLS 1.3-only client was accepted; %s is TLS 1.2", tc.name)
			}
		})
	}
}
