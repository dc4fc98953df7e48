package clocktest_test

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"devid/hal/clock"
	"devid/hal/clock/clocktest"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func TestFakeAdvanceAndSet(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) { // for synctest.Wait: the timers fire in goroutines
		c := clocktest.NewFake(t0)
		var fired atomic.Int32
		c.AfterFunc(10*time.Second, func() { fired.Add(1) })
		stop := c.AfterFunc(20*time.Second, func() { fired.Add(10) })
		if n := c.Pending(); n != 2 {
			t.Fatalf("pending %d, want 2", n)
		}
		// A wall-clock step fires nothing, forwards or backwards.
		c.Set(t0.Add(time.Hour))
		c.Set(time.Unix(0, 0))
		synctest.Wait()
		if fired.Load() != 0 || c.Pending() != 2 {
			t.Fatalf("a wall-clock step fired timers (%d)", fired.Load())
		}
		if !c.Now().Equal(time.Unix(0, 0)) {
			t.Fatalf("now %v after Set", c.Now())
		}
		c.Advance(9 * time.Second)
		synctest.Wait()
		if fired.Load() != 0 {
			t.Fatal("fired early")
		}
		d, ok := c.AdvanceToNext()
		synctest.Wait()
		if !ok || d != time.Second || fired.Load() != 1 {
			t.Fatalf("AdvanceToNext moved %v (%v), fired %d", d, ok, fired.Load())
		}
		if !c.Now().Equal(time.Unix(10, 0)) {
			t.Fatalf("now %v, want 10 s after the step", c.Now())
		}
		if !stop() || stop() {
			t.Fatal("stop: want true once, then false")
		}
		if _, ok := c.AdvanceToNext(); ok || c.Pending() != 0 {
			t.Fatal("a stopped timer is still armed")
		}
		c.Advance(time.Hour)
		synctest.Wait()
		if fired.Load() != 1 {
			t.Fatalf("a stopped timer fired (%d)", fired.Load())
		}
	})
}

func TestFakeSleep(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		c := clocktest.NewFake(t0)
		done := make(chan error, 1)
		go func() { done <- clock.Sleep(t.Context(), c, 5*time.Minute) }()
		synctest.Wait()
		if c.Pending() != 1 {
			t.Fatal("sleep armed no timer")
		}
		c.Advance(5 * time.Minute)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

func TestWall(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		w := clocktest.NewWall(t0)
		if !w.Now().Equal(t0) {
			t.Fatalf("now %v, want %v", w.Now(), t0)
		}
		var fired atomic.Bool
		w.AfterFunc(time.Minute, func() { fired.Store(true) })
		clocktest.Step(30 * time.Second)
		if got := w.Now(); !got.Equal(t0.Add(30 * time.Second)) {
			t.Fatalf("now %v after 30 s", got)
		}
		// Stepping the wall clock leaves the timer alone.
		w.Set(time.Unix(0, 0))
		clocktest.Step(29 * time.Second)
		if fired.Load() {
			t.Fatal("fired early")
		}
		if got := w.Now(); !got.Equal(time.Unix(29, 0)) {
			t.Fatalf("now %v, want 29 s after the step to 1970", got)
		}
		clocktest.Step(time.Second)
		if !fired.Load() {
			t.Fatal("timer did not fire after a minute")
		}
	})
}

func TestPoll(t *testing.T) {
	t.Parallel()
	n := 0
	if !clocktest.Poll(time.Minute, func() bool { n++; return n == 3 }) || n != 3 {
		t.Fatalf("poll stopped after %d calls", n)
	}
	if clocktest.Poll(0, func() bool { return false }) {
		t.Fatal("poll reported a condition that never held")
	}
}
