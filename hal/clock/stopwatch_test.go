package clock_test

import (
	"testing"
	"testing/synctest"
	"time"

	"devid/hal/clock"
	"devid/hal/clock/clocktest"
)

// TestStopwatchIgnoresWallSteps: a stopwatch counts monotonic time only,
// on the system-paced Wall clock and on a Fake.
func TestStopwatchIgnoresWallSteps(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	synctest.Test(t, func(t *testing.T) {
		w := clocktest.NewWall(t0)
		sw := clock.StartStopwatch(w)
		w.Set(t0.Add(20 * 24 * time.Hour))
		clocktest.Step(time.Minute)
		w.Set(time.Unix(0, 0))
		if got := sw.Elapsed(); got != time.Minute {
			t.Fatalf("Wall: elapsed %v across wall steps, want 1m", got)
		}
	})
	f := clocktest.NewFake(t0)
	sw := clock.StartStopwatch(f)
	f.Set(t0.Add(20 * 24 * time.Hour))
	f.Advance(time.Hour)
	if got := sw.Elapsed(); got != time.Hour {
		t.Fatalf("Fake: elapsed %v, want 1h", got)
	}
	if got := (clock.Stopwatch{}).Elapsed(); got != 0 {
		t.Fatalf("zero stopwatch: %v", got)
	}
}
