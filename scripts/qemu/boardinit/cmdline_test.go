//go:build linux

package main

import (
	"strings"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	t.Parallel()
	c := parseCmdline("console=ttyAMA0 panic=1 devid.ip=10.0.2.15/24 devid.vtpm= devid.args=run,--config,/etc/devid/x.toml devid.ip=10.0.2.16/24 devid.noequals initrd=0x1\n")
	if got := c.get("ip", ""); got != "10.0.2.16/24" {
		t.Errorf("ip = %q, want the last value", got)
	}
	if got, ok := c["vtpm"]; !ok || got != "" {
		t.Errorf("vtpm = %q (set %v), want set and empty (= no TPM)", got, ok)
	}
	if got := c.get("gw", "10.0.2.2"); got != "10.0.2.2" {
		t.Errorf("gw default = %q", got)
	}
	if got := strings.Split(c.get("args", ""), ","); len(got) != 3 || got[2] != "/etc/devid/x.toml" {
		t.Errorf("args = %q", got)
	}
	for k := range c {
		if k == "console" || k == "panic" || k == "initrd" || k == "noequals" {
			t.Errorf("kept non-devid or malformed key %q", k)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyAMA0 devid.ip=10.0.2.15/24 devid.gw=10.0.2.2")
	f.Add("devid.=x devid.a==b devid.b")
	f.Fuzz(func(t *testing.T, line string) {
		for k, v := range parseCmdline(line) {
			if strings.ContainsAny(k, " \t\n") || strings.ContainsAny(v, " \t\n") {
				t.Fatalf("key %q value %q carry whitespace from %q", k, v, line)
			}
		}
	})
}

func TestAttrEncoding(t *testing.T) {
	t.Parallel()
	a := attr(1, []byte{10, 0, 2, 15})
	if len(a) != 8 || a[0] != 8 || a[2] != 1 || a[4] != 10 || a[7] != 15 {
		t.Errorf("attr = %v, want len 8, rta_len 8, type 1, payload 10.0.2.15", a)
	}
	if a := attr(2, []byte{1, 2, 3, 4, 5}); len(a) != 12 || a[0] != 9 {
		t.Errorf("unaligned attr = %v, want padded to 12 with rta_len 9", a)
	}
}
