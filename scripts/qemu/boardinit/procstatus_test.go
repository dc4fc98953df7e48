package main

import (
	"strings"
	"testing"
)

func TestParseStatus(t *testing.T) {
	text := "Name:\tdevid-agent\nVmHWM:\t    9000 kB\nVmRSS:\t    8120 kB\nRssAnon:\t    2100 kB\nRssFile:\t    6020 kB\n"
	m, err := parseStatus(text, "VmRSS", "RssAnon", "RssFile", "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	if m["VmRSS"] != 8120 || m["RssAnon"] != 2100 || m["RssFile"] != 6020 || m["VmHWM"] != 9000 {
		t.Errorf("parseStatus = %v", m)
	}
	for _, tc := range []struct{ text, want string }{
		{"VmRSS:\t 12 kB\n", "no RssAnon"},
		{"VmRSS:\t 12 MB\nRssAnon: 1 kB\n", `"12 MB"`},
		{"VmRSS:\t x kB\nRssAnon: 1 kB\n", `"x" is not a size`},
	} {
		_, err := parseStatus(tc.text, "VmRSS", "RssAnon")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseStatus(%q) error %v, want it to mention %s", tc.text, err, tc.want)
		}
	}
}

func FuzzParseStatus(f *testing.F) {
	f.Add("VmRSS:\t 12 kB\nRssAnon: 1 kB\n")
	f.Fuzz(func(t *testing.T, text string) {
		m, err := parseStatus(text, "VmRSS", "RssAnon")
		if err == nil && (m["VmRSS"] < 0 || m["RssAnon"] < 0) {
			t.Fatalf("negative size from %q: %v", text, m)
		}
	})
}
