package main

import (
	"os"
	"strings"
	"sync"
	"time"

	"devid/hal/clock"
)

// clockFileEnv names a file that shifts the agent's clock, for tests of
// 1970 boots and long outages. It is honoured only when the config sets
// debug.allow_clock_override. The file holds either an RFC 3339 time
// (the clock jumps there and runs on) or a Go duration offset ("-500000h").
const clockFileEnv = "DEVID_CLOCK_FILE"

// fileClock is the system clock plus an offset read from a file,
// re-read whenever the file changes. Only the wall clock moves: timers
// run on the system's monotonic time, as after an NTP step.
type fileClock struct {
	path string

	mu     sync.Mutex
	mtime  time.Time
	size   int64
	offset time.Duration
}

func (c *fileClock) Now() time.Time {
	real := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := os.Stat(c.path)
	if err != nil {
		c.offset, c.mtime, c.size = 0, time.Time{}, 0
		return real
	}
	if !st.ModTime().Equal(c.mtime) || st.Size() != c.size {
		c.mtime, c.size = st.ModTime(), st.Size()
		b, _ := os.ReadFile(c.path)
		s := strings.TrimSpace(string(b))
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			c.offset = t.Sub(real)
		} else if d, err := time.ParseDuration(s); err == nil {
			c.offset = d
		} else {
			c.offset = 0
		}
	}
	return real.Add(c.offset)
}

// AfterFunc is the system clock's.
func (c *fileClock) AfterFunc(d time.Duration, f func()) func() bool {
	return clock.System.AfterFunc(d, f)
}
