// Command broker is a plain MQTT broker over TLS for `make bench`
// (scripts/bench.d/telemetry.sh): it accepts every device whose client
// certificate chains to -client-ca and acknowledges every publish at
// once, keeping nothing. Pointed at by the agent in place of the
// simulated hub, it shows the agent's own telemetry ceiling.
//
// It makes its own CA and a server certificate for -host, writes the CA
// to -dir/ca.pem, and prints one line on stdout when it listens:
//
//	{"addr":"127.0.0.1:PORT","ca":"DIR/ca.pem"}
//
// It runs until SIGINT or SIGTERM.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

func main() {
	host := flag.String("host", "", "server name the devices dial (the hub host); required")
	dir := flag.String("dir", "", "directory for ca.pem; required")
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
	cert, caPEM, err := serverCert(host)
	if err != nil {
		return err
	}
	caPath := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPath, caPEM, 0o600); err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	tl := tls.NewListener(l, &tls.Config{
		Certificates: []tls.Certificate{cert},
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

// serverCert makes a CA and a server certificate for host signed by it.
func serverCert(host string) (tls.Certificate, []byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "devid bench broker CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, caPEM, nil
}

// allow lets every client connect and publish: TLS has checked it.
type allow struct{ mqtt.HookBase }

func (*allow) ID() string { return "allow" }

func (*allow) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (*allow) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (*allow) OnACLCheck(*mqtt.Client, string, bool) bool { return true }
