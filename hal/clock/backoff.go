package clock

import "time"

// Backoff is capped exponential backoff with additive jitter: the delay
// after n consecutive failures (n ≥ 1) is Min·2^(n-1), capped at Max, plus
// up to Jitter of random delay (on top of the base, as the Azure SDKs do).
// The agent's DPS and hub retries, its revoked-device retries and its
// clock waits all use it.
//
// dps, which imports no devid package, keeps its own full-jitter backoff
// for its internal retries (dps.Backoff).
type Backoff struct {
	Min, Max, Jitter time.Duration
}

// Delay is the wait after n consecutive failures; rnd is in [0, 1).
func (b Backoff) Delay(n int, rnd float64) time.Duration {
	if n < 1 {
		n = 1
	}
	d := b.Min
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	if d > b.Max {
		d = b.Max
	}
	if b.Jitter > 0 {
		d += time.Duration(rnd * float64(b.Jitter))
	}
	return d
}
