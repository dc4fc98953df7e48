package clock_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"devid/hal/clock"
	"devid/hal/clock/clocktest"
)

func TestBackoffDelay(t *testing.T) {
	t.Parallel()
	b := clock.Backoff{Min: time.Second, Max: 100 * time.Second, Jitter: 5 * time.Second}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 100, 100}
	for i, w := range want {
		if d := b.Delay(i+1, 0); d != w*time.Second {
			t.Errorf("n=%d: %v, want %v", i+1, d, w*time.Second)
		}
	}
	if d := b.Delay(1, 0.5); d != 3500*time.Millisecond {
		t.Errorf("jitter: %v", d)
	}
	if d := b.Delay(0, 0); d != time.Second {
		t.Errorf("n=0: %v, want the first delay", d)
	}
}

func TestSleep(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if err := clock.Sleep(t.Context(), clock.System, 3*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 3*time.Second {
			t.Fatalf("slept %v, want 3s", got)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := clock.Sleep(ctx, clock.System, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("sleep past the deadline: %v", err)
		}
		if got := time.Since(start); got != 4*time.Second {
			t.Fatalf("cancelled sleep returned after %v, want at the 1 s deadline", got-3*time.Second)
		}
		if err := clock.Sleep(t.Context(), clock.System, 0); err != nil {
			t.Fatalf("zero sleep: %v", err)
		}
	})
}

func TestAfterStop(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ch, stop := clock.After(clock.System, time.Minute)
		if !stop() {
			t.Fatal("stop of an armed timer reported false")
		}
		clocktest.Step(2 * time.Minute)
		select {
		case <-ch:
			t.Fatal("a stopped timer fired")
		default:
		}
		ch, _ = clock.After(clock.System, time.Minute)
		if at := <-ch; !at.Equal(time.Now()) {
			t.Fatalf("fired at %v, now %v", at, time.Now())
		}
	})
}
