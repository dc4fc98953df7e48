package rotate

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"devid/enroll/certstore"
	"devid/hal/clock/clocktest"
)

// TestYearOfOneDayCertificates runs the renewal loop for a simulated year
// (testing/synctest: the clock only moves when every goroutine waits)
// with a CA that issues 1-day certificates and is down for 6 hours once.
// Every simulated hour the installed certificate must be valid: no gap.
// Each rotation is real: a new key, a CSR, a signed chain, a TLS
// handshake as the probe, the two-phase commit on real files.
func TestYearOfOneDayCertificates(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := memDir(t)
		ca := newTestCA(t, time.Now, 24*time.Hour)
		slot := provision(t, dir, ca)
		r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca), Roots: ca.roots(), NewKey: true}
		var rotations int
		var prev *time.Time
		w := &Renewer{Rotator: r, Policy: DefaultPolicy(), OnRotated: func(res Result) {
			rotations++
			if c, err := LoadCredential(slot, dir); err != nil || time.Now().Before(c.Leaf().NotBefore) {
				t.Errorf("installed credential not usable now: %v", err)
			}
			if prev != nil && !time.Now().Before(*prev) {
				t.Errorf("rotation at %v after the previous certificate expired at %v", time.Now(), *prev)
			}
			na := res.NotAfter
			prev = &na
		}}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()

		// The outage starts just before a renewal is due and lasts 6 hours,
		// less than the 8 hours a 1-day certificate has left at 2/3.
		var outageTo time.Time
		refusedAttempts := 0
		hours := 0
		for hours < 365*24 {
			step := 6 * time.Hour
			if hours >= 2400 && hours < 2424 {
				step = time.Hour
			}
			clocktest.Step(step)
			hours += int(step / time.Hour)
			now := time.Now()
			if hours == 2400 {
				outageTo = w.Status().Next.Add(6 * time.Hour)
				ca.mu.Lock()
				ca.refuse = errors.New("503 CA unavailable")
				ca.mu.Unlock()
			}
			if !outageTo.IsZero() && !now.Before(outageTo) {
				ca.mu.Lock()
				ca.refuse = nil
				ca.mu.Unlock()
			}
			if st := w.Status(); st.Failures > refusedAttempts {
				refusedAttempts = st.Failures
			}
			b, err := os.ReadFile(slot.ChainPath)
			if err != nil {
				t.Fatalf("hour %d: %v", hours, err)
			}
			certs, err := certstore.ParsePEM(b)
			if err != nil {
				t.Fatalf("hour %d: %v", hours, err)
			}
			if leaf := certs[0]; now.Before(leaf.NotBefore) || !now.Before(leaf.NotAfter) {
				t.Fatalf("hour %d: gap: certificate valid %v..%v, now %v", hours, leaf.NotBefore, leaf.NotAfter, now)
			}
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
		// Renewing at about 2/3 of a day: 1.5 rotations a day, give or take the jitter.
		if rotations < 365*14/10 || rotations > 365*17/10 {
			t.Errorf("%d rotations in a year", rotations)
		}
		if refusedAttempts < 3 || refusedAttempts > 12 {
			t.Errorf("outage of 6h: %d failed attempts in a row, want a few (hourly retries)", refusedAttempts)
		}
		rec, err := LoadRecord(dir)
		if err != nil || rec.Rotations != rotations || rec.Path != "test-ca" || rec.Failures != 0 {
			t.Errorf("record %+v, %v", rec, err)
		}
		t.Logf("%d rotations, longest failure streak %d", rotations, refusedAttempts)
	})
}

