package dps

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

// TestFailedConnectsNoGoroutineLeak: the agent calls Register and
// ConnectHub again and again through an outage. Failed attempts (a
// broker that never answers DPS, a closed port, a server that fails TLS,
// a caller that gives up) must leave no goroutine behind. Not parallel:
// the goroutine count must not include other tests.
func TestFailedConnectsNoGoroutineLeak(t *testing.T) {
	ca, host, addr := startBareBroker(t)
	other := newTestCA(t, "not the broker's CA")
	cred := ca.credential(t, "leak-reg")
	clk := newFakeClock()
	base := Config{
		Endpoint: host, IDScope: "0ne00000000", Certificate: cred,
		Now: clk.Now, Sleep: clk.Sleep, Rand: func() float64 { return 0.5 },
		// The bare broker never answers a register request: each attempt
		// ends on the response timeout, the whole call on Timeout.
		ResponseTimeout: 20 * time.Millisecond,
		Timeout:         150 * time.Millisecond,
	}
	nets := []Network{
		{Resolve: map[string]string{host: addr}, TrustBundle: []*x509.Certificate{ca.cert}},          // no DPS reply
		{Resolve: map[string]string{host: "127.0.0.1:1"}, TrustBundle: []*x509.Certificate{ca.cert}}, // refused
		{Resolve: map[string]string{host: addr}, TrustBundle: []*x509.Certificate{other.cert}},       // TLS refused
	}
	run := func() {
		for _, n := range nets {
			cfg := base
			cfg.Network = n
			if _, err := Register(context.Background(), cfg); err == nil {
				t.Fatalf("register via %v succeeded against a broker that is not DPS", n.Resolve)
			}
		}
		// A caller that gives up early (agent shutdown, state change).
		ctx, cancel := context.WithCancel(context.Background())
		cfg := base
		cfg.Network = nets[0]
		done := make(chan error, 1)
		go func() { _, err := Register(ctx, cfg); done <- err }()
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled register: %v", err)
		}
		// Hub connects that fail before CONNACK.
		for _, n := range nets[1:] {
			h, err := ConnectHub(context.Background(), HubConfig{Host: host, DeviceID: "leak-reg", Certificate: cred,
				Network: n})
			if err == nil {
				h.Close()
				t.Fatalf("hub connect via %v succeeded", n.Resolve)
			}
		}
	}
	run() // warm up: the broker's own goroutines, lazily started pools
	before := settledGoroutines()
	for i := 0; i < 3; i++ {
		run()
	}
	waitGoroutinesBack(t, before, "after failed connects")
}
