package agent

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"devid/agent/statedir"
	"devid/hal/hosttest"
)

// TestReadOnlyStateDirRunsDegraded: an agent restarted on a state
// directory that went read-only starts (no crash loop), connects with the
// cached assignment, delivers telemetry from memory, shows the condition
// in status, and is durable again once the disk takes writes. Before:
// New failed (the queue could not open its segment for appending), so the
// service restarted forever and sent nothing.
func TestReadOnlyStateDirRunsDegraded(t *testing.T) {
	mnt := hosttest.Tmpfs(t, 4<<20)
	remount := func(mode string) { hosttest.Remount(t, mnt, mode) }
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(mnt, "s")
		h := newHarness(t, dir, nil)
		h.start(testIdentity(t, t0.Add(-time.Hour)))
		h.waitState(Connected, 0)
		h.a.Enqueue(Message{Body: []byte("before")})
		h.await("first message sent", 0, func() bool { _, _, s := h.cloud.get(); return len(s) == 1 })
		h.stop()

		remount("ro")
		h2 := newHarness(t, dir, nil)
		h2.cloud = h.cloud
		h2.start(h.id)
		h2.waitState(Connected, 0)
		for i := range 5 {
			if _, err := h2.a.Enqueue(Message{Body: []byte(fmt.Sprint(i))}); err != nil {
				t.Fatalf("enqueue on a read-only disk: %v", err)
			}
		}
		h2.await("5 more sent", 0, func() bool { _, _, s := h.cloud.get(); return len(s) == 6 })
		if s := h2.a.Status(); !strings.Contains(s.Queue.DiskError, "read-only") {
			t.Errorf("status on a read-only disk does not say so: queue %+v", s.Queue)
		}
		// The hub goes away: messages wait in memory, and status counts them.
		h2.breakCloud(func(f *fakeCloud) { f.connectErr = errNet })
		h2.waitState(Backoff, 0)
		for i := range 3 {
			h2.a.Enqueue(Message{Body: []byte(fmt.Sprint("m", i))})
		}
		s := h2.a.Status()
		if s.Queue.Memory != 3 || s.Queue.Depth != 3 {
			t.Errorf("queue while the hub is down on a read-only disk: %+v, want 3 in memory", s.Queue)
		}
		// The state change could not be saved, and status says so.
		if !strings.Contains(s.StateDirError, "read-only") {
			t.Errorf("status after a state change on a read-only disk: state_dir_error %q", s.StateDirError)
		}

		remount("rw")
		h2.cloud.set(func(f *fakeCloud) { f.connectErr = nil })
		h2.waitState(Connected, 2*h2.cfg.Retry.MaxDelay.D())
		h2.await("all sent", 0, func() bool { _, _, s := h.cloud.get(); return len(s) == 9 })
		h2.await("durable again", time.Minute, func() bool {
			s := h2.a.Status()
			return s.Queue.DiskError == "" && s.Queue.Memory == 0 && s.StateDirError == ""
		})
	})
}

// TestStateDirErrorClearsOnlyOnWrite: state_dir_error stays while the
// disk is read-only, even across a save that is skipped because
// state.json already holds those bytes (the state went back to what is on
// disk), and clears only once a save really writes.
func TestStateDirErrorClearsOnlyOnWrite(t *testing.T) {
	mnt := hosttest.Tmpfs(t, 1<<20)
	d, err := statedir.Open(filepath.Join(mnt, "s"))
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{dir: d, log: slog.New(slog.DiscardHandler)}
	saveAs := func(name string) string {
		t.Helper()
		a.persisted.Name = name
		a.persist()
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.status.StateDirError
	}
	if e := saveAs("connected"); e != "" {
		t.Fatalf("state_dir_error %q after a write to a writable disk", e)
	}

	hosttest.Remount(t, mnt, "ro")
	if e := saveAs("backoff"); !strings.Contains(e, "read-only") {
		t.Fatalf("state_dir_error %q after a failed write, want read-only", e)
	}
	// Back to what state.json holds: nothing to write, and the disk is
	// still read-only.
	if e := saveAs("connected"); !strings.Contains(e, "read-only") {
		t.Errorf("state_dir_error %q after an unchanged save on a read-only disk, want it kept", e)
	}

	hosttest.Remount(t, mnt, "rw")
	if e := saveAs("connected"); !strings.Contains(e, "read-only") {
		t.Errorf("state_dir_error %q after an unchanged save (no write happened), want it kept", e)
	}
	if e := saveAs("backoff"); e != "" {
		t.Errorf("state_dir_error %q after a real write to a writable disk, want it cleared", e)
	}
}
