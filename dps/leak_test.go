package dps

import (
	"context"
	"crypto/x509"
	"errors"
	"runtime"
	"testing"
	"time"
)

// TestHubNoGoroutineLeak connects, sends, and closes hub clients
// repeatedly against a bare broker and checks that every goroutine the
// client started is gone afterwards. Not parallel: the goroutine count
// must not include other tests.
func TestHubNoGoroutineLeak(t *testing.T) {
	ca, host, addr := startBareBroker(t)
	before := 0
	for i := 0; i < 6; i++ {
		if i == 1 {
			// After one full cycle the broker's own goroutines are up.
			before = settledGoroutines()
		}
		h, err := ConnectHub(context.Background(), HubConfig{
			Host: host, DeviceID: "leak-check", Credential: ca.credential(t, "leak-check"),
			Network:   Network{Resolve: map[string]string{host: addr}, TrustBundle: []*x509.Certificate{ca.cert}},
			OnDesired: func(DesiredUpdate) {},
			// The bare broker has no twin: the GET after connect times out
			// at once and is retried until Close.
			RequestTimeout: 10 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := h.SendTelemetry(context.Background(), &Message{Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		err = h.SendTelemetry(context.Background(), &Message{Payload: make([]byte, MaxTelemetrySize)})
		if !errors.Is(err, ErrTooLarge) || Retryable(err) {
			t.Errorf("oversized message: %v", err)
		}
		h.Close()
	}
	waitGoroutinesBack(t, before, "after closing every client")
}

// waitGoroutinesBack waits until the goroutine count is back to before.
// A Publish that raced a Close may sit in paho for up to writeTimeout;
// anything still there after that is a leak.
func waitGoroutinesBack(t *testing.T, before int, what string) {
	t.Helper()
	deadline := time.Now().Add(writeTimeout + 5*time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d %s:\n%s", before, n, what, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settledGoroutines waits briefly for goroutines that are finishing and
// returns the count.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for i := 0; i < 100; i++ {
		time.Sleep(5 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return m
		}
		n = m
	}
	return n
}