func TestMethodAndDesired(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		ca := newTestCA(t, time.Now, 30*24*time.Hour)
		slot := provision(t, dir, ca)
		r := &Rotator{StateDir: dir, Slot: slot, DeviceID: "dev-1", Issuer: ca, Probe: hubProbe(ca)}
		got := make(chan Result, 4)
		w := &Renewer{Rotator: r, Policy: DefaultPolicy(), OnRotated: func(res Result) { got <- res }}

		for _, bad := range []string{`{"rotate_key":"yes"}`, `{"force":true}`, `[`} {
			if code, _ := w.HandleMethod([]byte(bad)); code != 400 {
				t.Errorf("payload %s: code %d", bad, code)
			}
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		go w.Run(ctx)
		synctest.Wait()
		before := w.Status()
		if before.Next.IsZero() || before.Path != "test-ca" {
			t.Fatalf("status %+v", before)
		}
		code, body := w.HandleMethod([]byte(`{"rotate_key":true}`))
		if code != 202 {
			t.Fatalf("method: %d %s", code, body)
		}
		res := <-got
		if !res.NewKey {
			t.Errorf("rotate_key ignored: %+v", res)
		}

		// The desired property changes the plan and survives a restart.
		p, err := w.HandleDesired(json.RawMessage(`{"renew_at":"50%","jitter":"0%"}`))
		if err != nil || p.RenewAtPPM != 500_000 {
			t.Fatalf("desired: %v %v", p, err)
		}
		synctest.Wait()
		st := w.Status()
		if want := st.NotAfter.Add(-(30*24*time.Hour + time.Minute) / 2); !st.Next.Equal(want) {
			t.Errorf("after desired 50%%: next %v, want %v", st.Next, want)
		}
		w2 := &Renewer{Rotator: &Rotator{StateDir: dir, Slot: slot, Issuer: ca, Probe: hubProbe(ca)}, Policy: DefaultPolicy()}
		if st2 := w2.Status(); st2.Policy != st.Policy {
			t.Errorf("policy after restart %q, want %q", st2.Policy, st.Policy)
		}
		if _, err := w.HandleDesired(json.RawMessage(`{"retry":"1s"}`)); err == nil {
			t.Error("desired retry of 1s accepted")
		}
		if p, err := w.HandleDesired(json.RawMessage(`null`)); err != nil || p != DefaultPolicy() {
			t.Errorf("desired null: %v %v", p, err)
		}

		// Without an issuance path the method says so instead of pretending.
		w3 := &Renewer{Rotator: &Rotator{StateDir: dir, Slot: slot}, Policy: DefaultPolicy()}
		if code, _ := w3.HandleMethod(nil); code != 412 {
			t.Errorf("no path: code %d", code)
		}
		if st := w3.Status(); st.Path != PathNone || !st.Next.IsZero() {
			t.Errorf("no path status %+v", st)
		}
	})
}

func TestCheckRenewal(t *testing.T) {
	t.Parallel()
	c := certFor(t0, 24*time.Hour, "c")
	p := DefaultPolicy()
	cases := []struct {
		path  string
		rec   Record
		now   time.Time
		level string
	}{
		{"none", Record{}, t0, CheckWarn},
		{"", Record{}, t0.Add(48 * time.Hour), CheckFail},
		{PathDPS, Record{}, t0, CheckPass},
		{PathEST, Record{Failures: 2, LastError: "503", LastFailure: t0.Add(20 * time.Hour)}, t0.Add(20 * time.Hour), CheckWarn},
		{PathEST, Record{}, t0.Add(25 * time.Hour), CheckFail},
	}
	for _, k := range cases {
		if got := CheckRenewal(k.path, c, p, k.rec, k.now); got.Level != k.level {
			t.Errorf("%+v: %+v", k, got)
		}
	}
	if got := CheckRenewal(PathDPS, nil, p, Record{}, t0); got.Level != CheckWarn {
		t.Errorf("no cert: %+v", got)
	}
}

// memDir is a temp dir on tmpfs where there is one: the year-long test
// is about the schedule, and 500 rotations' worth of fsyncs on a busy
// disk would only make it slow (durability is TestKill9AtEveryStep's).
func memDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "devid-rotate-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

// FuzzLoadRecord: renewal.json from disk never panics the reader, and a
// policy it accepts is a valid one.
func FuzzLoadRecord(f *testing.F) {
	for _, s := range []string{`{"schema":1,"path":"est","failures":2}`, `{"schema":1,"policy":{"retry":"1s"}}`,
		`{"schema":1,"policy":{"renew_at":"80%"}}`, `{"schema":9}`, `nope`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, RecordFile), b, 0o600)
		rec, err := LoadRecord(dir)
		if err == nil && rec.Policy != nil {
			if verr := rec.Policy.Validate(); verr != nil {
				t.Fatalf("accepted invalid policy %+v: %v", rec.Policy, verr)
			}
		}
	})
}
