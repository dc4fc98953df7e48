package agent

import (
	"crypto/x509"
	"fmt"
	"time"

	"devid/agent/statedir"
	"devid/hal/clock"
)

// The clock floor (docs/agent.md, "The clock floor"): no TLS until the
// wall clock has reached the earliest time it can plausibly show.
//
// Two parts. The hard floor is what nothing on the device can contradict:
// the build date and the factory certificate's notBefore. The saved floor
// is state.json's last_known_good, a lower bound on real time the agent
// derived earlier. It is written only while a TLS session is up, and only
// from what is known about real time, never from the wall clock alone:
//
//   - a certificate's notBefore (real time has passed it once the CA
//     issued it, and a peer that accepts the certificate agrees);
//   - the saved value at boot, which was derived the same way;
//   - the wall clock while the kernel reports NTP synchronisation;
//
// each plus the monotonic time elapsed since it was taken. The value
// written is the lesser of that bound and the wall clock, so a wall clock
// that jumps forward (a bad RTC, a manual date) cannot push the floor
// ahead of real time. A saved floor ahead of the wall clock is corrected,
// not waited out, when real time contradicts it: the kernel reports NTP
// synchronisation, or a TLS peer accepts a session at the wall clock.

// clockFloorBuild is a date before which this build cannot be running.
var clockFloorBuild = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// HardClockFloor is the part of the clock floor nothing on the device can
// contradict: the build date, or the factory certificate's notBefore when
// later (leaf may be nil). why names it for status, logs and check.
func HardClockFloor(leaf *x509.Certificate) (floor time.Time, why string) {
	floor, why = clockFloorBuild, "build date"
	if leaf != nil && leaf.NotBefore.After(floor) {
		floor, why = leaf.NotBefore, "certificate notBefore"
	}
	return floor, why
}

// WhyLastKnownGood names the saved floor in status, logs and check.
const WhyLastKnownGood = "last known good time"

// clockFloor is the floor the clock must reach before any TLS, and the
// hard part of it.
type clockFloor struct {
	at   time.Time
	why  string
	hard time.Time
	// hardWhy names hard: build date or certificate notBefore.
	hardWhy string
}

// savedOnly says whether now is below the floor only because of the
// saved last-known-good time: the one part real time may contradict.
func (f clockFloor) savedOnly(now time.Time) bool {
	return now.Before(f.at) && !now.Before(f.hard)
}

func (a *Agent) clockFloor() clockFloor {
	f := clockFloor{}
	f.hard, f.hardWhy = HardClockFloor(a.id.Leaf())
	f.at, f.why = f.hard, f.hardWhy
	if a.persisted.LastKnownGood.After(f.at) {
		f.at, f.why = a.persisted.LastKnownGood, WhyLastKnownGood
	}
	return f
}

// anchor is a lower bound on real time, taken when watch started.
type anchor struct {
	at    time.Time
	watch clock.Stopwatch
}

// bound is the anchor moved on by the monotonic time since it was taken
// (zero for no anchor).
func (x anchor) bound() time.Time {
	if x.at.IsZero() {
		return time.Time{}
	}
	return x.at.Add(x.watch.Elapsed())
}

// raise replaces x with t, taken now, when t is later than x's bound.
func (x *anchor) raise(c clock.Clock, t time.Time) {
	if t.After(x.bound()) {
		*x = anchor{at: t, watch: clock.StartStopwatch(c)}
	}
}

// floorAnchors is what the agent knows about real time (Run goroutine).
type floorAnchors struct {
	// cert: the newest notBefore of the loaded credentials.
	cert anchor
	// saved: the saved last_known_good at boot, or the wall clock while
	// the kernel reported NTP synchronisation; dropped when contradicted.
	saved anchor
}

// realTimeBound is the latest time real time is known to have reached.
func (f *floorAnchors) realTimeBound() time.Time {
	b, s := f.cert.bound(), f.saved.bound()
	if s.After(b) {
		return s
	}
	return b
}

// anchorCredentials raises the certificate anchor to the newest notBefore
// of the loaded credentials (factory and operational).
func (a *Agent) anchorCredentials() {
	for _, c := range []interface{ Leaf() *x509.Certificate }{a.id, a.op} {
		if leaf := c.Leaf(); leaf != nil {
			a.anchors.cert.raise(a.clock, leaf.NotBefore)
		}
	}
}

