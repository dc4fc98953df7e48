package agent

import (
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"devid/agent/config"
)

// Field cases from anchors section B that the audit found untested
// (docs/field-problems.md): B-6 TLS time errors, B-7 first boot without
// network, B-11 the reprovision direct method.

// TestTLSClockErrorNoHammering (B-6): the hub's certificate looks "not
// yet valid" through our clock although the clock passed the floor. The
// agent treats it as a clock problem (no re-provisioning, nothing
// deleted) and retries with backoff, never in a tight loop.
func TestTLSClockErrorNoHammering(t *testing.T) {
	t.Parallel()
	h := newConnectedHarness(t)
	h.breakCloud(func(f *fakeCloud) { f.connectErr = errClock })
	h.waitFor("a connect refused for the clock", func() bool {
		h.clock.Advance(time.Second) // past the backoff after the drop
		_, c, _ := h.cloud.get()
		s := h.a.Status()
		return c >= 2 && s.State == "enrolled" && s.ClockWait != nil // status reports the clock problem
	})
	// Without the clock moving, the agent must not keep connecting.
	_, c1, _ := h.cloud.get()
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, c2, _ := h.cloud.get(); c2 > c1+1 {
		t.Fatalf("%d hub connects with a frozen clock after a TLS time error (tight loop)", c2-c1)
	}
	if r, _, _ := h.cloud.get(); r != 1 {
		t.Fatalf("a TLS time error caused %d registrations", r)
	}
	if as, err := h.a.dir.LoadAssignment(); err != nil || as.Hub == "" {
		t.Fatalf("cached assignment lost: %v", err)
	}
	h.cloud.set(func(f *fakeCloud) { f.connectErr = nil })
	h.waitState(Connected, time.Second)
}

// TestTLSClockErrorWhileProvisioning (B-6): the same at DPS.
func TestTLSClockErrorWhileProvisioning(t *testing.T) {
	t.Parallel()
	h := startFaultyHarness(t, func(f *fakeCloud) { f.registerErr = errClock })
	h.waitFor("a registration refused for the clock", func() bool {
		r, _, _ := h.cloud.get()
		s := h.a.Status()
		return r >= 1 && s.State == "enrolled" && s.ClockWait != nil
	})
	r1, _, _ := h.cloud.get()
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r2, _, _ := h.cloud.get(); r2 > r1+1 {
		t.Fatalf("%d registrations with a frozen clock after a TLS time error (tight loop)", r2-r1)
	}
	if s := h.a.Status(); s.State == "revoked" || s.State == "error" {
		t.Fatalf("a TLS time error must not blame the identity: %+v", s)
	}
	h.cloud.set(func(f *fakeCloud) { f.registerErr = nil })
	h.waitState(Connected, time.Second)
}

// TestClockRequireSync: with clock.require_sync the agent waits for the
// kernel's NTP flag even when the time looks sane.
func TestClockRequireSync(t *testing.T) {
	t.Parallel()
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), func(c *config.Config) { c.Clock.RequireSync = true })
	var synced atomic.Bool
	h.clockSynced = synced.Load
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitFor("NTP wait reported", func() bool {
		s := h.a.Status()
		return s.State == "enrolled" && s.ClockWait != nil && s.ClockWait.Reason != ""
	})
	if r, c, _ := h.cloud.get(); r != 0 || c != 0 {
		t.Fatalf("cloud contacted before NTP sync: registers %d connects %d", r, c)
	}
	synced.Store(true)
	h.waitState(Connected, time.Second)
}

