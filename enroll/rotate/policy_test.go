package rotate

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func certFor(nb time.Time, life time.Duration, seed string) *x509.Certificate {
	return &x509.Certificate{NotBefore: nb, NotAfter: nb.Add(life), Raw: []byte(seed)}
}

func TestParsePolicy(t *testing.T) {
	t.Parallel()
	good := []struct {
		in   string
		want string
	}{
		{"", `renew_at = "66.6667%", jitter = "5%", retry = "1h", margin = "10%"`},
		{`renew_at = "66%", jitter = "5%", retry = "1h", margin = "24h"`, `renew_at = "66%", jitter = "5%", retry = "1h", margin = "1d"`},
		{"renew_at=2/3;retry=30m\nmargin=1d12h jitter=0%", `renew_at = "66.6667%", jitter = "0%", retry = "30m", margin = "1d12h"`},
		{`retry = "4%"`, `renew_at = "66.6667%", jitter = "5%", retry = "4%", margin = "10%"`},
		{`jitter = "90s"`, `renew_at = "66.6667%", jitter = "1m30s", retry = "1h", margin = "10%"`},
	}
	for _, c := range good {
		p, err := ParsePolicy(c.in)
		if err != nil {
			t.Errorf("ParsePolicy(%q): %v", c.in, err)
			continue
		}
		if got := p.String(); got != c.want {
			t.Errorf("ParsePolicy(%q) = %s, want %s", c.in, got, c.want)
		}
	}
	bad := []struct{ in, mention string }{
		{`renew_at = "120%"`, "between 0% and 100%"},
		{`renew_at = "72h"`, "use margin"},
		{`renew_at = "0.5%"`, "between 1% and 99%"},
		{`retry = "0s"`, "more than zero"},
		{`retry = "10s"`, "at least 1m"},
		{`retry = "-1h"`, "retry"},
		{`jitter = "40%"`, "at most 25%"},
		{`margin = "60%"`, "at most 50%"},
		{`renw_at = "66%"`, `unknown key "renw_at"`},
		{`retry = "1h" retry = "2h"`, "given twice"},
		{`retry`, "has no value"},
		{`retry =`, "has no value"},
		{`= 1h`, "without a key"},
		{`retry 1h`, "expected '='"},
		{`retry = "1h`, "unterminated quote"},
		{`margin = "1y"`, "margin"},
		{`margin = "99999d"`, "day count"},
		{`retry = "1/0"`, "fraction"},
		{`retry = "NaN%"`, "percentage"},
		{`jitter = ""`, "empty"},
	}
	for _, c := range bad {
		_, err := ParsePolicy(c.in)
		if err == nil {
			t.Errorf("ParsePolicy(%q) accepted", c.in)
			continue
		}
		if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("ParsePolicy(%q) = %v, want an ErrPolicy mentioning %q", c.in, err, c.mention)
		}
	}
}

func TestPolicyJSON(t *testing.T) {
	t.Parallel()
	base, _ := ParsePolicy(`retry = "2h"`)
	p, err := PolicyFromJSON([]byte(`{"renew_at":"80%","$version":4}`), base)
	if err != nil {
		t.Fatal(err)
	}
	if p.RenewAtPPM != 800_000 || p.Retry.Dur != 2*time.Hour {
		t.Errorf("got %s", p)
	}
	b, _ := p.MarshalJSON()
	var q Policy
	if err := q.UnmarshalJSON(b); err != nil || q != p {
		t.Errorf("round trip %s -> %v, %v", b, q, err)
	}
	for _, in := range []string{`[1]`, `{"retry":5}`, `{"retry":"1s"}`, `{"color":"red"}`, `nope`} {
		if _, err := PolicyFromJSON([]byte(in), base); err == nil {
			t.Errorf("PolicyFromJSON(%s) accepted", in)
		}
	}
}

func TestNextSchedule(t *testing.T) {
	t.Parallel()
	p := DefaultPolicy()
	life := 90 * 24 * time.Hour
	c := certFor(t0, life, "a")
	pl := p.Next(t0, c, time.Time{})
	lo, hi := t0.Add(life*2/3-life/20-time.Second), t0.Add(life*2/3+time.Second)
	if pl.Reason != ReasonScheduled || pl.At.Before(lo) || pl.At.After(hi) {
		t.Fatalf("plan %v, want scheduled in [%v, %v]", pl, lo, hi)
	}
	if again := p.Next(t0.Add(time.Hour), c, time.Time{}); again != pl {
		t.Errorf("plan moved with time: %v then %v", pl, again)
	}
	if pl.Due(pl.At.Add(-time.Nanosecond)) || !pl.Due(pl.At) {
		t.Error("Due is wrong at the boundary")
	}
	// Jitter spreads a fleet: 200 certificates issued at the same instant
	// must not all plan the same time, and all stay within the window.
	seen := map[time.Time]bool{}
	for i := range 200 {
		at := p.Next(t0, certFor(t0, life, fmt.Sprint("dev", i)), time.Time{}).At
		if at.Before(lo) || at.After(hi) {
			t.Fatalf("device %d plans %v outside [%v, %v]", i, at, lo, hi)
		}
		seen[at] = true
	}
	if len(seen) < 150 {
		t.Errorf("only %d distinct renewal times for 200 devices", len(seen))
	}
}

