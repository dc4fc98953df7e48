package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"
)

// TestPoisonMessageSetAside: a message the hub refuses for good (it drops
// the connection each time, or the hub client refuses it as over the
// limits) is set aside after a bounded number of tries, counted in
// status, kept in queue/setaside.log, and the messages behind it are
// delivered; the queue ends empty instead of retrying forever.
func TestPoisonMessageSetAside(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		err      error
		drop     bool
		maxTries int
	}{
		// A message behind it that gets through restarts the count; each
		// of the 3*sendWindow good messages can do that once, and how many
		// do depends on goroutine order (once in 40 stress runs it was 14
		// tries, above the 13 once assumed). The bound that always holds:
		{"hub drops the connection", errNet, true, maxSendTries * (3*sendWindow + 1)},
		{"hub client refuses it", errTooBig, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newConnectedHarness(t)
				tries := 0
				h.cloud.set(func(f *fakeCloud) {
					f.refuse = func(m Message) (error, bool) {
						if m.Properties["poison"] == "" {
							return nil, false
						}
						tries++
						return tc.err, tc.drop
					}
				})
				if _, err := h.a.Enqueue(Message{Body: []byte("poison"), Properties: map[string]string{"poison": "1"}}); err != nil {
					t.Fatal(err)
				}
				const good = 3 * sendWindow
				for i := 0; i < good; i++ {
					if _, err := h.a.Enqueue(Message{Body: []byte(fmt.Sprint(i))}); err != nil {
						t.Fatal(err)
					}
				}
				h.await("the good messages delivered, the poison set aside", 10*time.Minute, func() bool {
					_, _, sent := h.cloud.get()
					q := h.a.Status().Queue
					return len(sent) >= good && q.Depth == 0 && q.SetAside == 1
				})
				h.cloud.set(func(f *fakeCloud) {
					if tries > tc.maxTries {
						t.Errorf("the poison was tried %d times, want at most %d", tries, tc.maxTries)
					}
				})
				if q := h.a.Status().Queue; q.Dropped != 0 || q.Corrupt != 0 {
					t.Errorf("queue %+v", q)
				}
				kept, err := os.ReadFile(filepath.Join(h.cfg.StateDir, "queue", "setaside.log"))
				if err != nil || len(kept) == 0 {
					t.Fatalf("setaside.log: %v", err)
				}
			})
		})
	}
}
