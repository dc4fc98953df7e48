// Command mqttfloor is the footprint baseline for make bench: the least a
// Go device client on the agent's stack can be. It connects to an IoT Hub
// (the simulator's) with paho over crypto/tls, authenticated by the device
// certificate, prints "connected" and stays idle until it is signalled.
// scripts/bench.d/agent.sh measures its binary size and resident memory
// beside the agent's (docs/benchmarks.md).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	addr := flag.String("addr", "", "hub address to dial, host:port")
	host := flag.String("hub", "", "hub host name (TLS server name and MQTT user name)")
	device := flag.String("device", "", "device ID")
	caFile := flag.String("ca", "", "PEM file of the hub's server CA")
	certFile := flag.String("cert", "", "PEM file of the device certificate chain")
	keyFile := flag.String("key", "", "PEM file of the device key")
	flag.Parse()
	if err := run(*addr, *host, *device, *caFile, *certFile, *keyFile); err != nil {
		fmt.Fprintln(os.Stderr, "mqttfloor:", err)
		os.Exit(1)
	}
}

func run(addr, host, device, caFile, certFile, keyFile string) error {
	if addr == "" || host == "" || device == "" {
		return fmt.Errorf("-addr, -hub and -device are required")
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s: no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	opts := mqtt.NewClientOptions().
		AddBroker("ssl://" + addr).
		SetClientID(device).
		SetUsername(host + "/" + device + "/?api-version=2021-04-12").
		SetTLSConfig(&tls.Config{RootCAs: roots, ServerName: host, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}).
		SetProtocolVersion(4).
		SetKeepAlive(60 * time.Second).
		SetAutoReconnect(false)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return fmt.Errorf("connect %s: %v", addr, tok.Error())
	}
	fmt.Println("connected")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	c.Disconnect(250)
	return nil
}
