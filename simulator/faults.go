package simulator

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Fault is one injected fault. It matches connections of Scope ("dps",
// "hub" or "" for both), optionally one Hub and one DeviceID (registration
// ID on DPS). Empty DeviceID means every device (a global fault).
type Fault struct {
	ID       string `json:"id"`
	Scope    string `json:"scope,omitempty"`
	Hub      string `json:"hub,omitempty"`
	DeviceID string `json:"deviceId,omitempty"`
	// Ops limits the fault to some operations: register, poll (DPS);
	// telemetry, twin, connect (hub). Empty = all.
	Ops []string `json:"ops,omitempty"`
	// Status answers requests with this status (429 or 5xx). On DPS the
	// response topic carries it (with retry-after for 429); on the hub,
	// twin requests get it and telemetry gets the connection closed (the
	// real hub's MQTT throttling behaviour, reference §3.9).
	Status     int `json:"status,omitempty"`
	RetryAfter int `json:"retryAfter,omitempty"`
	// DelayMs delays every response by this much.
	DelayMs int `json:"delayMs,omitempty"`
	// DropAfter closes a connection after it has published K messages.
	DropAfter int `json:"dropAfter,omitempty"`
	// RefuseSeconds refuses new connections (closed right after the TLS
	// handshake, no CONNACK) for this long from when the fault is set.
	RefuseSeconds int `json:"refuseSeconds,omitempty"`
	// Count: how many times Status is applied before the fault clears
	// itself; 0 = until deleted.
	Count int `json:"count,omitempty"`

	RefuseUntil string `json:"refuseUntil,omitempty"`
	Applied     int    `json:"applied"`

	refuseUntil time.Time
}

type faultSet struct {
	mu     sync.Mutex
	faults []*Fault
	next   int
}

func newFaultSet() *faultSet { return &faultSet{} }

func (fs *faultSet) add(f Fault) (Fault, error) {
	switch f.Scope {
	case "", "dps", "hub":
	default:
		return f, fmt.Errorf("scope %q is not dps, hub or empty", f.Scope)
	}
	if f.Status != 0 && f.Status != 429 && (f.Status < 500 || f.Status > 599) {
		return f, fmt.Errorf("status %d: only 429 and 5xx can be injected", f.Status)
	}
	if f.Status == 0 && f.DelayMs == 0 && f.DropAfter == 0 && f.RefuseSeconds == 0 {
		return f, errors.New("fault does nothing: set status, delayMs, dropAfter or refuseSeconds")
	}
	for _, op := range f.Ops {
		if !slices.Contains([]string{"register", "poll", "telemetry", "twin", "connect", "method"}, op) {
			return f, fmt.Errorf("op %q is not register, poll, telemetry, twin, method or connect", op)
		}
	}
	if f.Status == 429 && f.RetryAfter == 0 {
		f.RetryAfter = 1
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.next++
	if f.ID == "" {
		f.ID = fmt.Sprintf("f%d", fs.next)
	}
	if f.RefuseSeconds > 0 {
		f.refuseUntil = time.Now().Add(time.Duration(f.RefuseSeconds) * time.Second)
		f.RefuseUntil = f.refuseUntil.UTC().Format(time.RFC3339Nano)
	}
	fs.faults = slices.DeleteFunc(fs.faults, func(o *Fault) bool { return o.ID == f.ID })
	fs.faults = append(fs.faults, &f)
	return f, nil
}

func (fs *faultSet) list() []Fault {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	out := []Fault{}
	for _, f := range fs.faults {
		out = append(out, *f)
	}
	return out
}

func (fs *faultSet) remove(id string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := len(fs.faults)
	fs.faults = slices.DeleteFunc(fs.faults, func(o *Fault) bool { return id == "" || o.ID == id })
	return len(fs.faults) != n
}

func (f *Fault) matches(role, id, op string) bool {
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
