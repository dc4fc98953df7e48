// Command broker is a plain MQTT broker over TLS for `make bench`
// (scripts/bench.d/telemetry.sh): it accepts every device whose client
// certificate chains to -client-ca and acknowledges every publish at
// once, keeping nothing. Pointed at by the agent in place of the
// simulated hub, it shows the agent's own telemetry ceiling.
//
// Its server certificate for -host comes from devid-sim's PKI in -dir
// (simulator.LoadOrCreatePKI); it prints one line on stdout when it
// listens, with the root the devices must trust:
//
//	{"addr":"127.0.0.1:PORT","ca":"DIR/server-root.pem"}
//
// It runs until SIGINT or SIGTERM.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"devid/simulator"
)

func main() {
	host := flag.String("host", "", "server name the devices dial (the hub host); required")
	dir := flag.String("dir", "", "directory for the server PKI (server-root.pem); required")
	clientCA := flag.String("client-ca", "", "PEM roots that device certificates must chain to; required")
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	if err := run(*host, *dir, *clientCA, *addr, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "broker:", err)
		os.Exit(1)
	}
}

func run(host, dir, clientCA, addr string, out io.Writer) error {
	if host == "" || dir == "" || clientCA == "" {
		return errors.New("-host, -dir and -client-ca are required")
	}
	roots := x509.NewCertPool()
	b, err := os.ReadFile(clientCA)
	if err != nil {
		return fmt.Errorf("-client-ca: %w", err)
	}
	if !roots.AppendCertsFromPEM(b) {
		return fmt.Errorf("-client-ca %s: no PEM certificate in it", clientCA)
	}
	// The simulator's own server PKI (ECDSA: the handshake is not what is
	// measured); its root is what the agent must trust.
	pki, err := simulator.LoadOrCreatePKI(dir, []string{host}, "ecdsa")
	if err != nil {
		return err
	}
	caPath := filepath.Join(dir, "server-root.pem")
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	tl := tls.NewListener(l, &tls.Config{
		Certificates: []tls.Certificate{pki.ServerCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS12,
	})
	capab := mqtt.NewDefaultServerCapabilities()
	capab.MaximumInflight = 1024
	s := mqtt.New(&mqtt.Options{Capabilities: capab, Logger: slog.New(slog.DiscardHandler)})
	if err := s.AddHook(new(allow), nil); err != nil {
		return err
	}
	if err := s.AddListener(listeners.NewNet("tls", tl)); err != nil {
		return err
	}
	if err := s.Serve(); err != nil {
		return err
	}
	ready, _ := json.Marshal(map[string]string{"addr": l.Addr().String(), "ca": caPath})
	fmt.Fprintf(out, "%s\n", ready)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return s.Close()
}

// allow lets every client connect and publish: TLS has checked it.
type allow struct{ mqtt.HookBase }

func (*allow) ID() string { return "allow" }

func (*allow) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (*allow) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (*allow) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
