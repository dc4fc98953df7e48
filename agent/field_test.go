package agent

import (
	"fmt"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"devid/agent/config"
	"devid/hal/clock/clocktest"
)

// Field cases from docs/field-problems.md that the audit found untested:
// row 6 TLS time errors, row 7 first boot without network, row 11 the
// reprovision direct method.

// TestTLSClockErrorNoHammering (row 6): the hub's certificate looks "not
// yet valid" through our clock although the clock passed the floor. The
// agent treats it as a clock problem (no re-provisioning, nothing
// deleted) and retries with backoff, never in a tight loop.
func TestTLSClockErrorNoHammering(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newConnectedHarness(t)
		h.breakCloud(func(f *fakeCloud) { f.connectErr = errClock })
		h.await("a connect refused for the clock", time.Minute, func() bool {
			_, c, _ := h.cloud.get()
			s := h.a.Status()
			return c >= 2 && s.State == "enrolled" && s.ClockWait != nil // status reports the clock problem
		})
		// Without the clock moving, the agent must not keep connecting: a
		// tight loop would never let the bubble settle (fakeCloud.jam).
		_, c1, _ := h.cloud.get()
		synctest.Wait()
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
		h.waitState(Connected, 5*time.Minute)
	})
}

// TestTLSClockErrorWhileProvisioning (row 6): the same at DPS.
func TestTLSClockErrorWhileProvisioning(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := startFaultyHarness(t, func(f *fakeCloud) { f.registerErr = errClock })
		h.await("a registration refused for the clock", 0, func() bool {
			r, _, _ := h.cloud.get()
			s := h.a.Status()
			return r >= 1 && s.State == "enrolled" && s.ClockWait != nil
		})
		r1, _, _ := h.cloud.get()
		synctest.Wait()
		if r2, _, _ := h.cloud.get(); r2 > r1+1 {
			t.Fatalf("%d registrations with a frozen clock after a TLS time error (tight loop)", r2-r1)
		}
		if s := h.a.Status(); s.State == "revoked" || s.State == "error" {
			t.Fatalf("a TLS time error must not blame the identity: %+v", s)
		}
		h.cloud.set(func(f *fakeCloud) { f.registerErr = nil })
		h.waitState(Connected, 5*time.Minute)
	})
}

// TestClockRequireSync: with clock.require_sync the agent waits for the
// kernel's NTP flag even when the time looks sane.
func TestClockRequireSync(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, filepath.Join(t.TempDir(), "s"), func(c *config.Config) { c.Clock.RequireSync = true })
		var synced atomic.Bool
		h.clockSynced = synced.Load
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.await("NTP wait reported", 0, func() bool {
			s := h.a.Status()
			return s.State == "enrolled" && s.ClockWait != nil && s.ClockWait.Reason != ""
		})
		if r, c, _ := h.cloud.get(); r != 0 || c != 0 {
			t.Fatalf("cloud contacted before NTP sync: registers %d connects %d", r, c)
		}
		synced.Store(true)
		h.waitState(Connected, time.Minute)
	})
}

// TestFirstBootNoNetwork (row 7): no cache and no network on the first
// boot: the agent backs off with growing delays, never exits, and
// provisions once the network appears.
func TestFirstBootNoNetwork(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := startFaultyHarness(t, func(f *fakeCloud) { f.registerErr = errNet })
		var delays []time.Duration
		for len(delays) < 4 {
			n := len(delays)
			h.await("registration attempt", 0, func() bool { r, _, _ := h.cloud.get(); return r > n })
			h.waitState(Backoff, 0)
			// Settled: the status is current and the retry timer armed.
			d := h.a.Status().NextRetry.Sub(h.clock.Now())
			delays = append(delays, d)
			clocktest.Step(d)
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
		// Exactly: retry.min_delay doubling per failure, plus the jitter.
		for i, d := range delays {
			base := min(h.cfg.Retry.MinDelay.D()<<i, h.cfg.Retry.MaxDelay.D())
			if d < base || d > base+jitter {
				t.Fatalf("backoff delay %d is %v, want %v plus up to %v: %v", i+1, d, base, jitter, delays)
			}
		}
		h.cloud.set(func(f *fakeCloud) { f.registerErr = nil })
		h.waitState(Connected, 2*h.cfg.Retry.MaxDelay.D())
	})
}

// TestReprovisionMethod (row 11): the reprovision direct method goes back
// to DPS and reconnects.
func TestReprovisionMethod(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newConnectedHarness(t)
		if st, _ := h.a.onMethod("reprovision", nil); st != 200 {
			t.Fatalf("reprovision method status %d", st)
		}
		h.await("registered again and connected", 0, func() bool {
			r, _, _ := h.cloud.get()
			return r == 2 && h.a.Status().State == "connected"
		})
	})
}

// TestHealthReportsRenewalPath (row 3): the health report says when
// nothing renews the certificate.
func TestHealthReportsRenewalPath(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, filepath.Join(t.TempDir(), "s"), nil)
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		if p := h.a.health().RenewalPath; p != "none" {
			t.Fatalf("health renewal_path %q, want none", p)
		}
	})
}

// TestNoGoroutineLeakAcrossReconnects: 20 hub drops and reconnects leave
// no goroutines behind (a field device reconnects thousands of times).
// Not parallel: it counts the process's goroutines. Inside the bubble
// synctest.Wait lets every goroutine that is going to exit do so first.
func TestNoGoroutineLeakAcrossReconnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newConnectedHarness(t)
		cycle := func() {
			t.Helper()
			_, c0, _ := h.cloud.get()
			h.cloud.drop()
			h.await("reconnected", time.Minute, func() bool {
				_, c, _ := h.cloud.get()
				return c > c0 && h.a.Status().State == "connected"
			})
		}
		cycle() // warm up: goroutines started once per process
		synctest.Wait()
		base := runtime.NumGoroutine()
		for i := 0; i < 20; i++ {
			cycle()
		}
		synctest.Wait()
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines %d after 20 reconnects, %d before\n%s", n, base, buf[:runtime.Stack(buf, true)])
		}
	})
}

// TestSendRetriedWithoutReconnect (row 13): a message whose send fails
// while the connection stays up (no PUBACK) is sent again on the same
// connection, paced, instead of waiting for the next reconnect.
func TestSendRetriedWithoutReconnect(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newConnectedHarness(t)
		h.cloud.set(func(f *fakeCloud) { f.failSends = 3 })
		for i := 0; i < 5; i++ {
			if _, err := h.a.Enqueue(Message{Body: []byte(fmt.Sprint(i))}); err != nil {
				t.Fatal(err)
			}
		}
		h.await("all 5 delivered on the same connection", time.Minute, func() bool {
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
	})
}
