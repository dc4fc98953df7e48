package simulator

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"devid/simulator/simapi"
)

// fault is one injected fault (its wire form is simapi.Fault).
type fault struct {
	simapi.Fault
	refuseUntil time.Time
}

// faultSet holds the injected faults. They live in memory only: a restart
// clears them.
type faultSet struct {
	mu     sync.Mutex
	faults []*fault
	next   int
}

func newFaultSet() *faultSet { return &faultSet{} }

// add validates f and stores it, replacing a fault with the same ID.
func (fs *faultSet) add(f simapi.Fault) (*fault, error) {
	switch f.Scope {
	case "", "dps", "hub":
	default:
		return nil, fmt.Errorf("scope %q is not dps, hub or empty", f.Scope)
	}
	if f.Status != 0 && f.Status != 429 && (f.Status < 500 || f.Status > 599) {
		return nil, fmt.Errorf("status %d: only 429 and 5xx can be injected", f.Status)
	}
	if f.Status == 0 && f.DelayMs == 0 && f.DropAfter == 0 && f.RefuseSeconds == 0 {
		return nil, errors.New("fault does nothing: set status, delayMs, dropAfter or refuseSeconds")
	}
	for _, op := range f.Ops {
		if !slices.Contains([]string{"register", "poll", "telemetry", "twin", "connect", "method", "credentials"}, op) {
			return nil, fmt.Errorf("op %q is not register, poll, telemetry, twin, method, credentials or connect", op)
		}
	}
	if f.Status == 429 && f.RetryAfter == 0 {
		f.RetryAfter = 1
	}
	f.Applied, f.RefuseUntil = 0, "" // reported by the simulator, not taken from the request
	out := &fault{Fault: f}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.next++
	if f.ID == "" {
		out.ID = fmt.Sprintf("f%d", fs.next)
	}
	if f.RefuseSeconds > 0 {
		out.refuseUntil = time.Now().Add(time.Duration(f.RefuseSeconds) * time.Second)
		out.RefuseUntil = out.refuseUntil.UTC().Format(time.RFC3339Nano)
	}
	fs.faults = slices.DeleteFunc(fs.faults, func(o *fault) bool { return o.ID == out.ID })
	fs.faults = append(fs.faults, out)
	cp := *out
	return &cp, nil
}

func (fs *faultSet) list() []simapi.Fault {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := []simapi.Fault{}
	for _, f := range fs.faults {
		out = append(out, f.Fault)
	}
	return out
}

func (fs *faultSet) remove(id string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := len(fs.faults)
	fs.faults = slices.DeleteFunc(fs.faults, func(o *fault) bool { return id == "" || o.ID == id })
	return len(fs.faults) != n
}

func (f *fault) matches(role, id, op string) bool {
	scope := "dps"
	if role != roleDPS {
		scope = "hub"
	}
	if f.Scope != "" && f.Scope != scope {
		return false
	}
	if f.Hub != "" && (scope != "hub" || f.Hub != role) {
		return false
	}
	if f.DeviceID != "" && !strings.EqualFold(f.DeviceID, id) {
		return false
	}
	if len(f.Ops) > 0 && op != "" && !slices.Contains(f.Ops, op) {
		return false
	}
	return true
}

// status returns (status, retryAfter) to inject for op, consuming one use.
func (fs *faultSet) status(role, id, op string) (int, int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for i, f := range fs.faults {
		if f.Status == 0 || !f.matches(role, id, op) {
			continue
		}
		f.Applied++
		st, ra := f.Status, f.RetryAfter
		if f.Count > 0 && f.Applied >= f.Count {
			fs.faults = slices.Delete(fs.faults, i, i+1)
		}
		return st, ra
	}
	return 0, 0
}

func (fs *faultSet) delay(role, id, op string) time.Duration {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var d time.Duration
	for _, f := range fs.faults {
		if f.DelayMs > 0 && f.matches(role, id, op) {
			d = max(d, time.Duration(f.DelayMs)*time.Millisecond)
			f.Applied++ // lets a harness see that a delayed request arrived
		}
	}
	return d
}

func (fs *faultSet) dropAfter(role, id string) int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	k := 0
	for _, f := range fs.faults {
		if f.DropAfter > 0 && f.matches(role, id, "") && (k == 0 || f.DropAfter < k) {
			k = f.DropAfter
		}
	}
	return k
}

func (fs *faultSet) refused(role, id string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	now := time.Now()
	for _, f := range fs.faults {
		if f.RefuseSeconds > 0 && now.Before(f.refuseUntil) && f.matches(role, id, "connect") {
			return true
		}
	}
	return false
}

// after runs fn after the delay injected for op (at once if none). A
// panic in a delayed fn is logged, never fatal.
func (fs *faultSet) after(log *slog.Logger, role, id, op string, fn func()) {
	d := fs.delay(role, id, op)
	if d <= 0 {
		fn()
		return
	}
	time.AfterFunc(d, func() {
		defer func() {
			if r := recover(); r != nil {
				log.Error("recovered panic", "where", "delayed reply", "panic", fmt.Sprint(r))
			}
		}()
		fn()
	})
}
