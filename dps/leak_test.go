package dps

import (
	"context"
	"crypto/x509"
	"errors"
	"runtime"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
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
			Host: host, DeviceID: "leak-check", Certificate: ca.credential(t, "leak-check"),
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
		// The async path's goroutines end with the connection too.
		async := make(chan error, 1)
		h.SendTelemetryAsync(&Message{Payload: []byte("y")}, time.Minute, func(err error) { async <- err })
		if err := <-async; err != nil {
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
// The clients' goroutines end on real network IO (the broker closing,
// paho's writes timing out), which no fake clock drives: these two wait
// on the wall clock through clocktest.Poll.
func waitGoroutinesBack(t *testing.T, before int, what string) {
	t.Helper()
	if !clocktest.Poll(writeTimeout+5*time.Second, func() bool { return runtime.NumGoroutine() <= before }) {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before, %d %s:\n%s", before, runtime.NumGoroutine(), what, buf[:runtime.Stack(buf, true)])
	}
}

// settledGoroutines waits briefly for goroutines that are finishing (two
// readings in a row agree) and returns the count.
func settledGoroutines() int {
	n := -1
	clocktest.Poll(500*time.Millisecond, func() bool {
		m := runtime.NumGoroutine()
		same := m == n
		n = m
		return same
	})
	return n
}
