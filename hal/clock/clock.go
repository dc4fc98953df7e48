// Package clock is devid's one time source. Every layer above hal takes a
// Clock for wall time (timestamps, certificate validity, the clock floor)
// and for every wait, so that a test can run the agent on simulated time
// and a board can run it on a shifted one. dps, which imports no devid
// package, takes the same two things as plain functions (Now and Sleep in
// its configs); see docs/architecture.md.
//
// The real clock is System. Fakes for tests are in hal/clock/clocktest.
package clock

import (
	"context"
	"time"
)

// Clock tells the time and runs timers.
//
// Now is wall-clock time and may jump: a board without a battery-backed
// RTC boots at 1970, and NTP steps the clock later. Timers run on
// monotonic time, as the kernel's do: a wall-clock jump neither fires nor
// delays them.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed. stop
	// cancels it; it reports whether it stopped f from being called.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

// System is the real clock. Inside a testing/synctest bubble it is the
// bubble's fake clock, like everything in package time.
var System Clock = system{}

type system struct{}

func (system) Now() time.Time { return time.Now() }

func (system) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Sleep waits d on c, or until ctx ends, and then returns ctx.Err().
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	ch, stop := After(c, d)
	defer stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// After returns a channel that receives the time once d has passed on c,
// for a select that also waits for something else. Call stop when no
// longer waiting, so the timer does not outlive the select.
func After(c Clock, d time.Duration) (<-chan time.Time, func() bool) {
	ch := make(chan time.Time, 1)
	stop := c.AfterFunc(d, func() { ch <- c.Now() })
	return ch, stop
}
