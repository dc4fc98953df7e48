package clock

import "time"

// Monotonic is implemented by a Clock whose timers run on a monotonic
// time of its own rather than the process's (clocktest.Fake): Monotonic
// returns that time, counted from any fixed origin.
type Monotonic interface {
	Monotonic() time.Duration
}

// Stopwatch measures how much monotonic time has passed on a Clock since
// it was started: a step of the wall clock (NTP, a 1970 boot, a manual
// `date`) does not move it. It is what bounds a time derived from a
// trusted one (the agent's clock floor, agent/clockfloor.go).
type Stopwatch struct {
	m     Monotonic // nil: the process's monotonic clock
	start time.Time
	mono  time.Duration
}

// StartStopwatch starts a stopwatch on c's monotonic time.
func StartStopwatch(c Clock) Stopwatch {
	if m, ok := c.(Monotonic); ok {
		return Stopwatch{m: m, mono: m.Monotonic()}
	}
	// time.Now carries the process's monotonic reading, which
	// time.Since uses; c.Now may be a shifted wall time (Wall, the
	// agent's test clock file) that has lost it.
	return Stopwatch{start: time.Now()}
}

// Elapsed is the monotonic time since StartStopwatch; zero for the zero
// Stopwatch.
func (s Stopwatch) Elapsed() time.Duration {
	switch {
	case s.m != nil:
		return s.m.Monotonic() - s.mono
	case s.start.IsZero():
		return 0
	}
	return time.Since(s.start)
}
