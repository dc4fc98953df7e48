package dps

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// sleep is the real Sleep: it waits d or until ctx is done (returning
// ctx.Err()).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Backoff is exponential backoff with full jitter for the retries inside
// dps (429, 5xx, transport failures, twin requests). It is dps's own because
// dps imports no devid package; the agent's backoff between attempts is
// hal/clock's Backoff.
//
//	delay(n) = Floor + U[0, min(Max, Base·2^n))
//
// n is the number of consecutive failures so far (0 for the first
// retry).
type Backoff struct {
	Base  time.Duration
	Max   time.Duration
	Floor time.Duration
}

// Delay returns the wait before retry n, using rnd in [0,1).
func (b Backoff) Delay(n int, rnd func() float64) time.Duration {
	if n < 0 {
		n = 0
	}
	if n > 30 {
		n = 30
	}
	ceil := b.Base << n
	if ceil <= 0 || ceil > b.Max {
		ceil = b.Max
	}
	return b.Floor + time.Duration(rnd()*float64(ceil))
}

func defaultRand() func() float64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	return func() float64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64()
	}
}

const pollMargin = 100 * time.Millisecond

func secs(n int64) time.Duration { return time.Duration(n) * time.Second }

// clampRetryAfter keeps a service-supplied retry-after within
// [min, max]. Values outside come from bugs or hostile middleboxes; a
// huge one must not park a device for days.
func clampRetryAfter(d, min, max time.Duration) time.Duration {
	if d < min {
		return min
	}
	if d > max {
		return max
	}
	return d
}

// pollLimiter keeps status polls within DPS's per-device quota of
// `limit` polls per `window` (5 per 10 s) with a sliding window.
type pollLimiter struct {
	limit  int
	window time.Duration
	times  []time.Time
}

// wait returns how long to wait before the next poll at now.
func (p *pollLimiter) wait(now time.Time) time.Duration {
	if len(p.times) < p.limit {
		return 0
	}
	// A small margin: the service counts arrivals, which latency jitter
	// can bunch up.
	oldest := p.times[len(p.times)-p.limit]
	if d := oldest.Add(p.window + pollMargin).Sub(now); d > 0 {
		return d
	}
	return 0
}

func (p *pollLimiter) record(now time.Time) {
	p.times = append(p.times, now)
	if len(p.times) > p.limit {
		p.times = p.times[len(p.times)-p.limit:]
	}
}

// sharedDefaults fills the fields Config and HubConfig have in common:
// keep-alive (defaulted and clamped to [1 s, MaxKeepAlive]), backoff
// (base 1 s, max maxBackoff), sleep, jitter source and logger.
func sharedDefaults(keepAlive *time.Duration, b *Backoff, maxBackoff time.Duration, sleepFn *func(context.Context, time.Duration) error, rnd *func() float64, logger **slog.Logger) {
	if *keepAlive <= 0 {
		*keepAlive = DefaultKeepAlive
	}
	*keepAlive = min(max(*keepAlive, time.Second), MaxKeepAlive)
	if b.Base <= 0 {
		b.Base = time.Second
	}
	if b.Max <= 0 {
		b.Max = maxBackoff
	}
	if *sleepFn == nil {
		*sleepFn = sleep
	}
	if *rnd == nil {
		*rnd = defaultRand()
	}
	if *logger == nil {
		*logger = slog.New(slog.DiscardHandler)
	}
}
