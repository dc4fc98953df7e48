package dps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"testing"

	mqttsrv "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkTelemetryClientOnly measures the client's own QoS 1 ceiling
// against a bare in-process broker (mochi over loopback TLS, no
// persistence), to separate client cost from the simulator's
// durable-recording cost in BenchmarkTelemetryQoS1. One op = 200
// messages.
func BenchmarkTelemetryClientOnly(b *testing.B) {
	ca, host, addr := startBareBroker(b)

	for _, window := range []int{1, 32} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			id := fmt.Sprintf("bench-client-%d", window)
			h, err := ConnectHub(context.Background(), HubConfig{
				Host: host, DeviceID: id, Certificate: ca.credential(b, id),
				Network: Network{Resolve: map[string]string{host: addr}, TrustBundle: []*x509.Certificate{ca.cert}},
			})
			if err != nil {
				b.Fatal(err)
			}
			defer h.Close()
			sendTelemetryBench(b, h, window)
		})
	}
}

// startBareBroker runs an in-process mochi broker on loopback TLS that
// accepts everyone: no persistence, no checks. It returns the CA of its
// server certificate, the host name the certificate is for, and the
// address to dial.
func startBareBroker(t testing.TB) (*testCA, string, string) {
	t.Helper()
	ca := newTestCA(t, "bare broker CA")
	host := "bare-hub.azure-devices.net"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := mqttsrv.New(&mqttsrv.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		t.Fatal(err)
	}
	tl := listeners.NewTCP(listeners.Config{ID: "tls", Address: addr,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, host)}, ClientAuth: tls.RequireAnyClientCert}})
	if err := srv.AddListener(tl); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() { srv.Close() })
	return ca, host, addr
}

// allowAll lets every client connect and use every topic (the bench
// broker checks nothing; the simulator does).
type allowAll struct{ mqttsrv.HookBase }

func (allowAll) ID() string { return "allow-all" }
func (allowAll) Provides(b byte) bool {
	return b == mqttsrv.OnConnectAuthenticate || b == mqttsrv.OnACLCheck
}
func (allowAll) OnConnectAuthenticate(*mqttsrv.Client, packets.Packet) bool { return true }
func (allowAll) OnACLCheck(*mqttsrv.Client, string, bool) bool              { return true }
