// Package clocktest has the test clocks for hal/clock and the one helper
// that waits for real processes.
//
// Which to use:
//
//   - Code under test that runs in process against fakes runs inside a
//     testing/synctest bubble on clock.System (or Wall, to start at a
//     chosen date and step the wall clock). Time there moves only when
//     every goroutine waits, so "let it settle, then look" (synctest.Wait,
//     Step) is exact.
//   - Code that must stay outside a bubble (it talks to a real process over
//     the network) runs on a Fake, which the test advances by hand, only
//     after the timer it expects is armed (Pending, AdvanceToNext).
//   - Waiting for a real process (a subprocess, a QEMU board, a socket the
//     kernel answers) polls the wall clock with Poll. Nothing else in a
//     test sleeps on the wall clock.
package clocktest

import (
	"sort"
	"sync"
	"testing/synctest"
	"time"

	"devid/hal/clock"
)

// Fake is a clock that moves only when the test says so. Advance moves
// both the wall clock and the timers' monotonic time; Set steps only the
// wall clock, as NTP does, and fires nothing. It is safe for concurrent
// use; timer functions run in their own goroutines.
type Fake struct {
	mu     sync.Mutex
	wall   time.Time
	mono   time.Duration // monotonic time since NewFake
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Duration // monotonic deadline
	f       func()
	stopped bool
}

var (
	_ clock.Clock     = (*Fake)(nil)
	_ clock.Monotonic = (*Fake)(nil)
)

// NewFake starts a fake clock showing t.
func NewFake(t time.Time) *Fake { return &Fake{wall: t} }

// Now returns the fake wall time.
func (c *Fake) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wall
}

// AfterFunc arms a timer that fires once the clock has advanced d.
func (c *Fake) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.mono + max(d, 0), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock forward by d and fires every timer due.
func (c *Fake) Advance(d time.Duration) {
	c.mu.Lock()
	c.mono += d
	c.wall = c.wall.Add(d)
	var due []*fakeTimer
	keep := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case t.at <= c.mono:
			t.stopped = true
			due = append(due, t)
		default:
			keep = append(keep, t)
		}
	}
	c.timers = keep
	c.mu.Unlock()
	sort.SliceStable(due, func(i, j int) bool { return due[i].at < due[j].at })
	for _, t := range due {
		go t.f()
	}
}

// AdvanceToNext advances to the earliest armed timer and fires it (and any
// due at the same instant). It returns how far the clock moved, and false
// when no timer is armed.
func (c *Fake) AdvanceToNext() (time.Duration, bool) {
	c.mu.Lock()
	var next time.Duration
	found := false
	for _, t := range c.timers {
		if !t.stopped && (!found || t.at < next) {
			next, found = t.at, true
		}
	}
	d := next - c.mono
	c.mu.Unlock()
	if !found {
		return 0, false
	}
	c.Advance(d)
	return d, true
}

// Monotonic is the fake monotonic time (clock.Monotonic): it moves with
// Advance, never with Set.
func (c *Fake) Monotonic() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

// Set steps the wall clock to t, forwards or backwards. Timers are not
// affected: they run on monotonic time.
func (c *Fake) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall = t
}

// Pending reports how many timers are armed: a test advances the clock
// only once the timer it expects is armed, never on a guess.
func (c *Fake) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped {
			n++
		}
	}
	return n
}

// Wall is clock.System showing a wall time the test chooses: Now runs on
// from the time given to NewWall or Set at the system's pace, and Set
// steps it (a board booting at 1970, NTP correcting it) without touching
// timers. Inside a testing/synctest bubble the bubble's fake time drives
// it, so it is exact.
type Wall struct {
	mu    sync.Mutex
	shown time.Time // the wall time at since
	since time.Time // system time when shown was set
}

var _ clock.Clock = (*Wall)(nil)

// NewWall starts a wall clock showing t.
func NewWall(t time.Time) *Wall { return &Wall{shown: t, since: time.Now()} }

// Now returns the chosen wall time plus the system time since it was set.
func (w *Wall) Now() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.shown.Add(time.Since(w.since))
}

// AfterFunc is clock.System's.
func (w *Wall) AfterFunc(d time.Duration, f func()) func() bool {
	return clock.System.AfterFunc(d, f)
}

// Set steps the wall clock to t.
func (w *Wall) Set(t time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.shown, w.since = t, time.Now()
}

// Step lets d of fake time pass inside a testing/synctest bubble, then
// returns once every goroutine of the bubble is blocked again: whatever
// was due within d has happened. Call it only inside a bubble.
func Step(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// Poll waits on the wall clock until cond holds or within has passed,
// and reports whether cond held. It is for real processes only (a
// subprocess, a QEMU board, the kernel answering a socket), which no fake
// clock can drive; callers fail the test with what they were waiting for.
func Poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return cond()
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
	return true
}