func TestNextMarginAndExpiry(t *testing.T) {
	t.Parallel()
	p, _ := ParsePolicy(`renew_at = "95%", jitter = "0%", margin = "2d"`)
	c := certFor(t0, 7*24*time.Hour, "m")
	pl := p.Next(t0, c, time.Time{})
	if want := c.NotAfter.Add(-48 * time.Hour); !pl.At.Equal(want) {
		t.Errorf("margin: at %v, want %v", pl.At, want)
	}
	if r := p.Next(c.NotAfter.Add(-time.Hour), c, time.Time{}).Reason; r != ReasonMargin {
		t.Errorf("inside margin: reason %s", r)
	}
	exp := p.Next(c.NotAfter.Add(time.Hour), c, time.Time{})
	if exp.Reason != ReasonExpired || !exp.Due(c.NotAfter.Add(time.Hour)) {
		t.Errorf("expired: %v", exp)
	}
	// A margin longer than the lifetime must not make renewal back to back:
	// it stops at half the lifetime.
	p2, _ := ParsePolicy(`margin = "24h", jitter = "0%"`)
	day := certFor(t0, 24*time.Hour, "d")
	if at := p2.Next(t0, day, time.Time{}).At; !at.Equal(t0.Add(12 * time.Hour)) {
		t.Errorf("1-day cert with 24h margin renews at %v, want half-life", at)
	}
	bad := certFor(t0, 0, "z")
	if pl := p.Next(t0, bad, time.Time{}); pl.Reason != ReasonBadValidity || !pl.Due(t0) {
		t.Errorf("bad validity: %v", pl)
	}
}

func TestNextRetryNeverHammers(t *testing.T) {
	t.Parallel()
	p := DefaultPolicy()
	c := certFor(t0, 24*time.Hour, "r")
	now := p.Next(t0, c, time.Time{}).At
	attempts := 0
	// Fail every attempt from the scheduled time to a day after expiry.
	for now.Before(c.NotAfter.Add(24 * time.Hour)) {
		attempts++
		next := p.Next(now, c, now)
		if gap := next.At.Sub(now); gap < MinRetry {
			t.Fatalf("attempt %d at %v: next after %v, under MinRetry", attempts, now, gap)
		}
		if now.Before(c.NotAfter) && next.Reason != ReasonRetry && next.At.Before(c.NotAfter) {
			t.Errorf("valid cert retry has reason %s", next.Reason)
		}
		now = next.At
	}
	// 8h of validity left at hourly retries with densification near expiry,
	// then hourly for a day: a few dozen attempts, not thousands.
	if attempts < 20 || attempts > 60 {
		t.Errorf("%d attempts over 32h of failures", attempts)
	}
}

// FuzzParsePolicy checks that the parser never panics, that what it
// accepts validates, and that String parses back to the same policy.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{
		"", `renew_at = "66%", jitter = "5%", retry = "1h", margin = "24h"`,
		"renew_at=2/3;retry=30m", `margin = "1d12h"`, `retry = "4%"`, `jitter=""`,
		`renew_at = "120%"`, `= =`, `"a" = "b"`, "retry = \"1h", "margin=99999d",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePolicy(s)
		if err != nil {
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("error %v does not wrap ErrPolicy", err)
			}
			return
		}
		q, err := ParsePolicy(p.String())
		if err != nil {
			t.Fatalf("accepted %q but its String %q fails: %v", s, p.String(), err)
		}
		if q != p {
			t.Fatalf("round trip of %q: %+v != %+v", s, q, p)
		}
		c := certFor(t0, 24*time.Hour, s)
		if pl := p.Next(t0, c, time.Time{}); pl.At.Before(t0) || pl.At.After(c.NotAfter) {
			t.Fatalf("policy %s plans %v outside the validity", p, pl.At)
		}
	})
}

// FuzzPolicyFromJSON covers the desired-property form.
func FuzzPolicyFromJSON(f *testing.F) {
	for _, s := range []string{`{}`, `null`, `{"renew_at":"80%"}`, `{"retry":1}`, `{"$version":3,"margin":"2d"}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := PolicyFromJSON(b, DefaultPolicy())
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted %q into an invalid policy: %v", b, err)
		}
	})
}
