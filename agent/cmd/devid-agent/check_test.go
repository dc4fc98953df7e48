package main

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"devid/agent/config"
	"devid/agent/statedir"
	"devid/enroll/certstore"
)

// TestCheckClockNamesFloor: the clock line names the floor, its
// source (with the file for the saved one) and the kernel's NTP state; a
// saved floor ahead of an NTP-synchronised clock is called wrong, not a
// reason to synchronise the clock.
func TestCheckClockNamesFloor(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	d, err := statedir.Open(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	lkg := now.Add(20 * 24 * time.Hour)
	if err := d.SaveState(&statedir.State{Name: "connected", LastKnownGood: lkg}); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.StateDir = d.Path
	stateFile := d.File(statedir.StateFile)
	chain := &certstore.Chain{Leaf: &x509.Certificate{NotBefore: now.Add(-time.Hour)}}
	for _, tc := range []struct {
		name   string
		now    time.Time
		synced bool
		result string
		want   []string // in the detail
		hint   string   // in the hint
		not    string   // not in the hint
	}{
		{"saved floor ahead, NTP synced", now, true, "warn",
			[]string{"last known good time " + lkg.Format(time.RFC3339), stateFile, "NTP-synchronised", "wrong"},
			"corrects", "synchronise"},
		{"saved floor ahead, not synced", now, false, "warn",
			[]string{"last known good time " + lkg.Format(time.RFC3339), stateFile, "does not report NTP", "certificate notBefore"},
			"clock.max_wait", ""},
		{"before the certificate", now.Add(-48 * time.Hour), false, "fail",
			[]string{"certificate notBefore " + now.Add(-time.Hour).Format(time.RFC3339), "does not report NTP"},
			"synchronise", ""},
		{"past every floor, synced", lkg.Add(time.Hour), true, "pass",
			[]string{"last known good time " + lkg.Format(time.RFC3339), "NTP-synchronised"}, "", ""},
	} {
		c := &checker{cfg: cfg, now: tc.now, chain: chain, synced: func() bool { return tc.synced }}
		c.clock()
		r := c.results[0]
		if r.Result != tc.result {
			t.Errorf("%s: result %s, want %s: %+v", tc.name, r.Result, tc.result, r)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.Detail, w) {
				t.Errorf("%s: detail %q does not name %q", tc.name, r.Detail, w)
			}
		}
		if !strings.Contains(r.Hint, tc.hint) || (tc.not != "" && strings.Contains(r.Hint, tc.not)) {
			t.Errorf("%s: hint %q (want %q, not %q)", tc.name, r.Hint, tc.hint, tc.not)
		}
	}
}