// ntpSynced says whether the kernel reports NTP synchronisation (false
// when the agent cannot ask).
func (a *Agent) ntpSynced() bool {
	return a.opt.ClockSynced != nil && a.opt.ClockSynced()
}

// confirmLastKnownGood advances last_known_good while a TLS session is
// up: on a new session, and hourly while it lasts. A new session, or the
// kernel's NTP synchronisation, at a wall clock below the saved value
// contradicts the saved value, which is then lowered (and logged, once).
func (a *Agent) confirmLastKnownGood(newSession bool) {
	now := a.clock.Now()
	old := a.persisted.LastKnownGood
	ntp := a.ntpSynced()
	contradicted := old.After(now) && (newSession || ntp)
	if contradicted {
		a.anchors.saved = anchor{}
	}
	if ntp {
		a.anchors.saved.raise(a.clock, now)
	}
	lkg := a.anchors.realTimeBound()
	if lkg.After(now) {
		lkg = now
	}
	if !contradicted && old.After(lkg) {
		// Never lower a floor nothing contradicted (a wall clock stepped
		// back during the session is not a new peer's word).
		lkg = old
	}
	a.persisted.LastKnownGood = lkg.UTC()
	if contradicted {
		by := "a TLS peer just accepted"
		if ntp {
			by = "the kernel reports NTP-synchronised"
		}
		a.log.Warn("the saved last known good time was ahead of a clock "+by+"; lowered it",
			"old", old.UTC().Format(time.RFC3339), "new", a.persisted.LastKnownGood.Format(time.RFC3339),
			"clock", now.UTC().Format(time.RFC3339), "file", a.dir.File(statedir.StateFile))
	}
}

// correctSavedFloor lowers a saved floor the kernel's NTP
// synchronisation contradicts to the (synchronised) wall clock.
func (a *Agent) correctSavedFloor() {
	now := a.clock.Now()
	old := a.persisted.LastKnownGood
	if !old.After(now) {
		return
	}
	a.anchors.saved = anchor{at: now, watch: clock.StartStopwatch(a.clock)}
	a.persisted.LastKnownGood = now.UTC()
	a.persist()
	a.log.Warn("the saved last known good time is ahead of a clock the kernel reports NTP-synchronised; lowered it",
		"old", old.UTC().Format(time.RFC3339), "new", a.persisted.LastKnownGood.Format(time.RFC3339),
		"file", a.dir.File(statedir.StateFile))
}

// blocking is the floor the clock is waiting for at now: the hard floor
// while the clock is below it, else the whole floor.
func (f clockFloor) blocking(now time.Time) (time.Time, string) {
	if now.Before(f.hard) {
		return f.hard, f.hardWhy
	}
	return f.at, f.why
}

// clockWaitReason says why the clock is not accepted yet, naming the
// floor, its source and the kernel's NTP state.
func (a *Agent) clockWaitReason(f clockFloor, now time.Time) string {
	clk := now.UTC().Format(time.RFC3339)
	saved := fmt.Sprintf("the %s %s saved in %s", WhyLastKnownGood, f.at.UTC().Format(time.RFC3339), a.dir.File(statedir.StateFile))
	if now.Before(f.hard) {
		r := fmt.Sprintf("clock %s is before the %s %s", clk, f.hardWhy, f.hard.UTC().Format(time.RFC3339))
		if f.at.After(f.hard) {
			r += " (and " + saved + ")"
		}
		return r
	}
	if !now.Before(f.at) {
		return "clock " + clk + " is past the " + f.why
	}
	ntpState := "the kernel does not report NTP synchronisation"
	if a.opt.ClockSynced == nil {
		ntpState = "the kernel's NTP state is unknown"
	}
	return fmt.Sprintf("clock %s is before %s, though past the %s %s; %s, so either the clock is behind or the saved time is wrong: after clock.max_wait (%s) the agent tries TLS, and a session that succeeds lowers the saved time",
		clk, saved, f.hardWhy, f.hard.UTC().Format(time.RFC3339), ntpState, a.cfg.Clock.MaxWait.String())
}
