// Package factorytest serves factory devices (enroll/factory) in tests:
// on a serial port until the test ends.
package factorytest

import (
	"context"
	"errors"
	"testing"

	"devid/enroll/factory"
	"devid/hal/serial"
)

// Serve runs d.Serve on p until the test or benchmark ends. The cleanup
// stops it, checks that Serve ended only because it was stopped, and
// closes p.
func Serve(tb testing.TB, d *factory.Device, p serial.Port) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, p) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			tb.Errorf("device %s: Serve returned %v, want context.Canceled", d.ID, err)
		}
		p.Close()
	})
}