// TestFirstBootNoNetwork (B-7): no cache and no network on the first
// boot: the agent backs off with growing delays, never exits, and
// provisions once the network appears.
func TestFirstBootNoNetwork(t *testing.T) {
	t.Parallel()
	h := startFaultyHarness(t, func(f *fakeCloud) { f.registerErr = errNet })
	var delays []time.Duration
	for len(delays) < 4 {
		n := len(delays)
		// The attempt after a backoff: advance the clock to the retry time
		// the agent reports, again while no attempt came (the status can be
		// published before the agent arms its timer on the fake clock).
		h.waitFor("registration attempt", func() bool {
			if r, _, _ := h.cloud.get(); r > n {
				return true
			}
			if s := h.a.Status(); n > 0 && s.State == Backoff.String() && s.NextRetry.After(h.clock.Now()) {
				h.clock.Advance(s.NextRetry.Sub(h.clock.Now()))
			}
			return false
		})
		// The new backoff, not the one just ended (the status may not yet
		// show the attempt).
		var s Status
		h.waitFor("the next backoff", func() bool {
			s = h.a.Status()
			return s.State == Backoff.String() && s.NextRetry.After(h.clock.Now())
		})
		delays = append(delays, s.NextRetry.Sub(h.clock.Now()))
	}
	jitter := h.cfg.Retry.Jitter.D()
	for i := 1; i < len(delays); i++ {
		if delays[i]+jitter < delays[i-1] && delays[i-1] < h.cfg.Retry.MaxDelay.D() {
			t.Fatalf("backoff delays do not grow: %v", delays)
		}
	}
	if delays[len(delays)-1] <= delays[0]-jitter {
		t.Fatalf("backoff delays do not grow: %v", delays)
	}
	h.cloud.set(func(f *fakeCloud) { f.registerErr = nil })
	h.waitState(Connected, time.Second)
}

// TestReprovisionMethod (B-11): the reprovision direct method goes back
// to DPS and reconnects.
func TestReprovisionMethod(t *testing.T) {
	t.Parallel()
	h := newConnectedHarness(t)
	if st, _ := h.a.onMethod("reprovision", nil); st != 200 {
		t.Fatalf("reprovision method status %d", st)
	}
	h.waitFor("registered again and connected", func() bool {
		r, _, _ := h.cloud.get()
		return r == 2 && h.a.Status().State == "connected"
	})
}

// TestHealthReportsRenewalPath (B-3): the health report says when nothing
// renews the certificate.
func TestHealthReportsRenewalPath(t *testing.T) {
	t.Parallel()
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	if p := h.a.health().RenewalPath; p != "none" {
		t.Fatalf("health renewal_path %q, want none", p)
	}
}

// TestNoGoroutineLeakAcrossReconnects: 20 hub drops and reconnects leave
// no goroutines behind (a field device reconnects thousands of times).
// Not parallel: it counts the process's goroutines.
func TestNoGoroutineLeakAcrossReconnects(t *testing.T) {
	h := newConnectedHarness(t)
	cycle := func() {
		t.Helper()
		_, c0, _ := h.cloud.get()
		h.cloud.drop()
		h.waitFor("reconnected", func() bool {
			h.clock.Advance(time.Second)
			_, c, _ := h.cloud.get()
			return c > c0 && h.a.Status().State == "connected"
		})
	}
	settled := func(limit int) bool {
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > limit {
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(5 * time.Millisecond)
		}
		return true
	}
	cycle() // warm up: goroutines started once per process
	base := runtime.NumGoroutine()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		// Let the previous connection's goroutines finish.
		time.Sleep(20 * time.Millisecond)
		n := runtime.NumGoroutine()
		if n >= base {
			break
		}
		base = n
	}
	for i := 0; i < 20; i++ {
		cycle()
	}
	if !settled(base) {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines %d after 20 reconnects, %d before\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
	}
}

// TestSendRetriedWithoutReconnect (B-13): a message whose send fails
// while the connection stays up (no PUBACK) is sent again on the same
// connection, paced, instead of waiting for the next reconnect.
func TestSendRetriedWithoutReconnect(t *testing.T) {
	t.Parallel()
	h := newConnectedHarness(t)
	h.cloud.set(func(f *fakeCloud) { f.failSends = 3 })
	for i := 0; i < 5; i++ {
		if _, err := h.a.Enqueue(Message{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	h.waitFor("all 5 delivered on the same connection", func() bool {
		h.clock.Advance(h.cfg.Retry.MinDelay.D()) // the retry pace
		_, _, sent := h.cloud.get()
		return len(sent) >= 5 && h.a.QueueStats().Depth == 0
	})
	_, c, sent := h.cloud.get()
	if c != 1 {
		t.Fatalf("%d connects; the retry must not need a reconnect", c)
	}
	got := map[string]int{}
	for _, m := range sent {
		got[string(m.Body)]++
	}
	for i := 0; i < 5; i++ {
		if got[fmt.Sprint(i)] == 0 {
			t.Fatalf("message %d not delivered: %v", i, got)
		}
	}
}
