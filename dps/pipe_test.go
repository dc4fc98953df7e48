package dps

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"devid/hal/clock/clocktest"
	"devid/simulator/simtest"
)

// asyncResults collects SendTelemetryAsync outcomes in the order the
// done calls came.
type asyncResults struct {
	mu    sync.Mutex
	order []int
	errs  map[int]error
	all   chan struct{}
	want  int
}

func newAsyncResults(want int) *asyncResults {
	return &asyncResults{errs: map[int]error{}, all: make(chan struct{}), want: want}
}

func (a *asyncResults) done(i int) func(error) {
	return func(err error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if _, twice := a.errs[i]; twice {
			panic(fmt.Sprintf("done called twice for message %d", i))
		}
		a.order = append(a.order, i)
		a.errs[i] = err
		if len(a.errs) == a.want {
			close(a.all)
		}
	}
}

func (a *asyncResults) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-a.all:
	case <-time.After(writeTimeout + 10*time.Second):
		a.mu.Lock()
		defer a.mu.Unlock()
		t.Fatalf("%s: %d of %d done calls", what, len(a.errs), a.want)
	}
}

// TestSendTelemetryAsync: publishes go out and are acknowledged in call
// order, each done is called once; one over the size limit fails alone;
// one whose PUBACK is late past its timeout fails with ErrPublishTimeout
// while the connection stays up; and when the hub dies with messages in
// flight every outstanding done is called with a retryable error.
func TestSendTelemetryAsync(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	res, cred := r.register(t, "dev-async")
	h, err := ConnectHub(context.Background(), r.hubConfig(res, cred))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	const n = 200
	ok := newAsyncResults(n + 1)
	for i := range n {
		h.SendTelemetryAsync(&Message{Payload: []byte(fmt.Sprint(i)), MessageID: fmt.Sprintf("msg-%d", i)}, time.Minute, ok.done(i))
	}
	h.SendTelemetryAsync(&Message{Payload: make([]byte, MaxTelemetrySize)}, time.Minute, ok.done(n))
	ok.wait(t, "send")
	if err := ok.errs[n]; !errors.Is(err, ErrTooLarge) || Retryable(err) {
		t.Errorf("oversized message: %v", err)
	}
	next := 0
	for _, i := range ok.order {
		if i == n {
			continue
		}
		if err := ok.errs[i]; err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if i != next {
			t.Fatalf("done order %v: message %d before %d", ok.order, i, next)
		}
		next++
	}
	recs := r.sim.WaitTelemetry(t, "dev-async", n, 20*time.Second)
	for i, rec := range recs[:n] {
		if rec.Body != fmt.Sprint(i) {
			t.Fatalf("record %d is %q: the hub got them out of order", i, rec.Body)
		}
	}

	// A PUBACK far slower than the timeout: it never comes in time.
	r.sim.SetFault(t, simtest.Fault{Scope: "hub", DeviceID: "dev-async", Ops: []string{"telemetry"}, DelayMs: 30000}) // never within the test
	late := newAsyncResults(1)
	h.SendTelemetryAsync(&Message{Payload: []byte("late")}, 100*time.Millisecond, late.done(0))
	late.wait(t, "late")
	if err := late.errs[0]; !errors.Is(err, ErrPublishTimeout) {
		t.Fatalf("late PUBACK: %v, want ErrPublishTimeout", err)
	}
	select {
	case <-h.Done():
		t.Fatalf("the connection dropped over a late PUBACK: %v", h.Err())
	default:
	}

	// The hub dies with messages in flight.
	const m = 20
	crash := newAsyncResults(m)
	for i := range m {
		h.SendTelemetryAsync(&Message{Payload: []byte(fmt.Sprint("crash ", i))}, time.Minute, crash.done(i))
	}
	if !clocktest.Poll(20*time.Second, func() bool { return h.Stats().InFlight >= 4 }) {
		t.Fatalf("nothing in flight: %+v", h.Stats())
	}
	if err := syscall.Kill(r.sim.Ready.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	crash.wait(t, "after the crash")
	for i, err := range crash.errs {
		if err == nil || !Retryable(err) {
			t.Errorf("message %d after the crash: %v, want a retryable error", i, err)
		}
	}
	if in := h.Stats().InFlight; in != 0 {
		t.Errorf("%d still in flight after every done", in)
	}
	// After the loss a send fails at once, on another goroutine.
	after := newAsyncResults(1)
	h.SendTelemetryAsync(&Message{Payload: []byte("after")}, time.Minute, after.done(0))
	after.wait(t, "after the loss")
	if err := after.errs[0]; err == nil || !Retryable(err) {
		t.Errorf("send after the loss: %v", err)
	}
}
