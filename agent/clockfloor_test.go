package agent

import (
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"devid/agent/statedir"
	"devid/hal/clock/clocktest"
)

// The clock floor (clockfloor.go): a forward clock jump must not
// save a floor in the future, and a saved floor in the future that real
// time contradicts is corrected, not waited out.

const twentyDays = 20 * 24 * time.Hour

// savedFloor reads last_known_good from dir's state record.
func savedFloor(t *testing.T, dir string) time.Time {
	t.Helper()
	d, _ := statedir.Open(dir)
	st, err := d.LoadState()
	if err != nil {
		t.Fatal(err)
	}
	return st.LastKnownGood
}

// futureFloorDir is a provisioned state dir whose saved floor is 20 days
// ahead of t0, as a forward clock jump left it; it returns the dir and the
// harness whose cloud and identity the restarted device reuses.
func futureFloorDir(t *testing.T) (string, *harness) {
	t.Helper()
	dir, h := provisionedThenStopped(t)
	d, _ := statedir.Open(dir)
	st, err := d.LoadState()
	if err != nil {
		t.Fatal(err)
	}
	st.LastKnownGood = t0.Add(twentyDays)
	if err := d.SaveState(st); err != nil {
		t.Fatal(err)
	}
	return dir, h
}

// TestClockJumpForwardKeepsFloor (a): the wall clock jumps 20 days ahead
// while the agent is connected and reconnects; the saved floor stays at
// or below real time, and after the clock is corrected a reboot connects
// at once instead of waiting 20 days.
func TestClockJumpForwardKeepsFloor(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		begin := time.Now() // the bubble's time: real time is t0 + time.Since(begin)
		real := func() time.Time { return t0.Add(time.Since(begin)) }
		dir := filepath.Join(t.TempDir(), "s")
		h := newHarness(t, dir, nil)
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.waitState(Connected, 0)

		h.clock.Set(h.clock.Now().Add(twentyDays))
		h.cloud.drop() // the hub reconnects on the jumped clock
		h.await("reconnected", time.Minute, func() bool {
			_, c, _ := h.cloud.get()
			return c == 2 && h.a.Status().State == Connected.String()
		})
		if lkg := savedFloor(t, dir); lkg.After(real()) {
			t.Fatalf("after the reconnect: last_known_good %v is ahead of real time %v", lkg, real())
		}
		clocktest.Step(3 * lkgInterval) // the hourly refreshes
		if lkg := savedFloor(t, dir); lkg.After(real()) {
			t.Fatalf("after the hourly refresh: last_known_good %v is ahead of real time %v", lkg, real())
		} else if lkg.Before(t0) {
			t.Fatalf("last_known_good %v: the refresh must still advance it", lkg)
		}
		h.stop()

		// The clock is corrected; the device reboots.
		h2 := newHarness(t, dir, nil)
		h2.cloud = h.cloud
		h2.clock = clocktest.NewWall(real())
		h2.start(h.id)
		h2.waitState(Connected, time.Minute)
	})
}

// TestFutureFloorNTPSynced (b): a saved floor 20 days ahead of a clock
// the kernel reports NTP-synchronised is lowered to the clock at once.
func TestFutureFloorNTPSynced(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir, h := futureFloorDir(t)
		h2 := newHarness(t, dir, nil)
		h2.cloud = h.cloud
		h2.clockSynced = func() bool { return true }
		h2.start(h.id)
		h2.waitState(Connected, time.Minute)
		now := h2.clock.Now()
		if lkg := savedFloor(t, dir); lkg.After(now) || lkg.Before(now.Add(-time.Minute)) {
			t.Fatalf("last_known_good %v, want the synchronised clock %v", lkg, now)
		}
	})
}

// TestFutureFloorTLSCorrects (c): without NTP synchronisation the agent
// waits clock.max_wait, names the saved floor in status, then tries TLS;
// the session that succeeds lowers the saved floor.
func TestFutureFloorTLSCorrects(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir, h := futureFloorDir(t)
		h2 := newHarness(t, dir, nil)
		h2.cloud = h.cloud
		h2.clockSynced = func() bool { return false }
		h2.start(h.id)
		h2.await("clock wait reported", 0, func() bool { return h2.a.Status().ClockWait != nil })
		cw := h2.a.Status().ClockWait
		if !cw.Floor.Equal(t0.Add(twentyDays)) || cw.Source != WhyLastKnownGood || !strings.Contains(cw.Reason, "last known good time") ||
			!strings.Contains(cw.Reason, "state.json") || !strings.Contains(cw.Reason, "NTP") {
			t.Fatalf("clock wait %+v: must name the saved floor, its file and the NTP state", cw)
		}
		_, c0, _ := h.cloud.get()
		clocktest.Step(h2.cfg.Clock.MaxWait.D() - time.Second)
		if _, c, _ := h.cloud.get(); c != c0 {
			t.Fatalf("TLS tried before clock.max_wait with an unconfirmed clock")
		}
		h2.waitState(Connected, time.Minute)
		if lkg := savedFloor(t, dir); lkg.After(h2.clock.Now()) {
			t.Fatalf("last_known_good %v still ahead of the clock %v a TLS peer accepted", lkg, h2.clock.Now())
		}
	})
}

// TestNTPStepBackLowersFloor: a clock the kernel reports NTP-synchronised
// is trusted (a wrong NTP server 20 days ahead moves the floor with it),
// and when NTP steps it back while the agent stays connected, the next
// hourly refresh lowers the floor to it.
func TestNTPStepBackLowersFloor(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		begin := time.Now()
		real := func() time.Time { return t0.Add(time.Since(begin)) }
		dir := filepath.Join(t.TempDir(), "s")
		h := newHarness(t, dir, nil)
		h.clockSynced = func() bool { return true }
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.waitState(Connected, 0)
		h.clock.Set(real().Add(twentyDays))
		clocktest.Step(lkgInterval)
		if lkg := savedFloor(t, dir); lkg.Before(real().Add(twentyDays - time.Minute)) {
			t.Fatalf("last_known_good %v: an NTP-synchronised clock is trusted", lkg)
		}
		h.clock.Set(real())
		clocktest.Step(lkgInterval)
		if lkg := savedFloor(t, dir); lkg.After(real()) {
			t.Fatalf("last_known_good %v still ahead of the NTP-synchronised clock %v", lkg, real())
		}
	})
}
