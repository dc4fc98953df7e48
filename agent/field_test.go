package agent

import (
	"path/filepath"
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
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
	h.cloud.set(func(f *fakeCloud) { f.connectErr = errClock })
	h.cloud.drop()
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
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
	h.cloud.set(func(f *fakeCloud) { f.registerErr = errClock })
	h.start(testIdentity(t, t0.Add(-time.Hour)))
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
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
	h.cloud.set(func(f *fakeCloud) { f.registerErr = errNet })
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	var delays []time.Duration
	for len(delays) < 4 {
		n := len(delays)
		h.waitFor("registration attempt", func() bool { r, _, _ := h.cloud.get(); return r > n })
		h.waitState(Backoff, 0)
		s := h.a.Status()
		delays = append(delays, s.NextRetry.Sub(h.clock.Now()))
		h.clock.Advance(s.NextRetry.Sub(h.clock.Now()))
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
	h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
	h.start(testIdentity(t, t0.Add(-time.Hour)))
	h.waitState(Connected, 0)
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
